# covers: TAPE-1, TAPE-2, TAPE-3, TAPE-4, SAP-4
"""The tape: accumulation on fan-out, residual records and their byte count, release after
backward, and no work for constants."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refimpl
from refimpl import functional as F
from refimpl.core.tape import Primitive, Residual, Tape, apply


@given(st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_fan_out_accumulates(n, m, seed):
    """TAPE-1: f(x) = relu(x) * x + x uses x three times; its gradient is the sum of all three."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, m))
    u = rng.standard_normal((n, m))
    out, vjp_fn = refimpl.vjp(lambda x: F.add(F.mul(F.relu(x), x), x), x)
    (dx,) = vjp_fn(u)
    expected = u * (2 * np.maximum(x, 0) + 1)  # d/dx [relu(x) x + x] = 2 relu(x) + 1 (x != 0)
    np.testing.assert_allclose(dx, expected, rtol=1e-12, atol=1e-12)


def test_fan_out_same_var_into_one_op():
    """TAPE-1: mul(x, x) receives both contributions (2 x u)."""
    x = np.array([1.5, -2.0, 3.0])
    u = np.array([0.5, 1.0, -2.0])
    _, vjp_fn = refimpl.vjp(lambda x: F.mul(x, x), x)
    np.testing.assert_array_equal(vjp_fn(u)[0], 2 * x * u)


def test_residual_records_are_typed_and_countable():
    """TAPE-2, TAPE-3, SAP-4: residuals are dataclasses; ReLU keeps ceil(n/8) bytes of bitmap;
    max-pool keeps one uint8 per output; add/reshape keep no arrays."""
    rng = np.random.default_rng(0)
    tape = Tape()
    x = tape.leaf(rng.standard_normal((2, 3, 4, 4)))
    r = F.relu(x)
    p = F.max_pool2d(r, 2)
    s = F.add(p, p)
    f = F.reshape(s, (2, -1))
    kinds = [type(n.res).__name__ for n in tape.nodes]
    assert kinds == ["ReluRes", "MaxPoolRes", "AddRes", "ReshapeRes"]
    for node in tape.nodes:
        assert dataclasses.is_dataclass(node.res)
    sizes = {op: arr.nbytes for _, op, _, arr in tape.residual_buffers()}
    assert sizes == {"relu": (2 * 3 * 4 * 4 + 7) // 8, "max_pool2d": 2 * 3 * 2 * 2}
    assert tape.residual_nbytes() == sum(sizes.values())
    assert f.shape == (2, 12)


def test_shared_buffer_counts_once_and_release_after_backward():
    """TAPE-3: a buffer held by two records counts once; backward releases every record."""
    rng = np.random.default_rng(1)
    tape = Tape()
    x = tape.leaf(rng.standard_normal((4, 5)))
    h = F.relu(x)  # intermediate: counted when an operand field refers to it
    a = F.mul(h, h)  # MulRes holds h twice (as a and b): one buffer
    before = tape.residual_nbytes()
    assert before == (20 + 7) // 8 + 4 * 5 * 8
    out = F.sum(a)
    tape.backward(out, np.ones((), dtype=np.float64))
    assert tape.residual_nbytes() == 0
    with pytest.raises(RuntimeError, match="released"):
        tape.backward(out, np.ones((), dtype=np.float64))


def test_leaf_operands_are_not_counted():
    """TAPE-3: a weight operand that is a leaf (a parameter) is the caller's memory; the same
    operand computed on the tape is an intermediate and is counted."""
    rng = np.random.default_rng(2)
    xv, wv = rng.standard_normal((3, 4)), rng.standard_normal((5, 4))
    tape = Tape()
    x, w = tape.leaf(xv), tape.leaf(wv)
    F.linear(x, w)
    assert tape.residual_nbytes() == xv.nbytes  # input cache only; w is a leaf
    tape2 = Tape()
    x2, w2 = tape2.leaf(xv), tape2.leaf(wv)
    F.linear(x2, F.mul(w2, 2.0))  # the scaled weight is an intermediate
    assert tape2.residual_nbytes() == xv.nbytes + wv.nbytes


def test_constants_get_no_vjp():
    """TAPE-4: a primitive's vjp is asked only for inputs that need a gradient, and an op on
    constants alone records nothing and returns a plain array."""
    calls = []

    @dataclasses.dataclass(eq=False)
    class SpyRes(Residual):
        pass

    def fwd(inputs, params, needs):
        return inputs[0] * inputs[1], SpyRes()

    def vjp(res, g, params, needs):
        calls.append(needs)
        return tuple(g if n else None for n in needs)

    spy = Primitive("spy", fwd, vjp)
    data = np.ones(3)
    out, vjp_fn = refimpl.vjp(lambda w: apply(spy, (data, w), None), np.ones(3))
    vjp_fn(np.ones(3))
    assert calls == [(False, True)]
    plain = apply(spy, (data, data), None)
    assert isinstance(plain, np.ndarray)


def test_outside_trace_returns_arrays():
    x = np.arange(6.0).reshape(2, 3)
    assert isinstance(F.relu(x), np.ndarray)
    assert isinstance(F.sum(x), np.ndarray)
    np.testing.assert_array_equal(F.flatten(x), x.ravel())


def test_unused_primal_gets_zeros_and_grad_structure():
    f = refimpl.grad(lambda p, y: F.sum(F.mul(p["a"], y)), argnums=0)
    g = f({"a": np.array([1.0, 2.0]), "b": np.array([3.0])}, np.array([4.0, 5.0]))
    np.testing.assert_array_equal(g["a"], [4.0, 5.0])
    np.testing.assert_array_equal(g["b"], [0.0])
