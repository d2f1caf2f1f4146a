# covers: TAPE-1, MASK-1, MASK-3, NSC-4, FL-1
"""The model zoo: every model passes the dot-product gradient test at a tiny width, in each
norm variant, dense and masked; every model runs forward and backward on inputs from 8x8 up."""

import numpy as np
import pytest

import refimpl
from refimpl import functional as F
from refimpl import models
from refimpl import sparsity as S

from .gradcheck import dot_product_test
from .tolerances import DOT_PRODUCT_MODEL

CASES = [(name, norm) for name in models.names() for norm in models.NORMS]


def _width(name):
    return 1.0 if name == "cnn" else 0.25


def _masks(model, density, seed):
    shapes = [model.params[p].shape for p in model.prunable]
    counts = S.layer_counts(shapes, density)
    masks = S.random_masks(shapes, counts, [np.random.default_rng([seed, i])
                                            for i in range(len(shapes))])
    return dict(zip(model.prunable, masks))


@pytest.mark.parametrize("name,norm", CASES)
@pytest.mark.parametrize("masked", [False, True])
def test_model_dot_product(name, norm, masked):
    model = models.build(name, 3, 5, norm=norm, width=_width(name), dtype=np.float64,
                         rng=np.random.default_rng(1))
    # Away from kinks: zero-initialised biases put every unit whose inputs are all zero exactly
    # on a ReLU kink, where no derivative exists. Random biases and gains move it off.
    rng = np.random.default_rng(5)
    for k, v in model.params.items():
        if v.ndim == 1:
            model.params[k] = v + 0.1 * rng.standard_normal(v.shape)
    opts = models.RunOptions()
    if masked:
        masks = _masks(model, 0.5, 2)
        for k, m in masks.items():
            model.params[k] *= m
        opts = models.RunOptions(masks=masks)
    names = list(model.params)
    # batch 4: BatchNorm at the 1x1 end of the deep models then normalises 4 values per
    # channel; with 2 its output is ±1 whatever the input, an ill-conditioned check.
    x = np.random.default_rng(3).standard_normal((4, 3, 8, 8))

    def fn(x, *ps):
        return models.forward(model, dict(zip(names, ps)), x, train=True, options=opts)

    err = dot_product_test(fn, [x] + [model.params[k] for k in names], seed=4)
    assert err < DOT_PRODUCT_MODEL, f"{name}/{norm}: dot-product relative error {err:.2e}"


@pytest.mark.parametrize("name", models.names())
@pytest.mark.parametrize("hw", [8, 12])
def test_forward_backward_from_8x8(name, hw):
    model = models.build(name, 1, 10, width=_width(name))
    x = np.random.default_rng(0).standard_normal((2, 1, hw, hw)).astype(np.float32)
    y = np.array([1, 7])
    loss, grads = refimpl.value_and_grad(
        lambda p: F.cross_entropy(models.forward(model, p, x), y))(model.params)
    assert np.isfinite(loss) and loss.dtype == np.float32
    assert set(grads) == set(model.params)
    assert all(np.all(np.isfinite(g)) for g in grads.values())


def test_masked_gradients_vanish_off_mask_for_plain_convs():
    """MASK-3: with masked kernels, a plain conv's weight gradient is exactly 0 where the
    mask is 0 (NSConv weights get gradient there through μ; the optimizer masks it)."""
    model = models.build("cnn", 1, 10, norm="none", dtype=np.float64)
    masks = _masks(model, 0.3, 0)
    for k, m in masks.items():
        model.params[k] *= m
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8))
    opts = models.RunOptions(masks=masks)
    _, grads = refimpl.value_and_grad(
        lambda p: F.cross_entropy(models.forward(model, p, x, options=opts), np.array([0, 1])))(
        model.params)
    for k, m in masks.items():
        if grads[k].ndim == 4:
            assert np.all(grads[k][~m] == 0)


def test_unknown_model_or_norm_lists_valid():
    with pytest.raises(ValueError, match="valid models: cnn"):
        models.build("vgg", 3, 10)
    with pytest.raises(ValueError, match="valid norms"):
        models.build("cnn", 3, 10, norm="ln")
