"""The run configuration: one typed, validated object (STYLE 11; SPEC FL-2, LT-1, BAE-2..5,
PG-1..4).

A configuration is built in layers, each overriding the one before:

1. the defaults below (the paper's settings where SPEC gives them),
2. a preset (``refimpl/fl/presets/NAME.toml``),
3. a TOML file (``--config``),
4. ``--set section.key=value`` overrides (the value is parsed as a TOML value; a bare word that
   is not valid TOML is taken as a string, so ``--set run.method=static`` works).

Unknown sections or keys are errors that list the valid ones. After merging, a few keys may hold
``"auto"``; they are resolved from ``run.method`` (FL-2) so that the written ``config.toml`` of a
run holds concrete values only. Every key is used by the engine; docs/federated.md lists them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .. import models
from ..sap import SapPolicy

__all__ = ["Config", "METHODS", "load_config", "preset_names", "parse_set", "to_toml",
           "config_from_dict", "key_table", "compat_keys"]

METHODS = ("fedavg", "static", "prune_grow", "fedmef")
DYNAMIC = ("prune_grow", "fedmef")
AUTO = "auto"


def _key(default, doc: str, **meta):
    """A config key: its default, a one-line doc and its constraints (see ``_check_value``)."""
    return field(default=default, metadata={"doc": doc, **meta})


@dataclass(frozen=True)
class RunSection:
    method: str = _key("fedmef", "fedavg (dense) | static (fixed random ERK mask) | prune_grow "
                       "(PG without BaE) | fedmef (BaE + SAP + NSConv); FL-2", choices=METHODS)
    seed: int = _key(0, "root seed of every RNG-1 stream", lo=0)
    rounds: int = _key(100, "number of rounds R (CONV-7)", lo=1)
    eval_every: int = _key(1, "evaluate the global model on the test set every N rounds (and "
                           "after the last round)", lo=1)
    checkpoint_every: int = _key(10, "write a checkpoint every N rounds (and after the last)",
                                 lo=1)
    dtype: str = _key("float32", "training dtype (CONV-2)", choices=("float32", "float64"))
    threads: int = _key(0, "threads of the Numba kernels during the run (0: Numba's default); "
                        "results do not depend on it", lo=0)
    eval_split: str = _key("test", "what an evaluation measures: test (the test set) | "
                           "validation (the data.validation split only: tuning never sees the "
                           "test set) | both", choices=("test", "validation", "both"),
                           optional=True)
    eval_around_adjustment: bool = _key(False, "also evaluate the aggregated model just before "
                                        "and just after prune-and-grow in every adjustment "
                                        "round (record key adjustment_eval); changes nothing "
                                        "else", optional=True)
    stop_on_divergence: bool = _key(False, "stop the run after a round whose train loss is not "
                                    "finite or exceeds run.divergence_loss; summary.json records "
                                    "the round (diverged_round)", optional=True)
    divergence_loss: float = _key(10.0, "train loss (nats per example) above which a round "
                                  "counts as diverged (run.stop_on_divergence)", lo=0.0,
                                  lo_open=True, optional=True)


@dataclass(frozen=True)
class DataSection:
    dataset: str = _key("fashion-mnist-bundled", "refimpl.data.load_dataset name")
    root: str = _key("", "data directory for datasets read from disk (empty: the default)")
    num_clients: int = _key(100, "number of clients K", lo=1)
    partition: str = _key("dirichlet", "partitioner (DATA-1)",
                          choices=("iid", "dirichlet", "pathological"))
    dirichlet_alpha: float = _key(0.5, "Dirichlet concentration (partition = dirichlet)", lo=0.0,
                                  lo_open=True)
    classes_per_client: int = _key(2, "classes per client (partition = pathological)", lo=1)
    min_client_size: int = _key(10, "minimum examples per client (partition = dirichlet)",
                                lo=1)
    validation: float = _key(0.0, "fraction of the training set held out as a validation split "
                             "(stratified by class, chosen by content key, the same for every "
                             "seed); the clients' partition is over the rest", lo=0.0, hi=1.0,
                             hi_open=True, optional=True)
    synthetic_train: int = _key(400, "training examples (dataset = synthetic)", lo=1)
    synthetic_test: int = _key(100, "test examples (dataset = synthetic)", lo=1)
    synthetic_classes: int = _key(4, "classes (dataset = synthetic)", lo=2)
    synthetic_shape: tuple = _key((1, 12, 12), "image shape (C, H, W) (dataset = synthetic)",
                                  shape_of=3)


@dataclass(frozen=True)
class ModelSection:
    name: str = _key("cnn", "model of the zoo (models.names())")
    norm: str = _key(AUTO, "nsconv | bn | none; auto: nsconv for fedmef, bn otherwise (FL-2)",
                     choices=("nsconv", "bn", "none"), auto=True)
    width: float = _key(1.0, "channel width multiplier", lo=0.0, lo_open=True)
    nsconv_stats: str = _key("dense", "NSConv statistics: dense (NSC-1) | masked (NSC-2); compat "
                             "(docs/DEVIATIONS.md N1, N2): authors (NSC-1 with the mask W != 0) "
                             "| authors_method1 (their commented-out method 1)",
                             choices=("dense", "masked", "authors", "authors_method1"))
    relu_gain: float = _key(1.0, "every ReLU computes relu_gain * max(x, 0); 1 is SPEC (NSC-4: "
                            "plain ReLUs); sqrt(2 / (1 - 1/π)) ≈ 1.7128585504496627 keeps a unit "
                            "Gaussian's variance (docs/decisions.md, NSConv)", lo=0.0,
                            lo_open=True, optional=True)


@dataclass(frozen=True)
class TrainSection:
    clients_per_round: int = _key(10, "clients C sampled per round (FL-1)", lo=1)
    local_epochs: int = _key(5, "local epochs E (LT-3)", lo=1)
    batch_size: int = _key(64, "mini-batch size B (LT-2)", lo=1)
    lr: float = _key(0.1, "initial learning rate η0 (LT-1)", lo=0.0, lo_open=True)
    lr_min: float = _key(0.01, "final learning rate η_min (LT-1)", lo=0.0, lo_open=True)
    lr_schedule: str = _key("exponential", "exponential: η_t = η0 (η_min/η0)^((t-1)/R); "
                            "constant: η_t = η0 (LT-1)", choices=("exponential", "constant"))
    momentum: float = _key(0.0, "SGD momentum (LT-1; buffers live for one round)", lo=0.0,
                           hi=1.0, hi_open=True)
    weight_decay: float = _key(0.0, "SGD weight decay (LT-1)", lo=0.0)


@dataclass(frozen=True)
class SparseSection:
    density: float = _key(AUTO, "overall density d in (0, 1] (MASK-2); auto: 1 for fedavg, 0.1 "
                          "otherwise", lo=0.0, lo_open=True, hi=1.0, auto=True)
    density_kind: str = _key("erk", "layer densities (ERK-1)", choices=("erk", "er", "uniform"))
    delta_t: int = _key(10, "adjustment interval ΔT (PG-1)", lo=1)
    t_end: int = _key(0, "last round that may adjust, T_end (PG-1, PG-2); 0 means run.rounds",
                      lo=0)
    alpha: float = _key(0.3, "initial adjustment fraction α (PG-2)", lo=0.0, hi=1.0)
    prune: str = _key("magnitude", "magnitude: smallest |θ| of the aggregate (PG-4); marked: the "
                      "BaE marked set", choices=("magnitude", "marked"))
    schedule: str = _key("spec", "spec: adjust at t mod ΔT = 0 with α_t of PG-2; authors (compat, "
                         "docs/DEVIATIONS.md P1): adjust at (t-1) mod ΔT = 0 with their "
                         "cumulative cosine, which overshoots and freezes",
                         choices=("spec", "authors"), compat=True)
    counts: str = _key("same", "same: one k_l for prune and grow (PG-3, PG-7); drift (compat, "
                       "P2): grow with the rate of the previous adjustment, prune with this one's",
                       choices=("same", "drift"), compat=True)
    growth_score: str = _key("effective", "effective: dL/dŴ of the effective kernel (PG-5); weight "
                             "(compat, G1): dL/dW through the NSConv standardisation",
                             choices=("effective", "weight"), compat=True)


@dataclass(frozen=True)
class BaeSection:
    enabled: bool = _key(AUTO, "budget-aware extrusion on/off; auto: on for fedmef (FL-2)",
                         auto=True)
    lam: float = _key(1.0, "penalty weight λ (BAE-2)", lo=0.0, toml="lambda")
    variant: str = _key("l2sq", "l2sq: λ Σ θ² (default); l2: λ Σ_l ‖θ_Low_l‖₂ (BAE-2); authors: "
                        "the SPEC text's reading of the public code, l2 with λ_τ = λ + "
                        "1e-4·(τ+1) and β_τ without the sigmoid factor; measured, their code is "
                        "l2 with lambda_ramp, lr_rule, marked_set = authors (docs/DEVIATIONS.md)",
                        choices=("l2sq", "l2", "authors"))
    budget_lr: bool = _key(True, "budget-aware learning rate μ_τ = max(η_t, β_τ) (BAE-4); "
                           "false uses η_t")
    rounds: int = _key(0, "0: the adjustment round extrudes; E_b >= 1: the E_b rounds before "
                       "each adjustment round do (BAE-5)", lo=0)
    lambda_ramp: str = _key("none", "none: λ every step (BAE-2); authors (compat, "
                            "docs/DEVIATIONS.md E2): λ_τ = min(λ_τ-1 + lambda_delta, λ) from 0 "
                            "each round", choices=("none", "authors"), compat=True)
    lambda_delta: float = _key(1e-4, "λ increment per step of lambda_ramp = authors", lo=0.0,
                               lo_open=True, compat=True)
    lr_rule: str = _key("spec", "spec: BAE-4; authors (compat, E3): max(η_t, clamp(Σ_l ‖θ_Low_l‖₂, "
                        "η_min, 10)·η0, η_min), the previous rate when the penalty is 0",
                        choices=("spec", "authors"), compat=True)
    marked_set: str = _key("fixed", "fixed: BAE-1; authors (compat, E4): each step the ⌊k_l/2⌋ "
                           "smallest active |θ| of the local weights; fedpruning (F2): "
                           "int(α_t(γ)·nnz_l) smallest |θ| of all entries; fedpruning_dynamic "
                           "(F3): each step |θ| <= the (k+1)-th smallest",
                           choices=("fixed", "authors", "fedpruning", "fedpruning_dynamic"),
                           compat=True)


@dataclass(frozen=True)
class SapSection:
    gamma: float = _key(AUTO, "scaled activation pruning ratio γ in [0, 1) (SAP-2); auto: 0.7 "
                        "for fedmef, 0 otherwise", lo=0.0, hi=1.0, hi_open=True, auto=True)
    cache_policy: str = _key("auto", "activation cache format (CACHE-2)",
                             choices=("auto", "dense", "bitmap", "index", "int32"))
    keep_count: str = _key("exact", "exact: n_keep = numel - floor(γ numel) (SAP-2); authors "
                           "(compat, docs/DEVIATIONS.md S1): int(numel (1 - γ)) in float64",
                           choices=("exact", "authors"), compat=True)
    layers: str = _key("all", "all: every conv and linear input (SAP-1); plain_conv (compat S2): "
                       "plain convs only, as the authors' DropIT (not NSConv, not linear)",
                       choices=("all", "plain_conv"), compat=True)


_SECTIONS: dict[str, type] = {
    "run": RunSection, "data": DataSection, "model": ModelSection, "train": TrainSection,
    "sparse": SparseSection, "bae": BaeSection, "sap": SapSection,
}


@dataclass(frozen=True)
class Config:
    """The resolved, validated configuration of one run (no ``"auto"`` left)."""

    run: RunSection = RunSection()
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    train: TrainSection = TrainSection()
    sparse: SparseSection = SparseSection()
    bae: BaeSection = BaeSection()
    sap: SapSection = SapSection()

    @property
    def dynamic(self) -> bool:
        """Whether the sparsity pattern changes (PG rounds happen)."""
        return self.run.method in DYNAMIC

    @property
    def sparse_masks(self) -> bool:
        """Whether the run keeps masks (ERK-3: density 1 means no mask machinery)."""
        return self.sparse.density < 1

    @property
    def t_end(self) -> int:
        return self.sparse.t_end or self.run.rounds

    @functools.cached_property
    def sap_policy(self) -> SapPolicy | None:
        """γ and the cache policy as the typed policy every conv and linear layer receives
        (SAP-2, CACHE-2; exact γ, CONV-6), built once per run and carried down to the kernels;
        None when it changes nothing (γ = 0 with the dense policy)."""
        return SapPolicy.make(self.sap.gamma, self.sap.cache_policy, self.sap.keep_count)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every key and its value, except compat switches (docs/DEVIATIONS.md) left at their
        default: the resolved configuration of a SPEC run, its config.toml and its conformance
        manifest read the same as before those switches existed."""
        out = {}
        for sec in _SECTIONS:
            obj = getattr(self, sec)
            out[sec] = {_toml_name(f): _plain(getattr(obj, f.name))
                        for f in dataclasses.fields(obj)
                        if not (_omitted_at_default(f) and getattr(obj, f.name) == f.default)}
        return out


