# covers: FL-1, MASK-1
"""FL-1 initialisation of every zoo model: He-normal weights with the *fan_in* of each layer
(C_in/groups·kh·kw for a conv, in for a linear), biases 0, NSConv gains 1, BatchNorm weight 1
and bias 0, in the model's dtype.

He-normal is a distribution, so the weights are checked statistically, per layer, on fixed
seeds (deterministic): the sample standard deviation within 30% of sqrt(2/fan_in) for layers of
at least 100 weights (its standard error there is at most 7%), and the mean within 5 standard
errors of 0. Layers whose fan_in and fan_out differ (the stem, downsampling convs, depthwise
convs, the classifier) make a fan_out initialisation fail by a factor sqrt(fan_out/fan_in).
"""

import numpy as np
import pytest

from refimpl import models
from refimpl.models.graph import Conv, Linear, iter_layers


def _fan_in(layer) -> int:
    return int(np.prod(layer.weight_shape[1:]))


@pytest.mark.parametrize("name", models.names())
@pytest.mark.parametrize("norm", ["nsconv", "bn"])
def test_he_normal_fan_in_and_constant_parameters(name, norm):
    m = models.build(name, 3, 10, norm=norm, width=0.5, dtype=np.float32,
                     rng=np.random.default_rng(20240314))
    checked = 0
    for layer in iter_layers(m.layers):
        if not isinstance(layer, (Conv, Linear)):
            continue
        w = m.params[f"{layer.name}.weight"]
        assert w.dtype == np.float32 and w.shape == layer.weight_shape
        sigma = np.sqrt(2.0 / _fan_in(layer))
        if w.size >= 100:
            x = w.astype(np.float64).ravel()
            assert abs(x.std() / sigma - 1) < 0.3, (layer.name, x.std(), sigma)
            assert abs(x.mean()) < 5 * sigma / np.sqrt(x.size), layer.name
            checked += 1
        if layer.bias:
            assert not np.any(m.params[f"{layer.name}.bias"])
        if isinstance(layer, Conv) and layer.norm == "nsconv":
            assert np.all(m.params[f"{layer.name}.gain"] == 1)
        if isinstance(layer, Conv) and layer.norm == "bn":
            assert np.all(m.params[f"{layer.name}.bn.weight"] == 1)
            assert not np.any(m.params[f"{layer.name}.bn.bias"])
    assert checked >= 2

