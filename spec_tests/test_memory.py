# covers: MEM-1, MEM-2, MEM-3, MEM-4, TAPE-3, SAP-1, SAP-4, CACHE-2, CACHE-4, ERK-2
"""The analytic memory ledger: to the byte what the tape holds after a real forward pass
(MEM-2), its categories and totals (MEM-1, MEM-3), communication (MEM-4), the batch-budget
search and the ``fedmef memory`` command."""

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refimpl import functional as F
from refimpl import memory as M
from refimpl import models, sparsity
from refimpl.cli import main as cli_main
from refimpl.core.tape import Tape
from refimpl.sap import SapPolicy

GAMMAS = (0.0, 0.5, 0.7, 0.9)
POLICIES = ("dense", "bitmap", "index", "auto")
WIDTH = 0.125  # tiny widths keep the sweep fast; layer structure is that of the full models


def measure(model, x, y, opts, loss=True):
    """tape.residual_nbytes() after a real forward pass with the parameters as tape leaves."""
    tape = Tape()
    params = {k: tape.leaf(v) for k, v in model.params.items()}
    out = models.forward(model, params, x, True, opts)
    if loss:
        F.cross_entropy(out, y)
    return tape.residual_nbytes()


@pytest.mark.parametrize("norm", models.NORMS)
@pytest.mark.parametrize("name", models.names())
def test_mem2_ledger_equals_tape_to_the_byte(name, norm):
    """MEM-2 for every zoo model and norm, float32 and float64, two batch sizes, γ in
    {0, 0.5, 0.7, 0.9}, every cache policy."""
    rng = np.random.default_rng(0)
    for dtype, batch in ((np.float32, 2), (np.float64, 3)):
        model = models.build(name, 3, 10, norm=norm, width=WIDTH, dtype=dtype)
        x = rng.standard_normal((batch, 3, 16, 16)).astype(dtype)
        y = rng.integers(0, 10, batch)
        for gamma in GAMMAS:
            for policy in POLICIES:
                opts = models.RunOptions(sap=SapPolicy.make(gamma, policy))
                led = M.ledger(model, (3, 16, 16), batch, gamma=gamma, policy=policy)
                assert measure(model, x, y, opts) == led.totals["activation_cache"], \
                    (dtype.__name__, gamma, policy)


@given(st.sampled_from(models.names()), st.sampled_from(models.NORMS),
       st.sampled_from([np.float32, np.float64]), st.integers(1, 4), st.integers(8, 20),
       st.decimals(0, "0.999", places=3), st.sampled_from(POLICIES),
       st.sampled_from([1.0, 0.5, 0.1]), st.sampled_from(["dense", "masked"]), st.booleans(),
       st.integers(0, 2**31 - 1))
def test_mem2_property(name, norm, dtype, batch, hw, gamma, policy, density, stats, loss, seed):
    """MEM-2 on random configurations: any γ decimal (exact counts, CONV-6), input size,
    batch, sparse masks (ERK), NSConv stats mode, with and without the loss; the ledger gets
    only the model, the shapes and the settings, never the data."""
    if norm == "bn" and batch == 1:
        batch = 2  # BatchNorm needs more than one value per channel in training
    rng = np.random.default_rng(seed)
    model = models.build(name, 3, 7, norm=norm, width=WIDTH, dtype=dtype)
    masks = None
    if density < 1:
        shapes = [model.params[n].shape for n in model.prunable]
        counts = sparsity.layer_counts(shapes, density, "erk")
        gens = [np.random.default_rng([seed, i]) for i in range(len(shapes))]
        masks = dict(zip(model.prunable, sparsity.random_masks(shapes, counts, gens), strict=True))
        for n, m in masks.items():
            model.params[n] *= m
    x = (rng.standard_normal((batch, 3, hw, hw)) * rng.choice([0.0, 1.0], (batch, 3, hw, hw))
         ).astype(dtype)  # exact zeros: ties for the selection
    y = rng.integers(0, 7, batch)
    opts = models.RunOptions(masks=masks, nsconv_stats=stats,
                             sap=SapPolicy.make(float(gamma), policy))
    led = M.ledger(model, (3, hw, hw), batch, density=density, gamma=float(gamma),
                   policy=policy, nsconv_stats=stats, loss=loss)
    assert measure(model, x, y, opts, loss) == led.totals["activation_cache"]


def test_ledger_of_a_zoo_name_equals_that_of_the_built_model():
    built = models.build("resnet14", 3, 100, norm="bn", width=0.5, dtype=np.float64)
    a = M.ledger("resnet14", (3, 32, 32), 8, num_classes=100, norm="bn", width=0.5,
                 dtype=np.float64, gamma=0.7)
    b = M.ledger(built, (3, 32, 32), 8, gamma=0.7)
    assert a.totals == b.totals and a.layers == b.layers