def _omitted_at_default(f) -> bool:
    """Compat switches and the optional keys added after the first runs (evaluation hooks,
    validation split, divergence stop, ReLU gain) are written only when set, so an existing
    run's config.toml, its checkpoints and the golden vectors' manifest stay the same."""
    return bool(f.metadata.get("compat") or f.metadata.get("optional"))


def _toml_name(f) -> str:
    return f.metadata.get("toml", f.name)


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def key_table() -> list[tuple[str, Any, str]]:
    """(section.key, default, doc) of every key, for docs and ``fedmef run --keys``."""
    rows = []
    for sec, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            rows.append((f"{sec}.{_toml_name(f)}", _plain(f.default), f.metadata["doc"]))
    return rows


def compat_keys() -> list[str]:
    """section.key of every compat switch (docs/DEVIATIONS.md): never SPEC, never a default."""
    return [f"{sec}.{_toml_name(f)}" for sec, cls in _SECTIONS.items()
            for f in dataclasses.fields(cls) if f.metadata.get("compat")]


# ---- validation -------------------------------------------------------------------------------
class ConfigError(ValueError):
    """A configuration is invalid; the message says which key, what was given and what is
    expected."""


# field annotations are strings under ``from __future__ import annotations``
_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "tuple": tuple}


def _type_name(t) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            tuple: "a list"}[t]


