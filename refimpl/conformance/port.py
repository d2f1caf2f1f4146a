"""The plan header of the C port for a conformance scenario (docs/porting.md): the arena of one
training step of the scenario's model (:mod:`refimpl.memory_arena`, MEM-5) plus the training
hyperparameters a client needs (``FM_HP_*``). Written by
``fedmef conformance export DIR --c-header FILE``.

The port implements the SPEC client (LT-1..3, BAE-2..4, PG-5) in float32 with NSConv stats
``dense``; a scenario that sets a compat switch (docs/DEVIATIONS.md), another dtype or another
norm is refused with the reason.
"""

from __future__ import annotations

from ..fl.config import Config, compat_keys
from ..functional import NSCONV_EPS
from ..memory_arena import arena_plan, c_header
from ..models.graph import ResidualBlock

__all__ = ["port_header", "check_port_config"]

_BAE_VARIANTS = {"l2sq": 0, "l2": 1}


def check_port_config(cfg: Config) -> None:
    """Raise ValueError naming the first setting the C port does not implement."""
    if cfg.run.dtype != "float32":
        raise ValueError(f"the C port trains in float32; export the scenario with "
                         f"--set run.dtype=float32 (it is {cfg.run.dtype})")
    if cfg.model.norm != "nsconv" or cfg.model.nsconv_stats != "dense":
        raise ValueError(f"the C port runs NSConv with stats 'dense' (NSC-1); the scenario has "
                         f"model.norm = {cfg.model.norm!r}, model.nsconv_stats = "
                         f"{cfg.model.nsconv_stats!r}")
    if cfg.bae.variant not in _BAE_VARIANTS:
        raise ValueError(f"the C port implements bae.variant l2sq and l2 (BAE-2); the scenario "
                         f"has {cfg.bae.variant!r}")
    if cfg.sap.cache_policy == "int32":
        raise ValueError("the C port implements the CACHE-1 formats; sap.cache_policy = int32 "
                         "is a compat format")
    defaults = Config()
    for key in compat_keys():
        sec, name = key.split(".")
        attr = {"lambda": "lam"}.get(name, name)
        if getattr(getattr(cfg, sec), attr) != getattr(getattr(defaults, sec), attr):
            raise ValueError(f"the C port implements SPEC; the scenario sets the compat switch "
                             f"{key} (docs/DEVIATIONS.md)")


def port_header(cfg: Config, model, input_shape) -> str:
    """The plan header (a C99 header, docs/porting.md) of the scenario ``cfg`` with ``model`` on
    inputs of ``input_shape`` (C, H, W)."""
    check_port_config(cfg)
    if any(isinstance(layer, ResidualBlock) for layer in model.layers):
        raise ValueError(f"the C port runs plain layer chains (the cnn); model "
                         f"{cfg.model.name!r} has residual blocks (docs/porting.md)")
    classes = model.layers[-1].out_features
    plan = arena_plan(model, tuple(input_shape), cfg.train.batch_size,
                      density=cfg.sparse.density, density_kind=cfg.sparse.density_kind,
                      gamma=cfg.sap.gamma, policy=cfg.sap.cache_policy,
                      momentum=cfg.train.momentum > 0, nsconv_stats=cfg.model.nsconv_stats,
                      num_classes=classes)
    hp = {
        "FM_HP_LOCAL_EPOCHS": cfg.train.local_epochs,
        "FM_HP_LR0": f"({cfg.train.lr!r})",
        "FM_HP_MOMENTUM": f"({float(cfg.train.momentum)!r})",
        "FM_HP_WEIGHT_DECAY": f"({float(cfg.train.weight_decay)!r})",
        "FM_HP_BAE_LAMBDA": f"({float(cfg.bae.lam)!r})",
        "FM_HP_BAE_VARIANT": f"{_BAE_VARIANTS[cfg.bae.variant]}  /* 0 l2sq, 1 l2 (BAE-2) */",
        "FM_HP_BAE_BUDGET_LR": int(cfg.bae.budget_lr),
        "FM_HP_NSCONV_EPS": f"({NSCONV_EPS!r})",
    }
    return c_header(plan, hp, comment=f"scenario config: model {cfg.model.name} width "
                                      f"{cfg.model.width}, batch {cfg.train.batch_size}, "
                                      f"density {cfg.sparse.density}, gamma {cfg.sap.gamma}, "
                                      f"policy {cfg.sap.cache_policy}")
