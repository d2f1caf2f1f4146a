# covers: DATA-1, FL-1, PG-1, NSC-4, CONV-5, MEM-2, RNG-1
"""The options of the tuned experiment grid (issue 18; docs/federated.md keys, docs/decisions.md
"ReLU gain"): the validation split (``data.validation``, ``run.eval_split``), the divergence
stop (``run.stop_on_divergence``), the evaluation around prune-and-grow
(``run.eval_around_adjustment``) and the ReLU gain (``model.relu_gain``)."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refimpl
from refimpl import functional as F
from refimpl import models
from refimpl.data import content_keys, validation_split
from refimpl.fl import ConfigError, load_config, run
from refimpl.fl.config import to_toml
from refimpl.fl.data import load_fed_data
from refimpl.fl.engine import run_round
from refimpl.fl.nets import evaluate
from refimpl.fl.observe import Observer
from refimpl.fl.state import build_model, init_state
from refimpl.memory import ledger

from .gradcheck import check_vjp, dot_product_test
from .inputs import away_from_zero, smooth
from .tolerances import CENTRAL_DIFF

GAIN = math.sqrt(2.0 / (1.0 - 1.0 / math.pi))


def _records(d):
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]


# ---- validation split -------------------------------------------------------------------------
@settings(deadline=None, max_examples=30)
@given(st.integers(0, 2**31 - 1), st.integers(20, 300), st.integers(2, 6),
       st.floats(0.0, 0.9))
def test_validation_split_is_a_stratified_disjoint_cover(seed, n, classes, fraction):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    keys = rng.integers(0, 2**63, n, dtype=np.uint64)
    if math.floor(fraction * n + 0.5) >= n:
        with pytest.raises(ValueError, match="leaves no training data"):
            validation_split(y, fraction, keys, classes)
        return
    rest, held = validation_split(y, fraction, keys, classes)
    assert np.array_equal(np.sort(np.concatenate([rest, held])), np.arange(n))
    assert held.size == math.floor(fraction * n + 0.5)
    assert np.all(np.diff(rest) > 0) and np.all(np.diff(held) > 0)
    sizes = np.bincount(y, minlength=classes)
    got = np.bincount(y[held], minlength=classes)
    # proportional to the class sizes within one example (largest remainder)
    assert np.all(np.abs(got - held.size * sizes / n) < 1)
    # order independence: permute the dataset, the held-out samples are the same ones
    perm = rng.permutation(n)
    rest2, held2 = validation_split(y[perm], fraction, keys[perm], classes)
    assert np.array_equal(np.sort(perm[held2]), held)


def test_validation_split_of_a_run_is_disjoint_from_the_clients_and_deterministic():
    sets = ["data.validation=0.25", "run.eval_split=both"]
    a = load_fed_data(load_config("smoke", sets=sets))
    held = set(a.val_idx.tolist())
    clients = [set(p.tolist()) for p in a.parts]
    assert held and all(not (c & held) for c in clients)
    assert set().union(*clients) | held == set(range(len(a.y_train)))
    assert a.val_idx.size == math.floor(0.25 * len(a.y_train) + 0.5)
    # the same on a reload, and for another seed (the split depends on the images only; the
    # synthetic images depend on the seed, the bundled subset's do not)
    b = load_fed_data(load_config("smoke", sets=sets))
    assert np.array_equal(a.val_idx, b.val_idx)
    assert [p.tolist() for p in a.parts] == [p.tolist() for p in b.parts]
    assert a.report["validation"]["size"] == a.val_idx.size
    real = sets + ["data.dataset=fashion-mnist-bundled"]
    c = load_fed_data(load_config("smoke", sets=real))
    e = load_fed_data(load_config("smoke", sets=real + ["run.seed=7"]))
    assert np.array_equal(c.val_idx, e.val_idx)
    assert [p.tolist() for p in c.parts] != [p.tolist() for p in e.parts]
    assert len(set(content_keys(c.x_train[c.val_idx]).tolist())) == c.val_idx.size
    # no validation: the partition is the one the run always had
    d = load_fed_data(load_config("smoke"))
    assert d.val_idx.size == 0
    assert [p.tolist() for p in d.parts] == [p.tolist() for p in load_fed_data(
        load_config("smoke", sets=["data.validation=0"])).parts]


def test_validation_keys_and_their_errors():
    with pytest.raises(ConfigError, match="data.validation"):
        load_config("smoke", sets=["run.eval_split=validation"])
    with pytest.raises(ConfigError, match="data.validation must be < 1"):
        load_config("smoke", sets=["data.validation=1.0"])
    # optional keys at their default are not written: existing runs' config.toml is unchanged
    text = to_toml(load_config("smoke"))
    for key in ("validation", "eval_split", "eval_around_adjustment", "stop_on_divergence",
                "divergence_loss", "relu_gain"):
        assert key not in text
    cfg = load_config("smoke", sets=["data.validation=0.2", "model.relu_gain=1.5"])
    assert "validation = 0.2" in to_toml(cfg) and "relu_gain = 1.5" in to_toml(cfg)


def test_validation_evaluation_measures_the_held_out_split(tmp_path):
    cfg = load_config("smoke", sets=["data.validation=0.25", "run.eval_split=validation"])
    run(cfg, tmp_path / "v", progress=False, plots=False, log=lambda *a: None)
    recs = _records(tmp_path / "v")
    evals = [r for r in recs if r["val_accuracy"] is not None]
    assert evals and all(r["test_accuracy"] is None for r in recs)
    # the last record's validation accuracy is the final model's on exactly the held-out images
    data = load_fed_data(cfg)
    model = build_model(cfg, data.input_shape[0], data.num_classes)
    z = np.load(tmp_path / "v" / "model.npz")
    params = {k[6:]: z[k] for k in z.files if k.startswith("param/")}
    buffers = {k[7:]: z[k] for k in z.files if k.startswith("buffer/")}
    masks = {k[5:]: z[k] for k in z.files if k.startswith("mask/")}
    acc, loss = evaluate(model, params, buffers, masks, data, cfg, split="validation")
    assert (acc, loss) == (evals[-1]["val_accuracy"], evals[-1]["val_loss"])


# ---- divergence -------------------------------------------------------------------------------
def test_divergence_stops_early_and_is_recorded(tmp_path):
    sets = ["train.lr=1000", "train.lr_min=1", "run.stop_on_divergence=true"]
    s = run(load_config("smoke", sets=sets), tmp_path / "d", progress=False, plots=False,
            log=lambda *a: None)
    assert s["diverged_round"] == 1 and "local step" in s["diverged"]
    assert s["rounds_completed"] == 0 and (tmp_path / "d" / "summary.json").exists()
    # a resume sees the same stop and adds nothing
    again = run(None, tmp_path / "d", resume=True, progress=False, plots=False,
                log=lambda *a: None)
    assert again["diverged_round"] == 1 and _records(tmp_path / "d") == []
    # a run that diverges later keeps its rounds up to the stop, every loss below the limit
    sets = ["train.lr=30", "train.lr_min=30", "run.stop_on_divergence=true",
            "run.divergence_loss=3"]
    s = run(load_config("smoke", sets=sets), tmp_path / "e", progress=False, plots=False,
            log=lambda *a: None)
    recs = _records(tmp_path / "e")
    assert s["diverged_round"] is not None and len(recs) == s["diverged_round"] - 1
    assert all(r["train_loss"] <= 3 for r in recs)
    # a run that does not diverge is not stopped
    healthy = run(load_config("smoke", sets=["run.stop_on_divergence=true"]), tmp_path / "h",
                  progress=False, plots=False, log=lambda *a: None)
    assert healthy["diverged_round"] is None and healthy["rounds_completed"] == 5


def test_a_run_that_diverges_at_once_ends_the_command_cleanly(tmp_path, capsys):
    """A sweep's divergence is an outcome, not a crash: `fedmef run` stopping in round 1 (no
    round completed, so no activation figure) prints its summary and exits 0."""
    from refimpl.cli import main

    d = tmp_path / "d"
    rc = main(["run", "--preset", "smoke", "--quiet", "--set", "train.lr=1000", "--set",
               "train.lr_min=1", "--set", "run.stop_on_divergence=true", "--out", str(d)])
    out, err = capsys.readouterr()
    assert rc == 0 and "Traceback" not in err, err
    assert "rounds 0/5" in out and "none (no round completed)" in out


# ---- evaluation around prune-and-grow ---------------------------------------------------------
class _Aggregates(Observer):
    def __init__(self):
        self.seen = {}

    def aggregated(self, t, params, buffers):
        self.seen[t] = ({k: v.copy() for k, v in params.items()},
                        {k: v.copy() for k, v in buffers.items()})


@pytest.mark.parametrize("method", ["fedmef", "prune_grow"])
def test_eval_around_adjustment_changes_no_byte_of_the_training(tmp_path, method):
    base = ["data.validation=0.25", "run.eval_split=both", f"run.method={method}"]
    run(load_config("smoke", sets=base), tmp_path / "a", progress=False, plots=False,
        log=lambda *a: None)
    cfg = load_config("smoke", sets=base + ["run.eval_around_adjustment=true"])
    run(cfg, tmp_path / "b", progress=False, plots=False, log=lambda *a: None)
    ra, rb = _records(tmp_path / "a"), _records(tmp_path / "b")
    extra = [r.pop("adjustment_eval") for r in rb]
    assert ra == rb
    for name in ("model.npz", "summary.json"):
        if name == "summary.json":
            sa = json.loads((tmp_path / "a" / name).read_text())
            sb = json.loads((tmp_path / "b" / name).read_text())
            sa.pop("seconds"), sb.pop("seconds"), sa.pop("seconds_per_round")
            sb.pop("seconds_per_round")
            assert sa == sb
        else:
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    adjusted = [r["round"] for r in ra if r["adjustment"]]
    assert adjusted and [t for t, e in zip([r["round"] for r in rb], extra) if e] == adjusted
    # "after" is the model after prune-and-grow (the round's own evaluation where it has one);
    # "before" is the aggregated model with the masks it was trained under
    data = load_fed_data(cfg)
    model = build_model(cfg, data.input_shape[0], data.num_classes)
    state, obs = init_state(cfg, model), _Aggregates()
    for t in range(1, cfg.run.rounds + 1):
        masks = state.masks
        state, rec = run_round(cfg, model, state, data, t, observer=obs)
        ae = extra[t - 1]
        if ae is None:
            continue
        params, buffers = obs.seen[t]
        acc, loss = evaluate(model, params, buffers, masks, data, cfg)
        assert (ae["before"]["test_accuracy"], ae["before"]["test_loss"]) == (acc, loss)
        acc, loss = evaluate(model, params, buffers, masks, data, cfg, split="validation")
        assert (ae["before"]["val_accuracy"], ae["before"]["val_loss"]) == (acc, loss)
        acc, loss = evaluate(model, state.params, state.buffers, state.masks, data, cfg)
        assert (ae["after"]["test_accuracy"], ae["after"]["test_loss"]) == (acc, loss)
        if rec["test_accuracy"] is not None:
            assert rec["test_accuracy"] == ae["after"]["test_accuracy"]


# ---- the ReLU gain ----------------------------------------------------------------------------
def test_relu_gain_one_changes_nothing(tmp_path):
    """Gain 1 is SPEC's plain ReLU (NSC-4): the same bytes as a run without the key."""
    run(load_config("smoke"), tmp_path / "a", progress=False, plots=False, log=lambda *a: None)
    run(load_config("smoke", sets=["model.relu_gain=1.0"]), tmp_path / "b", progress=False,
        plots=False, log=lambda *a: None)
    for name in ("metrics.jsonl", "model.npz", "config.toml"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    x = smooth(np.random.default_rng(0), (2, 3, 4, 4))
    assert np.array_equal(F.relu(x, gain=1.0), F.relu(x))


@settings(deadline=None, max_examples=8)
@given(st.integers(0, 2**31 - 1), st.floats(0.3, 3.0), st.booleans())
def test_relu_gain_values_and_gradients(seed, gain, masked):
    """y = gain·max(x, 0) on the unfused relu and inside the fused conv and NSConv paths, with
    gradients by central differences (float64)."""
    rng = np.random.default_rng(seed)
    x = away_from_zero(rng, (2, 3, 5))
    assert np.array_equal(F.relu(x, gain=gain), gain * np.maximum(x, 0))
    assert check_vjp(lambda x: F.relu(x, gain=gain), [x], seed) < CENTRAL_DIFF[0]
    xc = smooth(rng, (2, 3, 6, 6))
    w = smooth(rng, (4, 3, 3, 3))
    b = smooth(rng, (4,))
    g = np.abs(smooth(rng, (4,))) + 0.5
    mask = rng.random(w.shape) < 0.6 if masked else np.ones(w.shape, bool)
    plain = F.relu(F.conv2d(xc, w, b, padding=1, mask=mask), gain=gain)
    fused = F.conv2d(xc, w, b, padding=1, mask=mask, relu=True, relu_gain=gain)
    np.testing.assert_allclose(fused, plain, rtol=1e-12, atol=1e-12)
    err = dot_product_test(lambda x, w, b: F.conv2d(x, w, b, padding=1, mask=mask, relu=True,
                                                    relu_gain=gain), [xc, w, b], seed)
    assert err < 1e-5
    ns_plain = F.relu(F.nsconv2d(xc, w, mask, g, b, padding=1), gain=gain)
    ns_fused = F.nsconv2d(xc, w, mask, g, b, padding=1, relu=True, relu_gain=gain)
    np.testing.assert_allclose(ns_fused, ns_plain, rtol=1e-12, atol=1e-12)
    err = dot_product_test(lambda x, w, g, b: F.nsconv2d(x, w, mask, g, b, padding=1, relu=True,
                                                         relu_gain=gain), [xc, w, g, b], seed)
    assert err < 1e-5


def test_relu_gain_errors():
    x = np.ones((1, 1, 3, 3))
    for bad in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="relu gain must be a finite number > 0"):
            F.relu(x, gain=bad)
    with pytest.raises(ValueError, match="pass relu=True"):
        F.conv2d(x, np.ones((1, 1, 1, 1)), relu_gain=2.0)
    with pytest.raises(ValueError, match="relu_gain"):
        models.RunOptions(relu_gain=0)
    with pytest.raises(ConfigError, match="model.relu_gain must be > 0"):
        load_config("smoke", sets=["model.relu_gain=0"])