def _check_value(sec: str, f, v):
    """Type-check and range-check one value; return it converted to the field's type."""
    name = f"{sec}.{_toml_name(f)}"
    meta, t = f.metadata, _TYPES[f.type]
    if meta.get("auto") and v == AUTO:
        return v
    ok = {
        bool: isinstance(v, bool),
        int: isinstance(v, int) and not isinstance(v, bool),
        float: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: isinstance(v, str),
        tuple: isinstance(v, (list, tuple)),
    }[t]
    if not ok:
        extra = ' or "auto"' if meta.get("auto") else ""
        raise ConfigError(f"{name} must be {_type_name(t)}{extra}, received {v!r}")
    if t is float:
        v = float(v)
        if not math.isfinite(v):
            raise ConfigError(f"{name} must be finite, received {v!r}")
    if t is tuple:
        n = meta["shape_of"]
        if len(v) != n or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1
                                  for x in v):
            raise ConfigError(f"{name} must be a list of {n} positive integers, received {v!r}")
        v = tuple(v)
    if "choices" in meta and v not in meta["choices"]:
        extra = ', "auto"' if meta.get("auto") else ""
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, meta['choices']))}{extra};"
                          f" received {v!r}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (v < lo or (meta.get("lo_open") and v == lo)):
        raise ConfigError(f"{name} must be {'>' if meta.get('lo_open') else '>='} {lo}, "
                          f"received {v!r}")
    if hi is not None and (v > hi or (meta.get("hi_open") and v == hi)):
        raise ConfigError(f"{name} must be {'<' if meta.get('hi_open') else '<='} {hi}, "
                          f"received {v!r}")
    return v


