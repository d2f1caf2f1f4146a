"""The model zoo: ``build(name, in_channels, num_classes, norm=..., width=...)``.

Each builder returns a :class:`refimpl.models.graph.Model` whose layer graph is plain data (see
:mod:`refimpl.models.graph`). Initialisation follows FL-1 with randomness from an explicit
generator.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .graph import (
    NORMS,
    Conv,
    GlobalAvgPool,
    Linear,
    MaxPool,
    Model,
    ReLU,
    ResidualBlock,
    init_params,
)

__all__ = ["build", "names"]


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def _conv(name, cin, cout, k, norm, stride=1, padding=None, groups=1):
    """A conv unit. Convs followed by BatchNorm carry no bias (BN has its own shift)."""
    pad = k // 2 if padding is None else padding
    return Conv(name, cin, cout, k, stride, pad, groups, bias=norm != "bn", norm=norm)


def cnn_layers(in_channels: int, num_classes: int, norm: str, width: float):
    """The default small model for 28x28 grayscale: three 3x3 convs (16, 32, 64 x width) with
    ReLU, 2x2 max-pool after the first two, global average pool, linear."""
    c1, c2, c3 = _ch(16, width), _ch(32, width), _ch(64, width)
    return (
        _conv("conv1", in_channels, c1, 3, norm), ReLU(), MaxPool(2, 2),
        _conv("conv2", c1, c2, 3, norm), ReLU(), MaxPool(2, 2),
        _conv("conv3", c2, c3, 3, norm), ReLU(),
        GlobalAvgPool(),
        Linear("fc", c3, num_classes),
    )


def _basic_block(name, cin, cout, stride, norm):
    """BasicBlock: relu(conv3x3-norm-relu-conv3x3-norm + shortcut); 1x1 projection shortcut
    where the shape changes."""
    body = (_conv(f"{name}.conv1", cin, cout, 3, norm, stride), ReLU(),
            _conv(f"{name}.conv2", cout, cout, 3, norm))
    short = ()
    if stride != 1 or cin != cout:
        short = (_conv(f"{name}.shortcut", cin, cout, 1, norm, stride, padding=0),)
    return ResidualBlock(body, short)


def _resnet(in_channels, num_classes, norm, stem, stages, blocks_per_stage, strides):
    layers = [_conv("stem", in_channels, stem, 3, norm), ReLU()]
    cin = stem
    for si, (cout, stride) in enumerate(zip(stages, strides)):
        for b in range(blocks_per_stage):
            layers.append(_basic_block(f"layer{si + 1}.{b}", cin, cout, stride if b == 0 else 1,
                                       norm))
            cin = cout
    return tuple(layers) + (GlobalAvgPool(), Linear("fc", cin, num_classes))


def _cifar_resnet(depth):
    def layers(in_channels, num_classes, norm, width):
        n = (depth - 2) // 6
        c = [_ch(16, width), _ch(32, width), _ch(64, width)]
        return _resnet(in_channels, num_classes, norm, c[0], c, n, (1, 2, 2))

    layers.__doc__ = f"CIFAR ResNet-{depth}: stem conv, 3 stages of 16/32/64 x width with " \
                     f"{(depth - 2) // 6} BasicBlock(s) each, strides 1/2/2."
    return layers


def resnet18_layers(in_channels, num_classes, norm, width):
    """The CIFAR ResNet18 of federated pruning papers: 3x3 stem (stride 1, no max-pool), four
    stages of 64/128/256/512 x width with two BasicBlocks each, strides 1/2/2/2, 1x1 conv
    shortcuts where the shape changes, global average pool, linear."""
    c = [_ch(64, width), _ch(128, width), _ch(256, width), _ch(512, width)]
    return _resnet(in_channels, num_classes, norm, c[0], c, 2, (1, 2, 2, 2))


# (expansion t, output channels c, blocks n, first stride s): the CIFAR variant keeps stride 1
# in the stem and in the second stage, so 32x32 inputs end at 4x4.
_MBV2_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))


def mobilenetv2_layers(in_channels, num_classes, norm, width):
    """MobileNetV2 (CIFAR variant): 3x3 stem of 32 x width, inverted residual blocks (1x1
    expansion, 3x3 depthwise, 1x1 linear projection; identity residual when stride 1 and
    channels match, no ReLU after the add), 1x1 conv to 1280 x max(1, width), global average
    pool, linear. ReLU stands in for ReLU6 (refimpl has no clipped activation)."""
    cin = _ch(32, width)
    layers = [_conv("stem", in_channels, cin, 3, norm), ReLU()]
    for si, (t, c, n, s) in enumerate(_MBV2_CFG):
        cout = _ch(c, width)
        for b in range(n):
            name = f"block{si + 1}.{b}"
            stride = s if b == 0 else 1
            hidden = cin * t
            body = []
            if t != 1:
                body += [_conv(f"{name}.expand", cin, hidden, 1, norm), ReLU()]
            body += [_conv(f"{name}.dw", hidden, hidden, 3, norm, stride, groups=hidden), ReLU(),
                     _conv(f"{name}.project", hidden, cout, 1, norm)]
            if stride == 1 and cin == cout:
                layers.append(ResidualBlock(tuple(body), (), relu=False))
            else:
                layers.extend(body)
            cin = cout
    last = _ch(1280, max(1.0, width))
    layers += [_conv("head", cin, last, 1, norm), ReLU(), GlobalAvgPool(),
               Linear("fc", last, num_classes)]
    return tuple(layers)


_BUILDERS: dict[str, Callable] = {
    "cnn": cnn_layers,
    "resnet8": _cifar_resnet(8),
    "resnet14": _cifar_resnet(14),
    "resnet20": _cifar_resnet(20),
    "resnet18": resnet18_layers,
    "mobilenetv2": mobilenetv2_layers,
}


def names() -> list[str]:
    return sorted(_BUILDERS)


def build(name: str, in_channels: int, num_classes: int, norm: str = "nsconv", width: float = 1.0,
          dtype=np.float32, rng: np.random.Generator | None = None) -> Model:
    """Build model ``name`` with freshly initialised parameters.

    ``rng`` is the MODEL_INIT stream (RNG-1); a fixed default keeps interactive use
    deterministic.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(names())}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")
    if not width > 0:
        raise ValueError(f"width must be > 0, received {width}")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, received {np.dtype(dtype)}")
    layers = _BUILDERS[name](in_channels, num_classes, norm, width)
    rng = np.random.default_rng(0) if rng is None else rng
    params, buffers = init_params(layers, np.dtype(dtype), rng)
    return Model(name, layers, params, buffers)
