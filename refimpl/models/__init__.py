"""The model zoo (``refimpl.models.build(name, in_channels, num_classes, norm=..., width=...)``)
and the layer graph its models are made of (:mod:`refimpl.models.graph`).

Layering: this package sits above :mod:`refimpl.functional` (it runs its layer graph through the
functional API) and below the engine, the memory ledger and the command line.
"""

from .graph import (
    NORMS,
    Conv,
    GlobalAvgPool,
    Linear,
    MaxPool,
    Model,
    ReLU,
    ResidualBlock,
    RunOptions,
    forward,
    iter_layers,
)
from .zoo import build, names

__all__ = ["build", "names", "forward", "Model", "RunOptions", "iter_layers", "NORMS", "Conv",
           "Linear", "ReLU", "MaxPool", "GlobalAvgPool", "ResidualBlock"]
