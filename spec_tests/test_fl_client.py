# covers: LT-2, LT-3, MASK-3, BAE-1, BAE-2, BAE-3, PG-5, AGG-1, MEM-2, MEM-4, CONV-4, RNG-1
"""Clients and server pieces on the smoke data: local training, growth scores against central
differences, FedAvg independent of completion order, activation bytes against the ledger, and
the communication bytes."""

import math

import numpy as np
import pytest

from refimpl import functional as F
from refimpl import models
from refimpl.fl.client import RoundPlan, _batches, growth_scores, local_train, num_iterations
from refimpl.fl.config import load_config
from refimpl.fl.data import load_fed_data
from refimpl.fl.nets import effective_model, run_options
from refimpl.fl.server import aggregate, average_growth, bytes_down, bytes_up
from refimpl.fl.state import build_model, init_state
from refimpl.memory import ledger
from refimpl.sap import index_dtype
from refimpl.sparsity import marked_set


def setup(*sets):
    cfg = load_config("smoke", sets=list(sets))
    data = load_fed_data(cfg)
    model = build_model(cfg, data.input_shape[0], data.num_classes)
    return cfg, data, model, init_state(cfg, model)


@pytest.fixture(scope="module")
def smoke():
    return setup()


def test_batches_cover_each_epoch(smoke):
    """LT-2: each epoch is a permutation of the client's data in batches of B (last smaller),
    a function of (seed, round, client, epoch)."""
    cfg = load_config("smoke", sets=["train.local_epochs=3", "train.batch_size=7"])
    n = 30
    batches = list(_batches(cfg, 4, 1, n))
    assert len(batches) == num_iterations(n, cfg) == 3 * math.ceil(30 / 7)
    per_epoch = len(batches) // 3
    for e in range(3):
        ep = batches[e * per_epoch:(e + 1) * per_epoch]
        assert [len(b) for b in ep] == [7, 7, 7, 7, 2]
        assert sorted(np.concatenate(ep).tolist()) == list(range(n))
    assert not np.array_equal(batches[0], batches[per_epoch])
    again = list(_batches(cfg, 4, 1, n))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    other = list(_batches(cfg, 4, 2, n))
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other, strict=True))