def _build_section(sec: str, raw: dict):
    cls = _SECTIONS[sec]
    fields = {_toml_name(f): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{sec}.{k}' for k in unknown)}; valid keys "
                          f"of [{sec}]: {', '.join(fields)}")
    kw = {f.name: _check_value(sec, f, raw[k]) for k, f in fields.items() if k in raw}
    return cls(**kw)


def _resolve(cfg: Config) -> Config:
    """Fill ``"auto"`` keys from the method and check keys that constrain each other (FL-2)."""
    m = cfg.run.method
    norm = cfg.model.norm if cfg.model.norm != AUTO else ("nsconv" if m == "fedmef" else "bn")
    density = cfg.sparse.density if cfg.sparse.density != AUTO else (1.0 if m == "fedavg"
                                                                     else 0.1)
    bae = cfg.bae.enabled if cfg.bae.enabled != AUTO else (m == "fedmef")
    gamma = cfg.sap.gamma if cfg.sap.gamma != AUTO else (0.7 if m == "fedmef" else 0.0)
    if m == "fedavg" and density != 1.0:
        raise ConfigError(f"run.method = 'fedavg' trains a dense model but sparse.density = "
                          f"{density}; set sparse.density = 1 (or \"auto\"), or use method "
                          f"'static' for a fixed sparse mask")
    if m != "fedavg" and density >= 1.0:
        raise ConfigError(f"run.method = {m!r} needs sparse.density < 1 (received {density}); "
                          f"use method 'fedavg' for a dense model")
    if bae and m not in DYNAMIC:
        raise ConfigError(f"bae.enabled = true needs a method that adjusts the mask "
                          f"(prune_grow or fedmef), received run.method = {m!r}")
    if cfg.sparse.prune == "marked" and m not in DYNAMIC:
        raise ConfigError(f"sparse.prune = 'marked' needs method prune_grow or fedmef, received "
                          f"{m!r}")
    _check_compat(cfg)
    if cfg.bae.rounds >= cfg.sparse.delta_t:
        raise ConfigError(f"bae.rounds = {cfg.bae.rounds} must be smaller than sparse.delta_t = "
                          f"{cfg.sparse.delta_t}: the extrusion rounds before one adjustment "
                          f"may not reach back to the previous one (BAE-5)")
    if cfg.train.lr_schedule == "exponential" and cfg.train.lr_min > cfg.train.lr:
        raise ConfigError(f"train.lr_min = {cfg.train.lr_min} exceeds train.lr = {cfg.train.lr}: "
                          f"the exponential schedule would raise the learning rate (LT-1); set "
                          f"lr_min <= lr, or lr_schedule = 'constant'")
    if cfg.train.clients_per_round > cfg.data.num_clients:
        raise ConfigError(f"train.clients_per_round = {cfg.train.clients_per_round} exceeds "
                          f"data.num_clients = {cfg.data.num_clients}")
    if cfg.run.eval_split != "test" and cfg.data.validation == 0:
        raise ConfigError(f"run.eval_split = {cfg.run.eval_split!r} evaluates on the validation "
                          f"split, but data.validation = 0 holds none out; set data.validation "
                          f"(e.g. 0.1) or run.eval_split = 'test'")
    if cfg.sparse.t_end > cfg.run.rounds:
        raise ConfigError(f"sparse.t_end = {cfg.sparse.t_end} exceeds run.rounds = "
                          f"{cfg.run.rounds}; use 0 for 'until the last round'")
    if cfg.model.name not in models.names():
        raise ConfigError(f"model.name {cfg.model.name!r} is not in the zoo; valid models: "
                          f"{', '.join(models.names())}")
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, norm=norm),
        sparse=dataclasses.replace(cfg.sparse, density=density),
        bae=dataclasses.replace(cfg.bae, enabled=bae),
        sap=dataclasses.replace(cfg.sap, gamma=gamma),
    )


