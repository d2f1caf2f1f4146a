# covers: MEM-1, MEM-2, SAP-1, SAP-4, NSC-3
"""The ledger's categories (MEM-1) checked against the real tape buffer by buffer, and by
formula.

The ledger sums the residual records that the primitives' dry ``plan`` functions build, and the
record classes name the category of each field. A field filed under the wrong category keeps
every total (MEM-2 compares totals), and a plan that disagrees with its ``fwd`` in one layer
can hide behind another layer's total. So here:

- the real tape's residual buffers, after a real forward and loss, are put into categories by
  a table written in this test (primitive and field -> category, from MEM-1 and SAP-4), per
  layer scope, and must equal the ledger's rows cell by cell;
- on the NSConv cnn the cells are also computed from SPEC's formulas: Ŵ is nnz·s bytes in a
  masked layer (NSC-3: Ŵ exists only at the active positions) and C_out·fan_in·s in a dense one,
  none for the first conv (its input needs no gradient); r and the clamp flags C_out·s + C_out;
  the fused ReLU's bitmap ceil(numel/8); the max-pool argmax one byte per output; the input
  cache the bytes of its format (CACHE-4) at SAP-2's exact count;
- a block's first conv and its projection shortcut hold one cache (SAP-1): the shortcut's row
  holds none, and the ledger says whose it shares.
"""

import math
from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl import functional as F
from refimpl import memory as M
from refimpl import models, sparsity
from refimpl import sap as S
from refimpl.core.tape import Tape, scope

WIDTH = 0.125

#: (primitive, top-level residual field) -> MEM-1 category. Written here, not read from the
#: record classes, so that a field filed under another category is seen.
CATEGORY = {
    ("conv2d", "x"): "input_cache", ("conv2d", "cache"): "input_cache",
    ("conv2d", "w"): "standardised_kernel", ("conv2d", "relu_bits"): "relu_bitmap",
    ("linear", "x"): "input_cache", ("linear", "cache"): "input_cache",
    ("nsconv_standardize", "r"): "nsconv_scale",
    ("nsconv_standardize", "unclamped"): "nsconv_scale",
    ("relu", "bits"): "relu_bitmap", ("max_pool2d", "arg"): "maxpool_argmax",
    ("batch_norm", "xhat"): "bn", ("batch_norm", "invstd"): "bn",
    ("cross_entropy", "probs"): "loss", ("cross_entropy", "target"): "loss",
}


def tape_cells(model, x, y, opts) -> dict:
    """{(scope, category): bytes} of the residual buffers a real step's tape holds after the
    forward and the loss (each distinct buffer once, TAPE-3), by the table above."""
    tape = Tape()
    params = {k: tape.leaf(v) for k, v in model.params.items()}
    out = models.forward(model, params, x, True, opts)
    with scope("loss"):
        F.cross_entropy(out, y)
    cells: dict = {}
    for i, prim, path, arr in tape.residual_buffers():
        key = (prim, path.split(".", 1)[0])
        assert key in CATEGORY, f"residual field {key} has no MEM-1 category in this test"
        cell = (tape.nodes[i].scope, CATEGORY[key])
        cells[cell] = cells.get(cell, 0) + arr.nbytes
    return cells


def ledger_cells(led) -> dict:
    return {(r["name"], c): v for r in led.layers for c, v in r["activation"].items() if v}


def _masks(model, density, seed):
    if density >= 1:
        return None
    shapes = [model.params[n].shape for n in model.prunable]
    counts = sparsity.layer_counts(shapes, density, "erk")
    gens = [np.random.default_rng([seed, i]) for i in range(len(shapes))]
    masks = dict(zip(model.prunable, sparsity.random_masks(shapes, counts, gens), strict=True))
    for n, m in masks.items():
        model.params[n] *= m
    return masks


def _n_keep(numel, gamma):
    g = Fraction(gamma)
    return numel - math.floor(g * numel)  # SAP-2 with CONV-6's exact rational


