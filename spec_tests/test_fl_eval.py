# covers: AGG-1, FL-1
"""Evaluation of the global model uses the global model's own BatchNorm running statistics
(the FedAvg of the clients' statistics, AGG-1), not the statistics the model object was built
with: the test accuracy and loss a round records are those of the aggregated model."""

import numpy as np

from refimpl import functional as F
from refimpl import models
from refimpl.fl.config import load_config
from refimpl.fl.data import load_fed_data
from refimpl.fl.engine import run_round
from refimpl.fl.state import build_model, init_state


def _loss(model, params, buffers, masks, data):
    m = models.Model(model.name, model.layers, params, {k: v.copy() for k, v in buffers.items()})
    logits = models.forward(m, params, data.batch(data.x_test), train=False,
                            options=models.RunOptions(masks=masks))
    return float(F.cross_entropy(logits, data.y_test, reduction="sum")) / len(data.y_test)


def test_recorded_test_loss_is_that_of_the_aggregated_bn_model():
    cfg = load_config("smoke", sets=["run.method=prune_grow", "model.norm=bn",
                                     "run.eval_every=1", "sap.gamma=0"])
    data = load_fed_data(cfg)
    model = build_model(cfg, data.input_shape[0], data.num_classes)
    state = init_state(cfg, model)
    initial_buffers = {k: v.copy() for k, v in state.buffers.items()}
    state, rec = run_round(cfg, model, state, data, 1)
    # the round moved the running statistics, so the two evaluations below differ
    assert any(not np.array_equal(state.buffers[k], initial_buffers[k]) for k in initial_buffers)
    want = _loss(model, state.params, state.buffers, state.masks, data)
    stale = _loss(model, state.params, initial_buffers, state.masks, data)
    assert abs(want - stale) > 1e-6
    assert abs(rec["test_loss"] - want) <= 1e-5 * max(1.0, abs(want))