def _check_compat(cfg: Config) -> None:
    """Compat switches (docs/DEVIATIONS.md) that cannot be combined."""
    b, sp = cfg.bae, cfg.sparse
    if b.variant == "authors" and (b.lambda_ramp != "none" or b.lr_rule != "spec"):
        raise ConfigError("bae.variant = 'authors' (the SPEC text's reading, with its own λ ramp "
                          "and rate) cannot be combined with bae.lambda_ramp or bae.lr_rule = "
                          "'authors'; for the measured behaviour of the authors' code use "
                          "bae.variant = 'l2' (or --preset authors)")
    if sp.prune == "marked" and (sp.counts == "drift" or b.marked_set != "fixed"):
        raise ConfigError(f"sparse.prune = 'marked' prunes the BaE marked set, which needs "
                          f"sparse.counts = 'same' and bae.marked_set = 'fixed' (received "
                          f"{sp.counts!r} and {b.marked_set!r}); use sparse.prune = 'magnitude'")


def config_from_dict(raw: dict) -> Config:
    """Validate a nested ``{section: {key: value}}`` dict and resolve it (unknown keys raise)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a configuration is a table of sections, received {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(map(repr, unknown))}; valid sections: "
                          f"{', '.join(_SECTIONS)}")
    for sec, body in raw.items():
        if not isinstance(body, dict):
            raise ConfigError(f"[{sec}] must be a table of keys, received {body!r}")
    return _resolve(Config(**{sec: _build_section(sec, raw.get(sec, {})) for sec in _SECTIONS}))


# ---- sources: presets, files, --set -----------------------------------------------------------
def preset_names() -> list[str]:
    root = resources.files("refimpl.fl") / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def _read_preset(name: str) -> dict:
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(preset_names())}")
    text = (resources.files("refimpl.fl") / "presets" / f"{name}.toml").read_text("utf-8")
    return tomllib.loads(text)


def _read_file(path) -> dict:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {str(p)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(p)!r} is a directory; expected a TOML file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text (TOML files are UTF-8): "
                          f"{e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {e}") from None


def parse_set(item: str) -> tuple[str, str, Any]:
    """``section.key=value`` -> (section, key, value); value parsed as TOML, else a string."""
    if "=" not in item:
        raise ConfigError(f"--set expects section.key=value, received {item!r}")
    path, text = item.split("=", 1)
    parts = path.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set expects section.key=value (e.g. train.lr=0.05), received "
                          f"{item!r}")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return parts[0], parts[1], value


def _merge(base: dict, over: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for sec, body in over.items():
        if isinstance(body, dict) and isinstance(out.get(sec), dict):
            out[sec].update(body)
        else:
            out[sec] = body
    return out


def load_config(preset: str | None = None, path=None, sets=()) -> Config:
    """Defaults, then ``preset``, then the TOML file ``path``, then ``sets`` (``sec.key=value``
    strings); validated and resolved."""
    raw: dict = {}
    if preset is not None:
        raw = _merge(raw, _read_preset(preset))
    if path is not None:
        raw = _merge(raw, _read_file(path))
    for item in sets:
        sec, key, value = parse_set(item)
        raw = _merge(raw, {sec: {key: value}})
    return config_from_dict(raw)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(cfg: Config) -> str:
    """The resolved configuration as TOML text; ``load_config(path=...)`` reads it back equal."""
    lines = []
    for sec, body in cfg.to_dict().items():
        lines.append(f"[{sec}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
        lines.append("")
    return "\n".join(lines)
