# covers: CONV-7, LT-1, LT-3, PG-1
"""CONV-7: rounds are numbered t = 1..R and local iterations τ = 0..T-1, in the engine itself.

Seen through the observer of a short run: the first round is t = 1 (η_1 = η0, and with ΔT = 2
the first adjustment is round 2, not round 1), each client's local steps are τ = 0, 1, ..., T-1
with epoch τ // ceil(n_k/B), and the round counter of the state advances one by one."""

import math

import pytest

from refimpl.fl.client import num_iterations
from refimpl.fl.config import load_config
from refimpl.fl.data import load_fed_data
from refimpl.fl.engine import run_round
from refimpl.fl.observe import Observer
from refimpl.fl.schedule import learning_rate
from refimpl.fl.state import build_model, init_state


class _Numbers(Observer):
    def __init__(self):
        self.rounds, self.steps = [], []

    def round_start(self, t, clients, plan, alpha):
        self.rounds.append((t, plan.t, alpha is not None, [int(c) for c in clients]))

    def local_step(self, t, client, step):
        self.steps.append((t, client, step.tau, step.epoch))


def test_rounds_start_at_one_and_iterations_at_zero():
    cfg = load_config("smoke", sets=["run.rounds=3", "sparse.delta_t=2", "train.local_epochs=2"])
    data = load_fed_data(cfg)
    model = build_model(cfg, data.input_shape[0], data.num_classes)
    state = init_state(cfg, model)
    assert state.round == 0  # no round run yet
    with pytest.raises(ValueError, match="cannot run round 0"):
        run_round(cfg, model, state, data, 0)
    obs = _Numbers()
    records = []
    for t in range(1, cfg.run.rounds + 1):
        state, rec = run_round(cfg, model, state, data, t, obs)
        assert state.round == t
        records.append(rec)
    assert [r[0] for r in obs.rounds] == [r[1] for r in obs.rounds] == [1, 2, 3]
    assert [r[2] for r in obs.rounds] == [False, True, False]  # PG-1 with t counted from 1
    assert [rec["round"] for rec in records] == [1, 2, 3]
    assert records[0]["lr"] == learning_rate(cfg, 1) == cfg.train.lr  # η_1 = η0 (LT-1)
    for t, _, _, clients in obs.rounds:
        for k in clients:
            n = int(data.parts[k].size)
            per_epoch = math.ceil(n / cfg.train.batch_size)
            taus = [(tau, ep) for (tt, c, tau, ep) in obs.steps if tt == t and c == k]
            assert taus == [(tau, tau // per_epoch) for tau in range(num_iterations(n, cfg))]
