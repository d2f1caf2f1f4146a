"""Hypothesis strategies shared by the spec tests. They *construct* valid configurations
(shapes that fit, channels divisible by groups) instead of filtering invalid ones."""

from hypothesis import strategies as st

seeds = st.integers(0, 2**32 - 1)


@st.composite
def conv_case(draw, max_batch=2, stride1=False):
    """A valid conv2d configuration: groups dividing both channel counts, a window that fits
    (``stride1``: stride (1, 1), the masked kernels' wide-rows path)."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c = groups * draw(st.integers(1, 2))
    o = groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (1, 1) if stride1 else (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h = max(1, dil[0] * (kh - 1) + 1 - 2 * pad[0]) + draw(st.integers(0, 3))
    w = max(1, dil[1] * (kw - 1) + 1 - 2 * pad[1]) + draw(st.integers(0, 3))
    return dict(n=draw(st.integers(1, max_batch)), c=c, o=o, h=h, w=w, kh=kh, kw=kw,
                stride=stride, padding=pad, dilation=dil, groups=groups,
                bias=draw(st.booleans()))


@st.composite
def pool_case(draw, max_pool):
    """A valid pooling configuration (padding at most half the kernel, as PyTorch requires)."""
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pad = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if max_pool else (1, 1)
    # At least one window span of real input, so no dilated window falls entirely into the
    # padding (its maximum would be -inf, as in PyTorch).
    h = dil[0] * (kh - 1) + 1 + draw(st.integers(0, 3))
    w = dil[1] * (kw - 1) + 1 + draw(st.integers(0, 3))
    return dict(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 2)), h, w),
                kernel_size=(kh, kw), stride=stride, padding=pad, dilation=dil)


@st.composite
def broadcast_pair(draw):
    """Two shapes that broadcast against each other (either side may be the smaller)."""
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    other = [1 if draw(st.booleans()) else s for s in shape]
    other = other[draw(st.integers(0, len(other))):]  # drop leading axes too
    if draw(st.booleans()):
        return tuple(shape), tuple(other)
    return tuple(other), tuple(shape)


def conv_kwargs(cfg):
    return dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"],
                groups=cfg["groups"])
