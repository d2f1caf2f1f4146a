# covers: CONV-1, CONV-2
"""Bad input gets a clear error: the op's name, what was expected, and what was received
(STYLE 12). Shapes and dtypes are checked before any work."""

import numpy as np
import pytest

from refimpl import functional as F

f32, f64 = np.float32, np.float64


def z(*shape, dtype=f64):
    return np.zeros(shape, dtype=dtype)


@pytest.mark.parametrize("call,pattern", [
    (lambda: F.conv2d(z(1, 3, 5, 5), z(4, 2, 3, 3)),
     r"conv2d: expected weight of shape \(C_out, 3, kH, kW\).*received weight shape "
     r"\(4, 2, 3, 3\) and input shape \(1, 3, 5, 5\)"),
    (lambda: F.conv2d(z(3, 5, 5), z(4, 3, 3, 3)),
     r"conv2d: expected input of 4 dimensions \(N, C_in, H, W\), received shape \(3, 5, 5\)"),
    (lambda: F.conv2d(z(1, 3, 2, 2), z(4, 3, 3, 3)),
     r"conv2d: input height 2 with padding 0 is smaller than the dilated kernel span 3"),
    (lambda: F.conv2d(z(1, 3, 5, 5), z(4, 3, 3, 3), z(3)),
     r"conv2d: expected bias of shape \(4,\), received \(3,\)"),
    (lambda: F.conv2d(z(1, 3, 5, 5), z(4, 3, 3, 3), mask=np.ones((4, 3, 3))),
     r"conv2d: expected mask of the weight's shape \(4, 3, 3, 3\), received \(4, 3, 3\)"),
    (lambda: F.linear(z(2, 5), z(3, 4)),
     r"linear: expected input of shape \(\*, 4\) for weight \(3, 4\), received \(2, 5\)"),
    (lambda: F.add(z(2, 3), z(4)),
     r"add: shapes \(2, 3\) and \(4,\) do not broadcast"),
    (lambda: F.max_pool2d(z(1, 1, 1, 1), 3),
     r"max_pool2d: input height 1 with padding 0 is smaller than the window span 3; "
     r"expected height >= 3"),
    (lambda: F.cross_entropy(z(4, 3), np.array([0, 1, 2])),
     r"cross_entropy: expected target of shape \(4,\) for input \(4, 3\), received \(3,\)"),
    (lambda: F.cross_entropy(z(2, 3), np.array([0, 3])),
     r"cross_entropy: labels must lie in \[0, 3\), received range \[0, 3\]"),
    (lambda: F.reshape(z(2, 3), (4, 2)),
     r"reshape: cannot view input of shape \(2, 3\) \(6 elements\) as \(4, 2\)"),
    (lambda: F.batch_norm2d(z(2, 3, 4, 4), z(2), z(3)),
     r"batch_norm: expected running_mean of shape \(3,\), received \(2,\)"),
])
def test_shape_errors_name_op_expected_and_received(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


@pytest.mark.parametrize("call,pattern", [
    (lambda: F.conv2d(z(1, 3, 5, 5, dtype=f32), z(4, 3, 3, 3)),
     r"conv2d: weight has dtype float64 but input has dtype float32"),
    (lambda: F.conv2d(np.zeros((1, 3, 5, 5), dtype=np.int32), z(4, 3, 3, 3)),
     r"conv2d: input has dtype int32, expected float32 or float64"),
    (lambda: F.linear(z(2, 4), z(3, 4, dtype=f32)),
     r"linear: weight has dtype float32 but input has dtype float64"),
    (lambda: F.relu(np.zeros(3, dtype=np.float16)),
     r"relu: input has dtype float16, expected float32 or float64"),
    (lambda: F.mul(z(3), z(3, dtype=f32)),
     r"mul: other has dtype float32 but input has dtype float64"),
])
def test_dtype_errors_name_op_expected_and_received(call, pattern):
    with pytest.raises(TypeError, match=pattern):
        call()


def test_labels_must_be_integers():
    with pytest.raises(TypeError, match="cross_entropy: target must hold integer labels, "
                                        "received dtype float64"):
        F.cross_entropy(z(2, 3), np.array([0.0, 1.0]))