@pytest.mark.parametrize("name,norm", [("cnn", "nsconv"), ("resnet8", "nsconv"),
                                       ("cnn", "bn")])
def test_relu_gain_in_a_model_scales_every_relu_and_keeps_the_ledger_exact(name, norm):
    """Every ReLU of the graph (fused into a conv, after BatchNorm, closing a residual block)
    carries the gain. The tape's residual bytes equal the ledger's (MEM-2): the gain keeps no
    extra buffer. Gain 1 gives the default bytes."""
    model = models.build(name, 1, 10, norm=norm, rng=np.random.default_rng(0))
    x = smooth(np.random.default_rng(1), (3, 1, 16, 16), dtype=np.float32)
    opts = models.RunOptions(relu_gain=GAIN)
    tape = refimpl.Tape()
    params = {k: tape.leaf(v) for k, v in model.params.items()}
    models.forward(model, params, x, train=True, options=opts)
    led = ledger(model, (1, 16, 16), 3, loss=False, norm=norm)
    assert tape.residual_nbytes() == led.totals["activation_cache"]
    # the gain reaches every ReLU: each changes the logits; with gain 1 the default bytes
    base = models.forward(model, model.params, x, train=False)
    same = models.forward(model, model.params, x, train=False,
                          options=models.RunOptions(relu_gain=1.0))
    assert np.array_equal(base, same)
    scaled = models.forward(model, model.params, x, train=False, options=opts)
    assert not np.allclose(scaled, base)
    if (name, norm) == ("cnn", "nsconv"):
        # positive homogeneity: zero biases (FL-1), no activation normalisation (NSConv
        # standardises weights), max- and average-pooling commute with a positive scale: the
        # three ReLUs' gains reach the logits as gain^3 only if each ReLU carries it
        np.testing.assert_allclose(scaled, base * GAIN ** 3, rtol=1e-4)


def test_relu_gain_reaches_the_growth_twin(tmp_path):
    """Growth scores (PG-5) run a twin graph of plain convs; it uses the run's options, so the
    gain changes the scores (the twin computes the same function as the model)."""
    from refimpl.fl.client import RoundPlan, growth_scores

    out = []
    for gain in (1.0, GAIN):
        cfg = load_config("smoke", sets=[f"model.relu_gain={gain!r}"])
        data = load_fed_data(cfg)
        model = build_model(cfg, data.input_shape[0], data.num_classes)
        stt = init_state(cfg, model)
        counts = [3] * len(model.prunable)
        out.append(growth_scores(model, stt.params, stt.masks, data, 0,
                                 RoundPlan(2, 0.1, None, counts), cfg))
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(*out))