def test_local_training_keeps_masks_and_budget(smoke):
    """LT-3 / MASK-3: T = E·ceil(n_k/B) steps; afterwards W == W ⊙ M exactly; BAE-3: an
    extrusion round runs the same T, and its penalty shrinks the marked set (BAE-2)."""
    cfg, data, model, st = smoke
    names = model.prunable
    masks = [st.masks[n] for n in names]
    marked = marked_set([st.params[n] for n in names], masks, [max(1, int(m.sum()) // 4)
                                                            for m in masks])
    k = 0
    plain = local_train(model, st.params, st.buffers, st.masks, data, k, RoundPlan(1, 0.1), cfg)
    ext = local_train(model, st.params, st.buffers, st.masks, data, k,
                      RoundPlan(1, 0.1, marked=marked), cfg)
    n = len(data.parts[k])
    assert plain.iterations == ext.iterations == num_iterations(n, cfg)
    for u in (plain, ext):
        for name in names:
            w = u.params[name]
            assert np.array_equal(w, w * st.masks[name])
            assert not np.any(w[~st.masks[name]])

    def low(u):
        return math.sqrt(sum(float(np.sum(u.params[nm].reshape(-1)[i].astype(np.float64) ** 2))
                             for nm, i in zip(names, marked, strict=True)))
    assert low(ext) < low(plain)
    assert ext.max_lr >= 0.1 and plain.max_lr == 0.1
    # the received global model is not modified by a client
    again = local_train(model, st.params, st.buffers, st.masks, data, k, RoundPlan(1, 0.1), cfg)
    assert all(np.array_equal(again.params[p], plain.params[p]) for p in plain.params)


@pytest.mark.parametrize("norm", ["nsconv", "bn", "none"])
def test_growth_scores_are_dense_effective_kernel_gradients(norm):
    """PG-5: the score is the CE gradient with respect to the effective kernel (Ŵ for NSConv,
    W ⊙ M otherwise) on the first batch of stream GROW, including inactive positions; checked by
    central differences in float64. The upload holds the k_l largest |score| among inactive
    positions, indices ascending (CONV-4)."""
    cfg, data, model, st = setup("run.dtype=float64", f"model.norm={norm}", "sap.gamma=0")
    names = model.prunable
    k_l = [min(3, int((~st.masks[n]).sum())) for n in names]
    plan = RoundPlan(1, 0.1, grow_counts=k_l)
    client = 1
    up = growth_scores(model, st.params, st.masks, data, client, plan, cfg)

    eff, eff_params = effective_model(model, st.params, st.masks, cfg.model.nsconv_stats)
    from refimpl.core.rng import Purpose, stream
    idx_all = data.parts[client]
    order = stream(cfg.run.seed, Purpose.GROW, 1, client).permutation(idx_all.size)
    idx = idx_all[order[:cfg.train.batch_size]]
    xb, yb = data.batch(data.x_train[idx]), data.y_train[idx]
    opts = models.RunOptions(masks=st.masks, nsconv_stats=cfg.model.nsconv_stats)
    same = models.forward(model, st.params, xb, train=True, options=opts)
    if norm == "bn":  # the reference pass moved the real buffers; restore them
        model.buffers.update({k: v.copy() for k, v in st.buffers.items()})
    got = models.forward(eff, eff_params, xb, train=True, options=run_options(cfg, None))
    np.testing.assert_allclose(got, same, rtol=1e-12, atol=1e-12)

    def loss(w_name, w):
        p = dict(eff_params)
        p[w_name] = w
        buf = {k: v.copy() for k, v in eff.buffers.items()}
        m = models.Model(eff.name, eff.layers, p, buf)
        return float(F.cross_entropy(models.forward(m, p, xb, train=True), yb))

    for name, (top, val), k in zip(names, up, k_l, strict=True):
        mask = st.masks[name].reshape(-1)
        assert top.size == k and np.all(np.diff(top) > 0) and not mask[top].any()
        for i, v in zip(top[:2], val[:2], strict=True):
            w = eff_params[name].copy()
            h = 1e-6
            w.reshape(-1)[i] += h
            fp = loss(name, w)
            w.reshape(-1)[i] -= 2 * h
            fm = loss(name, w)
            assert v == pytest.approx((fp - fm) / (2 * h), rel=1e-5, abs=1e-9)
        # the selected scores dominate every other inactive position's |score|
        others = np.setdiff1d(np.flatnonzero(~mask), top)
        if others.size and top.size:
            full = _full_scores(eff, eff_params, names, xb, yb, cfg)[name].reshape(-1)
            assert np.abs(val).min() >= np.abs(full[others]).max()


def _full_scores(eff, eff_params, names, xb, yb, cfg):
    from refimpl.core.autodiff import grad

    const = {k: v for k, v in eff_params.items() if k not in names}
    opts = run_options(cfg, None)
    return grad(lambda w: F.cross_entropy(
        models.forward(eff, {**const, **w}, xb, train=True, options=opts), yb))(
        {n: eff_params[n] for n in names})


def _updates(cfg, data, model, st, clients, grow=None):
    plan = RoundPlan(1, 0.1, grow_counts=grow)
    return [local_train(model, st.params, st.buffers, st.masks, data, k, plan, cfg)
            for k in clients]


@pytest.mark.parametrize("norm", ["nsconv", "bn"])
def test_aggregation_is_independent_of_completion_order(norm):
    """AGG-1: float64 accumulation in ascending client id, then cast and re-mask: any order of
    arrival gives the same bytes, equal to an explicit float64 reference."""
    cfg, data, model, st = setup(f"model.norm={norm}", "train.clients_per_round=4")
    ups = _updates(cfg, data, model, st, [0, 1, 2, 3])
    p0, b0 = aggregate(ups, st.masks)
    for perm in ([3, 1, 0, 2], [2, 3, 1, 0], [1, 0, 3, 2]):
        p, b = aggregate([ups[i] for i in perm], st.masks)
        for name in p0:
            assert p[name].tobytes() == p0[name].tobytes()
        for name in b0:
            assert b[name].tobytes() == b0[name].tobytes()
    total = sum(u.n for u in ups)
    for name, a in p0.items():
        ref = np.zeros(a.shape)
        for u in ups:
            ref += (u.n / total) * u.params[name].astype(np.float64)
        ref = ref.astype(a.dtype)
        if name in st.masks:
            ref *= st.masks[name]
        assert a.dtype == ups[0].params[name].dtype and np.array_equal(a, ref)
    if norm == "bn":
        assert b0 and any(not np.array_equal(b0[n], st.buffers[n]) for n in b0)


def test_aggregation_order_is_ascending_client_id_in_float64():
    """AGG-1 on values where the summation order shows: (1e16, 1, −1e16) summed in another
    order gives another float64. Every arrival order must give the ascending-id sum; masked
    positions come out 0 even if a client sent a value there."""
    from refimpl.fl.client import ClientUpdate

    vals = {0: [1e16, 5.0], 1: [1.0, 7.0], 2: [-1e16, 9.0]}

    def up(k):
        return ClientUpdate(k, 1, {"w": np.array(vals[k])}, {}, 0.0, 1, 0, 0.1)

    w = 1 / 3
    expect = (w * 1e16 + w * 1.0) + w * -1e16
    assert expect != (w * 1e16 + w * -1e16) + w * 1.0  # the order is visible
    mask = {"w": np.array([True, False])}
    for order in ([0, 1, 2], [2, 1, 0], [0, 2, 1], [1, 2, 0]):
        p, _ = aggregate([up(k) for k in order], mask)
        assert p["w"][0] == expect and p["w"][1] == 0.0
    p32, _ = aggregate([ClientUpdate(k, k + 1, {"w": np.array([0.1, 0.2], np.float32)}, {},
                                     0.0, 1, 0, 0.1) for k in range(3)], None)
    assert p32["w"].dtype == np.float32
    with pytest.raises(ValueError, match="duplicate client"):
        aggregate([up(0), up(0)], None)


def test_growth_average_weights():
    """PG-5 on the server: scattered pairs weighted n_k/Σn, missing entries 0, any order."""
    from refimpl.fl.client import ClientUpdate

    def up(client, n, idx, val):
        return ClientUpdate(client, n, {}, {}, 0.0, 1, 0, 0.1,
                            [(np.array(idx), np.array(val, np.float32))])

    ups = [up(2, 30, [0, 5], [1.0, -2.0]), up(0, 10, [5, 7], [4.0, 8.0])]
    g = average_growth(ups, [(2, 4)])[0].reshape(-1)
    expect = np.zeros(8)
    expect[[0, 5]] += 0.75 * np.array([1.0, -2.0])
    expect[[5, 7]] += 0.25 * np.array([4.0, 8.0])
    assert np.array_equal(g, expect)
    assert np.array_equal(average_growth(ups[::-1], [(2, 4)])[0].reshape(-1), g)


def test_activation_bytes_equal_the_ledger():
    """MEM-2: the tape's residual bytes after a client's first forward equal the ledger's
    activation cache for the same model, batch, density, γ, policy and dtype."""
    for sets in ([], ["sap.gamma=0.5", "sap.cache_policy=index"], ["sap.gamma=0"],
                 ["model.norm=bn", "run.method=prune_grow"]):
        cfg, data, model, st = setup(*sets)
        for k in range(2):
            u = local_train(model, st.params, st.buffers, st.masks, data, k, RoundPlan(1, 0.1),
                            cfg)
            batch = min(cfg.train.batch_size, len(data.parts[k]))
            led = ledger(model, data.input_shape, batch, density=cfg.sparse.density,
                         density_kind=cfg.sparse.density_kind, gamma=cfg.sap.gamma,
                         policy=cfg.sap.cache_policy, dtype=np.dtype(cfg.run.dtype),
                         nsconv_stats=cfg.model.nsconv_stats)
            assert u.activation_bytes == led.totals["activation_cache"], sets


def test_communication_bytes(smoke):
    """MEM-4: down = nonzero values + dense tensors (+ mask bitmaps when the client lacks the
    mask); up = the same without bitmaps, plus (index, value) growth pairs; equal to the
    ledger's per-client figures."""
    cfg, data, model, st = smoke
    names = model.prunable
    s = 4
    values = sum(int(st.masks[n].sum()) * s for n in names)
    dense = sum(a.nbytes for k, a in st.params.items() if k not in names)
    bitmaps = sum(math.ceil(st.masks[n].size / 8) for n in names)
    assert bytes_down(st.params, st.buffers, st.masks, False) == values + dense
    assert bytes_down(st.params, st.buffers, st.masks, True) == values + dense + bitmaps
    k_l = [min(2, int((~st.masks[n]).sum())) for n in names]
    (u,) = _updates(cfg, data, model, st, [0], grow=k_l)
    shapes = {n: st.params[n].shape for n in names}
    pairs = sum(k * (index_dtype(st.masks[n].size).itemsize + s)
                for n, k in zip(names, k_l, strict=True))
    assert bytes_up(u, st.masks, shapes) == values + dense + pairs
    led = ledger(model, data.input_shape, 16, density=cfg.sparse.density)
    assert led.communication["down"] == values + dense
    assert led.communication["down_mask_changed"] == values + dense + bitmaps