@pytest.mark.parametrize("density", [1.0, 0.1])
@pytest.mark.parametrize("momentum", [False, True])
def test_totals_and_model_side_categories(density, momentum):
    """MEM-1, MEM-3, MEM-5: per-layer categories sum to the totals; sparse storage = nnz values
    + mask bitmap (ERK-2 counts); footprint = sparse model + activation cache; the sum with
    gradients and optimizer state is named as a sum; the training peak is the timeline's
    maximum and holds at least the always-live state and the whole activation cache; SAP
    (auto) never costs more than no SAP (CACHE-2)."""
    led = M.ledger("resnet18", (3, 32, 32), 4, density=density, gamma=0.7, momentum=momentum)
    t, rows = led.totals, led.layers
    model = models.build("resnet18", 3, 10)
    shapes = [model.params[n].shape for n in model.prunable]
    n_prunable = sum(math.prod(s) for s in shapes)
    n_params = model.num_params()
    assert led.counts == {"params": n_params, "prunable": n_prunable,
                          "nnz": round(density * n_prunable)}  # ERK-2: floor(d·N + 1/2)
    assert t["weights_dense"] == 4 * n_params  # no BatchNorm buffers with NSConv
    nnz = led.counts["nnz"]
    if density < 1:
        bitmap = sum((math.prod(s) + 7) // 8 for s in shapes)
        assert t["weights_sparse"] == 4 * (nnz + n_params - n_prunable) + bitmap
        assert t["masks"] == n_prunable
    else:
        assert t["weights_sparse"] == t["weights_dense"] and t["masks"] == 0
    assert t["gradients"] == 4 * (nnz + n_params - n_prunable)
    assert t["optimizer_state"] == (t["gradients"] if momentum else 0)
    assert t["footprint"] == t["weights_sparse"] + t["activation_cache"]
    assert t["footprint_with_gradients"] == t["footprint"] + t["gradients"] \
        + t["optimizer_state"]
    tl = led.timeline
    assert t["training_peak"] == tl["peak"]["bytes"] == max(e["live"] for e in tl["events"])
    data = 4 * 4 * 3 * 32 * 32 + 8 * 4
    assert tl["persistent"] == {"weights_sparse": t["weights_sparse"],
                                "gradients": t["gradients"],
                                "optimizer_state": t["optimizer_state"], "data_batch": data}
    assert t["training_peak"] >= t["footprint_with_gradients"] + data - (4 * 4 * 3 * 32 * 32)
    assert t["activation_cache"] < t["activation_cache_no_sap"]
    assert t["activation_cache"] == sum(led.activation_by_category.values())
    for key in ("weights_dense", "weights_sparse", "masks", "gradients", "activation_cache",
                "activation_cache_no_sap"):
        assert t[key] == sum(r[key] for r in rows), key
    for r in rows:
        assert r["activation_cache"] == sum(r["activation"].values())


def test_shared_cache_row_and_no_sap_baseline():
    """SAP-1 in the ledger: the projection shortcut holds no cache of its own; at γ = 0 with the
    dense policy the cache equals the no-SAP cache, and the int32-index twin is larger."""
    led = M.ledger("resnet18", (3, 32, 32), 2, gamma=0.0, policy="dense")
    sc = [r for r in led.layers if r["name"].endswith("shortcut")]
    assert len(sc) == 3
    for r in sc:
        assert r["cache_shared_with"] == r["name"].replace("shortcut", "conv1")
        assert r["activation"]["input_cache"] == 0
    assert led.totals["activation_cache"] == led.totals["activation_cache_no_sap"]
    assert led.totals["activation_cache_int32_index"] > led.totals["activation_cache"]


def test_sap4_residuals_are_compact_in_the_ledger():
    """SAP-4: ReLU = ceil(numel/8) bytes, max-pool = 1 byte per output, BatchNorm = x̂ + 1/std,
    cross-entropy = probabilities + int64 labels, pooling and add nothing."""
    led = M.ledger("cnn", (1, 28, 28), 5, norm="bn", gamma=0.0, policy="dense")
    rows = {r["name"]: r for r in led.layers}
    act = {k: r["activation"] for k, r in rows.items()}
    assert act["conv1.relu"]["relu_bitmap"] == (5 * 16 * 28 * 28 + 7) // 8
    assert act["conv1.maxpool"]["maxpool_argmax"] == 5 * 16 * 14 * 14
    assert act["conv1"]["bn"] == 4 * (5 * 16 * 28 * 28 + 16)
    assert act["loss"]["loss"] == 4 * 5 * 10 + 8 * 5
    assert sum(act["avgpool"].values()) == 0
    assert act["conv1"]["input_cache"] == 4 * 5 * 28 * 28  # the data batch itself


def test_communication_ledger():
    """MEM-4: down = nonzero values + dense tensors (+ mask bitmap when it changed); up = the
    same (+ growth pairs, index width by CACHE-1, of an adjustment round)."""
    led = M.ledger("cnn", (1, 28, 28), 8, density=0.5, dtype=np.float64, alpha_t=0.2)
    c, t = led.communication, led.totals
    assert c["down_mask_changed"] == t["weights_sparse"] == c["down"] + c["mask_bitmap"]
    assert c["up"] == c["down"] == t["gradients"]  # no BatchNorm buffers: values == grads
    pairs = 0
    for r in led.layers:
        if r["prunable"]:
            k = min(math.ceil(0.2 * r["nnz"]), r["nnz"], r["prunable"] - r["nnz"])
            width = 1 if r["prunable"] <= 256 else 2 if r["prunable"] <= 65536 else 4
            pairs += k * (width + 8)
    assert c["growth_pairs"] == pairs and c["up_adjustment"] == c["up"] + pairs
    dense = M.ledger("cnn", (1, 28, 28), 8).communication
    assert dense["mask_bitmap"] == dense["growth_pairs"] == 0


def test_json_schema_is_stable():
    led = M.ledger("mobilenetv2", (3, 32, 32), 2, width=0.25, density=0.05, gamma=0.9)
    d = json.loads(led.to_json())
    assert d["schema"] == "fedmef.memory" and d["schema_version"] == M.SCHEMA_VERSION
    assert set(d) == {"schema", "schema_version", "config", "totals", "activation_by_category",
                      "counts", "communication", "layers", "timeline"}
    assert {"events", "buffers", "persistent", "peak"} <= set(d["timeline"])
    for key in ("activation_cache", "activation_cache_no_sap", "weights_dense", "weights_sparse",
                "masks", "gradients", "optimizer_state", "footprint", "training_peak"):
        assert isinstance(d["totals"][key], int)
    assert set(d["activation_by_category"]) == set(M.CATEGORIES)
    row_keys = set(d["layers"][0])
    for r in d["layers"]:
        assert set(r) == row_keys
    assert {"name", "kind", "input_shape", "output_shape", "params", "nnz", "cache_format",
            "cache_keep", "activation", "activation_cache"} <= row_keys
    assert any(r["kind"] == "dwconv" for r in d["layers"])


def test_largest_batch_fits_and_the_next_does_not():
    kw = dict(density=0.1, gamma=0.7)
    budget = 20 * 2**20
    n = M.largest_batch(budget, "resnet8", (3, 32, 32), **kw)
    assert n >= 1
    assert M.ledger("resnet8", (3, 32, 32), n, **kw).totals["training_peak"] <= budget
    assert M.ledger("resnet8", (3, 32, 32), n + 1, **kw).totals["training_peak"] > budget
    assert M.largest_batch(1000, "resnet8", (3, 32, 32), **kw) == 0


def test_cli_memory_table_json_and_budget(capsys):
    args = ["memory", "--model", "resnet8", "--input", "3x32x32", "--batch", "16", "--density",
            "0.1", "--gamma", "0.7", "--policy", "auto"]
    assert cli_main(args) == 0
    text = capsys.readouterr().out
    assert "layer1.0.conv1" in text and "training_peak" in text and "MiB" in text
    assert cli_main(args + ["--json", "--budget", "8MiB"]) == 0
    d = json.loads(capsys.readouterr().out)
    expected = M.ledger("resnet8", (3, 32, 32), 16, density=0.1, gamma=0.7)
    assert d["totals"] == expected.totals
    assert d["budget"]["largest_batch"] == M.largest_batch(8 * 2**20, "resnet8", (3, 32, 32),
                                                           density=0.1, gamma=0.7)


@pytest.mark.parametrize("args, message", [
    (["--input", "32x32"], "CxHxW"),
    (["--gamma", "1.2"], "gamma"),
    (["--budget", "lots"], "budget"),
    (["--model", "vgg"], "valid models"),
])
def test_cli_errors_are_clear(args, message, capsys):
    base = {"--model": "cnn", "--input": "1x28x28"}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    argv = ["memory"] + [v for kv in base.items() for v in kv]
    assert cli_main(argv) == 2
    assert message in capsys.readouterr().err


def test_docs_memory_md_is_generated_from_the_ledger():
    """docs/memory.md is the output of docs/gen_memory.py (no hand-typed figure drifts)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "gen_memory.py"
    spec = importlib.util.spec_from_file_location("gen_memory", path)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.main(["--check"]) == 0, "run python docs/gen_memory.py"


def test_input_shape_that_does_not_fit_the_model_is_a_clear_error():
    model = models.build("cnn", 1, 10)
    with pytest.raises(ValueError, match=r"input 3x28x28 does not fit model cnn \(C x H x W: "
                                         r"check the number of channels\)"):
        M.ledger(model, (3, 28, 28), 2)
    with pytest.raises(ValueError, match=r"input 1x2x2 is too small .* height and width >= 4"):
        M.ledger(model, (1, 2, 2), 2)
    with pytest.raises(ValueError, match="batch"):
        M.ledger(model, (1, 28, 28), 0)