def _cache_bytes(numel, gamma, policy, s):
    k = _n_keep(numel, gamma)
    idx = 1 if numel - 1 < 2**8 else 2 if numel - 1 < 2**16 else 4
    sizes = {"dense": numel * s, "bitmap": (numel + 7) // 8 + k * s, "index": k * (idx + s)}
    if policy != "auto":
        return sizes[policy]
    return min(sizes.values())  # CACHE-2 (ties do not change the bytes)


def test_nsconv_cnn_cells_follow_the_formulas():
    """MEM-1 by formula, NSC-3, SAP-4 on the NSConv cnn (convs 1x16, 16x32, 32x64, 3x3 on
    28x28, batch 4): per conv, Ŵ = nnz·s (masked) or C_out·fan_in·s (dense), none for conv1;
    r and the flags C_out·s + C_out; the fused ReLU ceil(N·C_out·H·W / 8); each max-pool one
    byte per output; the input cache at γ = 0.7 the bytes of its format."""
    n, gamma = 4, "0.7"
    convs = {"conv1": (1, 16, 28), "conv2": (16, 32, 14), "conv3": (32, 64, 7)}
    for density, dtype in ((0.2, np.float32), (1.0, np.float64)):
        s = np.dtype(dtype).itemsize
        for policy in ("auto", "bitmap", "index"):
            led = M.ledger("cnn", (1, 28, 28), n, density=density, gamma=gamma, policy=policy,
                           dtype=dtype)
            rows = {r["name"]: r for r in led.layers}
            for name, (c_in, c_out, hw) in convs.items():
                r, act = rows[name], rows[name]["activation"]
                assert r["prunable"] == c_out * c_in * 9
                if density < 1 and name != "conv1":
                    assert r["nnz"] < r["prunable"]  # a masked layer: Ŵ travels packed
                want_w = 0 if name == "conv1" else r["nnz"] * s  # nnz = C_out·fan_in when dense
                assert act["standardised_kernel"] == want_w, (name, density, policy)
                assert act["nsconv_scale"] == c_out * s + c_out, name
                assert act["relu_bitmap"] == (n * c_out * hw * hw + 7) // 8, name
                assert act["input_cache"] == _cache_bytes(n * c_in * hw * hw, gamma, policy, s)
                assert act["maxpool_argmax"] == act["bn"] == act["loss"] == 0
            for name, (_, c_out, hw) in (("conv1", convs["conv1"]), ("conv2", convs["conv2"])):
                act = rows[f"{name}.maxpool"]["activation"]
                assert act == {**dict.fromkeys(M.CATEGORIES, 0),
                               "maxpool_argmax": n * c_out * (hw // 2) ** 2}
            assert rows["loss"]["activation"]["loss"] == n * 10 * s + n * 8


def test_block_conv_and_shortcut_hold_one_cache_in_the_ledger():
    """SAP-1 in the ledger under SAP (γ = 0.7): each projection shortcut holds no cache of its
    own and names the conv whose cache it shares; that one cache has the bytes of a single
    cache of the block input."""
    led = M.ledger("resnet8", (3, 16, 16), 2, width=0.25, gamma=0.7, policy="bitmap")
    rows = {r["name"]: r for r in led.layers}
    shortcuts = [k for k in rows if k.endswith("shortcut")]
    assert shortcuts
    for sc in shortcuts:
        conv1 = sc.replace("shortcut", "conv1")
        assert rows[sc]["cache_shared_with"] == conv1
        assert rows[sc]["activation"]["input_cache"] == 0
        numel = math.prod(rows[conv1]["input_shape"])
        assert rows[conv1]["activation"]["input_cache"] == _cache_bytes(numel, "0.7", "bitmap", 4)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(models.names()), st.sampled_from(models.NORMS),
       st.sampled_from([np.float32, np.float64]), st.integers(2, 3),
       st.sampled_from([1.0, 0.3]), st.sampled_from(["dense", "masked"]),
       st.sampled_from([None, ("0.7", "auto"), ("0.5", "index"), ("0.9", "bitmap"),
                        ("0.3", "dense"), ("0.0", "auto")]),
       st.integers(0, 2**16))
def test_every_category_cell_equals_the_tape(name, norm, dtype, batch, density, stats, sap,
                                             seed):
    """MEM-1, MEM-2 per layer and category: the ledger's cell (layer, category) equals the
    bytes of the real tape's buffers of that layer filed by MEM-1's table, for every zoo
    model, norm, dtype, density, NSConv stats mode and SAP policy."""
    model = models.build(name, 3, 7, norm=norm, width=WIDTH, dtype=dtype,
                         rng=np.random.default_rng(seed))
    masks = _masks(model, density, seed)
    policy = S.SapPolicy.make(*sap) if sap else None
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch, 3, 12, 12)).astype(dtype)
    y = rng.integers(0, 7, batch)
    opts = models.RunOptions(masks=masks, nsconv_stats=stats, sap=policy)
    led = M.ledger(model, (3, 12, 12), batch, density=density, nsconv_stats=stats,
                   gamma=sap[0] if sap else 0.0, policy=sap[1] if sap else "dense")
    assert ledger_cells(led) == tape_cells(model, x, y, opts)
