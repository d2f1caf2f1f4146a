# covers: FL-2, BAE-4, PG-3, PG-5, PG-7, SAP-1
"""The authors' fixtures and the compat switches as a whole (docs/DEVIATIONS.md): the copies in
spec_tests/fixtures/authors are byte-identical to the recorded digests; DEVIATIONS.md cites every
fixture and every compat key; the presets `authors` and `fedpruning` switch on their
behaviours; compat keys at their defaults leave a run's resolved configuration unchanged; and
the engine wires each per-step and per-round switch (what test_authors_<fixture>.py prove on
the project's functions, seen here through a client round and a federated round)."""

import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pytest

from refimpl import functional as F
from refimpl import models
from refimpl.core.autodiff import value_and_grad
from refimpl.core.tape import Tape
from refimpl.fl import bae, config
from refimpl.fl.client import RoundPlan, growth_scores, local_train
from refimpl.fl.config import load_config, to_toml
from refimpl.fl.data import load_fed_data
from refimpl.fl.engine import run_round
from refimpl.fl.nets import run_options
from refimpl.fl.observe import Observer
from refimpl.fl.schedule import alpha_at, grow_alpha_at, is_adjustment
from refimpl.fl.state import build_model, init_state
from refimpl.sap import SapPolicy
from refimpl.sparsity import adjust_counts, authors_rates, k_largest, marked_set

from .authors_fixtures import DIR

ROOT = Path(__file__).resolve().parents[1]

#: SHA-256 of the copies (the shared fixture set, unchanged); never edit a fixture
SHA256 = {
    "alpha_schedule.npz": "09cb054bb40a2da8a3bdcf14d3ab2f112c9795839ebd8f1e910d3e1ad7423708",
    "bae_marked.npz": "816c7fb45077fa07dad516c801bcf4794cca90cac54732f43d98a9143d273480",
    "bae_schedule.npz": "ea65cd5f5e66dcd5d6473564ae1c2b153db09a699695c11e5a347a5ba29edc0e",
    "fedpruning_bae_loss.npz": "002b34320f771769fc6d888b5270dad0c4fc00d298774fa2eec7fc4a207f5f09",
    "grow_scores.npz": "c9d19eb0f94f18e5a05780aaf129a76752ff8f1f071bb2978eaaaf24d738475e",
    "nsconv_method1.npz": "518596b457b64405fcee2c9f024386a91033323412d8968671a5d2ffe67844fa",
    "nsconv_method2.npz": "c19782180214ef424cfe4e345f83ed8e75616e984983882ffd7f1ec3def20674",
    "sap_mink.npz": "0f4f9e6d886e17367e27f03bef3d81364602d1421ec98f385bd518f29aee4f81",
    "README.md": "f7a871394add76e5be295bc4a5272bdd79fea730c2cff7f3ed2f071a4cec15c0",
}

#: compat keys (docs/DEVIATIONS.md) -> the value each preset sets
AUTHORS = {"model.nsconv_stats": "authors", "sparse.schedule": "authors",
           "sparse.counts": "drift", "sparse.growth_score": "weight", "bae.variant": "l2",
           "bae.lambda_ramp": "authors", "bae.lr_rule": "authors", "bae.marked_set": "authors",
           "sap.keep_count": "authors", "sap.layers": "plain_conv", "sap.cache_policy": "int32"}
FEDPRUNING = {"bae.variant": "l2", "bae.lambda": 1.0, "bae.marked_set": "fedpruning",
              "model.norm": "none"}


def test_fixture_copies_are_unchanged():
    present = {p.name for p in DIR.iterdir() if p.name != "PROVENANCE.md"}
    assert present == set(SHA256)
    for name, digest in SHA256.items():
        assert hashlib.sha256((DIR / name).read_bytes()).hexdigest() == digest, \
            f"{name} differs from the recorded fixture; restore it, never edit fixtures"


def _value(cfg, key):
    sec, name = key.split(".")
    return cfg.to_dict()[sec].get(name)


def test_deviations_cite_every_fixture_and_compat_key():
    text = (ROOT / "docs" / "DEVIATIONS.md").read_text("utf-8")
    for name in SHA256:
        if name.endswith(".npz"):
            assert name in text, f"docs/DEVIATIONS.md does not cite {name}"
    compat = config.compat_keys()
    assert len(compat) == 9
    for key in compat + ["model.nsconv_stats", "sap.cache_policy", "bae.variant"]:
        assert f"`{key}" in text, f"docs/DEVIATIONS.md does not name the switch {key}"
    fed = (ROOT / "docs" / "federated.md").read_text("utf-8")
    for key in compat:
        assert f"`{key}`" in fed, f"docs/federated.md does not list {key}"


@pytest.mark.parametrize("preset, expect", [("authors", AUTHORS), ("fedpruning", FEDPRUNING)])
def test_presets_switch_on_their_behaviours(preset, expect):
    cfg, demo = load_config(preset), load_config("demo")
    for key, value in expect.items():
        assert _value(cfg, key) == value, key
    # everything else is the demo run: same data, seeds and sizes, so the two compare
    for sec, body in demo.to_dict().items():
        for key, value in body.items():
            if f"{sec}.{key}" not in expect and not (preset == "authors" and (sec, key) in {
                    ("bae", "lambda"), ("sap", "gamma"), ("model", "norm")}):
                assert _value(cfg, f"{sec}.{key}") == value, f"{sec}.{key}"


def test_compat_keys_at_default_leave_the_resolved_config_unchanged():
    """A SPEC run's config.toml holds no compat key; set, they appear and read back equal."""
    text = to_toml(load_config("smoke"))
    for key in ("schedule", "counts", "growth_score", "lambda_ramp", "lr_rule", "marked_set",
                "keep_count", "layers", "lambda_delta"):
        assert not re.search(rf"^{key} =", text, flags=re.M)
    cfg = load_config("authors")
    assert load_config(path=_write(to_toml(cfg))) == cfg


def _write(text):
    import tempfile

    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write(text)
    f.close()
    return f.name


@pytest.mark.parametrize("sets, pattern", [
    (["bae.variant=authors", "bae.lambda_ramp=authors"], r"cannot be combined"),
    (["bae.variant=authors", "bae.lr_rule=authors"], r"cannot be combined"),
    (["sparse.prune=marked", "sparse.counts=drift"], r"sparse\.prune = 'marked'"),
    (["sparse.prune=marked", "bae.marked_set=fedpruning"], r"sparse\.prune = 'marked'"),
    (["sap.keep_count=float"], r"sap\.keep_count must be one of 'exact', 'authors'"),
])
def test_conflicting_compat_keys(sets, pattern):
    with pytest.raises(config.ConfigError, match=pattern):
        load_config("smoke", sets=sets)


class _Steps(Observer):
    def __init__(self):
        self.steps = []

    def local_step(self, t, client, step):
        self.steps.append((step.lam, step.lr, step.penalty, [g.size for g in step.penalty_grads]))


def test_client_round_uses_the_per_step_switches():
    """E2-E4 through local_train: λ is the capped running sum, the marked set has ⌊k_l/2⌋
    entries at every step, and the rate is their rule for the step's unweighted penalty."""
    cap = 2e-4
    cfg = load_config("smoke", sets=["bae.variant=l2", f"bae.lambda={cap}",
                                     "bae.lambda_ramp=authors", "bae.lr_rule=authors",
                                     "bae.marked_set=authors", "train.lr_min=0.001",
                                     "train.local_epochs=2"])
    data = load_fed_data(cfg)
    model = build_model(cfg, data.input_shape[0], data.num_classes)
    st = init_state(cfg, model)
    names = model.prunable
    k = [int(st.masks[n].sum()) // 3 for n in names]
    server = marked_set([st.params[n] for n in names], [st.masks[n] for n in names], k)
    obs = _Steps()
    local_train(model, st.params, st.buffers, st.masks, data, 0,
                RoundPlan(2, 0.01, marked=server), cfg, obs)
    assert len(obs.steps) >= 3
    lam, lr = 0.0, 0.01
    for got_lam, got_lr, pen, sizes in obs.steps:
        lam = min(lam + 1e-4, cap)
        assert got_lam == lam
        assert sizes == [kk // 2 for kk in k]
        new = bae.authors_lr(0.01, cfg.train.lr, 0.001, pen / lam, 0.0)
        lr = lr if new is None else new
        assert math.isclose(got_lr, lr, rel_tol=1e-12)
    assert obs.steps[-1][0] == cap


def test_federated_rounds_use_the_schedule_and_drift():
    """P1, P2 through run_round: adjustments at their rounds, the recorded α the authors'
    prune rate, and nnz moved by (grow − prune) counts."""
    cfg = load_config("smoke", sets=["sparse.schedule=authors", "sparse.counts=drift",
                                     "sap.gamma=0.0", "run.rounds=5"])
    data = load_fed_data(cfg)
    model = build_model(cfg, data.input_shape[0], data.num_classes)
    st = init_state(cfg, model)
    adj = [t for t in range(1, 6) if is_adjustment(cfg, t)]
    assert adj == [1, 3, 5]
    rates = authors_rates(0.3, 5, 1, [t - 1 for t in adj])
    drifted = False
    for t in range(1, 6):
        masks = [st.masks[n] for n in model.prunable]
        st, rec = run_round(cfg, model, st, data, t)
        if t in adj:
            j = adj.index(t)
            assert rec["alpha"] == alpha_at(cfg, t) == rates.prune[j]
            assert grow_alpha_at(cfg, t) == rates.grow[j]
            assert list(rec["pruned"].values()) == adjust_counts(masks, rates.prune[j])
            assert list(rec["grown"].values()) == adjust_counts(masks, rates.grow[j])
            for n, m, kp, kg in zip(model.prunable, masks, rec["pruned"].values(),
                                    rec["grown"].values()):
                assert rec["layer_nnz"][n] == int(m.sum()) - kp + kg
            drifted |= rec["pruned"] != rec["grown"]
    assert drifted


def test_growth_scores_by_weight_gradient():
    """G1 through growth_scores: with `weight`, the uploaded pairs are the k_l largest |dL/dW|
    of the real model (NSConv layers through their standardisation) among inactive positions."""
    cfg = load_config("smoke", sets=["sparse.growth_score=weight", "sap.gamma=0.0",
                                     "model.nsconv_stats=authors"])
    data = load_fed_data(cfg)
    model = build_model(cfg, data.input_shape[0], data.num_classes)
    st = init_state(cfg, model)
    names = model.prunable
    k = adjust_counts([st.masks[n] for n in names], 0.3)
    plan = RoundPlan(2, 0.01, grow_counts=k)
    pairs = growth_scores(model, st.params, st.masks, data, 0, plan, cfg)
    from refimpl.core.rng import Purpose, stream
    idx_all = data.parts[0]
    order = stream(cfg.run.seed, Purpose.GROW, 2, 0).permutation(idx_all.size)
    idx = idx_all[order[:cfg.train.batch_size]]
    xb, yb = data.batch(data.x_train[idx]), data.y_train[idx]
    local = models.Model(model.name, model.layers, dict(st.params),
                         {b: v.copy() for b, v in st.buffers.items()})
    opts = run_options(cfg, st.masks)
    loss = lambda w: F.cross_entropy(models.forward(local, {**st.params, **w}, xb, True, opts), yb)  # noqa: E731
    _, grads = value_and_grad(loss)({n: st.params[n] for n in names})
    for n, kk, (top, val) in zip(names, k, pairs):
        g = grads[n].reshape(-1)
        inactive = np.flatnonzero(~st.masks[n].reshape(-1))
        np.testing.assert_array_equal(top, k_largest(inactive, np.abs(g[inactive]), kk))
        np.testing.assert_allclose(val, g[top], rtol=1e-5, atol=1e-7)


def test_sap_on_plain_convs_only():
    """S2: with sap_layers = plain_conv, plain convs cache their input compressed, NSConv and
    linear layers keep it whole."""
    for norm, expect_conv in (("bn", True), ("nsconv", False)):
        model = models.build("cnn", 1, 10, norm=norm, width=0.5, rng=np.random.default_rng(0))
        x = np.random.default_rng(1).standard_normal((2, 1, 12, 12)).astype(np.float32)
        opts = models.RunOptions(sap=SapPolicy.make(0.7, "int32", "authors"),
                                 sap_layers="plain_conv")
        tape = Tape()
        params = {n: tape.leaf(v) for n, v in model.params.items()}
        F.cross_entropy(models.forward(model, params, x, True, opts), np.array([1, 2]))
        for node in tape.nodes:
            if node.prim.name == "conv2d":
                assert (node.res.cache is not None) == expect_conv
            if node.prim.name == "linear":
                assert node.res.cache is None and node.res.x is not None


def test_rates_helpers_match_the_closed_forms():
    """The compat scalars are the formulas DEVIATIONS.md states (spot values)."""
    assert bae.authors_phase(11, 10, 0) == 0.0 and bae.authors_phase(11, 10, 3) == 0.4
    assert bae.authors_lr(0.05, 0.1, 0.01, 0.0, 0.0) is None
    assert bae.authors_lr(0.05, 0.1, 0.01, 25.0, 0.0) == 1.0  # clamp at 10: rate above η0
    assert math.isclose(authors_rates(0.3, 300, 5, [0, 10]).prune[1],
                        0.15 * (1 + math.cos(math.pi * 10 / 1500)), rel_tol=1e-15)
