"""One round of the demo preset: refimpl's fedmef round against a PyTorch twin of its local
training, in the same process with explicit thread counts.

The twin trains the same clients on the same batches (RNG-1 shuffle streams), for the same T
iterations, with the same learning rate, starting from the same initial weights, through the
same layer graph (NSConv as weight standardisation in torch), but dense: no masks, no SAP, no
BaE. refimpl is timed twice: as configured (sparse, SAP, BaE when the round extrudes) and as the
twin's dense equivalent (density 1, γ 0), so the ratio separates the engine from the method.
Nothing is asserted; the ratios are printed.

    .venv/bin/python benchmarks/round.py [--threads 2] [--round 1] [--repeats 5] [--set k=v ...]
"""

from __future__ import annotations

import argparse

from _common import Figure, paired, ratio, set_threads

from refimpl.fl.client import RoundPlan, _batches, local_train
from refimpl.fl.config import load_config
from refimpl.fl.data import load_fed_data
from refimpl.fl.engine import run_round, should_evaluate
from refimpl.fl.schedule import is_extrusion, learning_rate
from refimpl.fl.server import sample_clients
from refimpl.fl.state import GlobalState, build_model, init_state
from refimpl.functional import NSCONV_EPS
from refimpl.models.graph import Conv, GlobalAvgPool, Linear, MaxPool, ReLU, ResidualBlock


def torch_forward(torch, layers, p, x):
    """The layer graph of refimpl.models.graph in torch.nn.functional (NSConv: NSC-1, dense
    mask)."""
    tf = torch.nn.functional
    for layer in layers:
        if isinstance(layer, Conv):
            w = p[f"{layer.name}.weight"]
            if layer.norm == "nsconv":
                o = w.shape[0]
                fan = w[0].numel()
                c = w - w.reshape(o, -1).mean(dim=1).reshape(o, 1, 1, 1)
                v = (c.reshape(o, -1) ** 2).sum(dim=1) / max(fan - 1, 1) * fan
                r = torch.sqrt(torch.clamp(v, min=NSCONV_EPS))
                w = p[f"{layer.name}.gain"].reshape(o, 1, 1, 1) * c / r.reshape(o, 1, 1, 1)
            x = tf.conv2d(x, w, p.get(f"{layer.name}.bias"), stride=layer.stride,
                          padding=layer.padding, groups=layer.groups)
            if layer.norm == "bn":
                x = tf.batch_norm(x, None, None, p[f"{layer.name}.bn.weight"],
                                  p[f"{layer.name}.bn.bias"], training=True)
        elif isinstance(layer, Linear):
            x = tf.linear(x, p[f"{layer.name}.weight"], p.get(f"{layer.name}.bias"))
        elif isinstance(layer, ReLU):
            x = tf.relu(x)
        elif isinstance(layer, MaxPool):
            x = tf.max_pool2d(x, layer.kernel, layer.stride)
        elif isinstance(layer, GlobalAvgPool):
            x = x.mean(dim=(2, 3))
        elif isinstance(layer, ResidualBlock):
            body = torch_forward(torch, layer.body, p, x)
            short = torch_forward(torch, layer.shortcut, p, x) if layer.shortcut else x
            x = tf.relu(body + short) if layer.relu else body + short
        else:
            raise TypeError(f"no torch twin for {layer!r}")
    return x


def torch_round(torch, cfg, model, params, data, clients, t):
    """The twin's local training of every client of round t (LT-1..LT-3, dense)."""
    lr = learning_rate(cfg, t)
    for k in clients:
        p = {n: torch.tensor(a, requires_grad=True) for n, a in params.items()}
        idx_all = data.parts[int(k)]
        for order in _batches(cfg, t, int(k), idx_all.size):
            idx = idx_all[order]
            x = torch.from_numpy(data.batch(data.x_train[idx]))
            y = torch.from_numpy(data.y_train[idx])
            loss = torch.nn.functional.cross_entropy(torch_forward(torch, model.layers, p, x), y)
            grads = torch.autograd.grad(loss, list(p.values()))
            with torch.no_grad():
                for v, g in zip(p.values(), grads, strict=True):
                    v -= lr * g


class _Round:
    """The timed work of round t: the configured round, and refimpl's dense local training of
    the same clients (the twin's work), both ready to run."""

    def __init__(self, t: int, preset: str, sets):
        sets = list(sets)
        self.t = t
        self.cfg = cfg = load_config(preset, sets=sets)
        self.dense_cfg = load_config(preset, sets=sets + [
            "run.method=fedavg", "sparse.density=1", "bae.enabled=false", "sap.gamma=0"])
        self.data = load_fed_data(cfg)
        self.model = build_model(cfg, self.data.input_shape[0], self.data.num_classes)
        state = init_state(cfg, self.model)
        self.state = GlobalState(t - 1, state.params, state.buffers, state.masks,
                                 state.mask_version, state.client_mask_version)
        self.clients = sample_clients(cfg.run.seed, t, cfg.data.num_clients,
                                      cfg.train.clients_per_round)
        self.dense_params = {n: a.copy() for n, a in self.model.params.items()}
        self.plan = RoundPlan(t, learning_rate(cfg, t))

    def round(self):
        run_round(self.cfg, self.model, self.state, self.data, self.t)

    def dense(self):
        for k in self.clients:
            local_train(self.model, self.dense_params, self.model.buffers, None, self.data,
                        int(k), self.plan, self.dense_cfg)


def measure(threads: int, repeats: int = 5, t: int = 1, preset: str = "demo", sets=()) -> dict:
    """Figures at ``threads`` threads: per repeat the full round, refimpl's dense local training
    and the PyTorch twin, back to back; ratios to the twin per repeat."""
    _keep, info = set_threads(threads)
    import torch

    w = _Round(t, preset, sets)
    cfg, data, clients = w.cfg, w.data, w.clients
    iters = sum(-(-len(data.parts[int(k)]) // cfg.train.batch_size) * cfg.train.local_epochs
                for k in clients)
    # one warm-up run each (compiles or loads every kernel both paths use), then paired repeats
    times = paired({"round": w.round, "dense": w.dense,
                    "torch": lambda: torch_round(torch, cfg, w.model, w.dense_params, data,
                                                 clients, t)},
                   repeats=repeats, inner=1)
    what = (f"{cfg.run.method} (density {cfg.sparse.density:g}, SAP γ {cfg.sap.gamma:g}, BaE "
            f"{'extruding' if is_extrusion(cfg, t) else 'idle'} this round)")
    return {"info": info, "threads": threads, "torch": torch.__version__, "round": t,
            "clients": len(clients), "iterations": iters, "batch": cfg.train.batch_size,
            "model": f"{cfg.model.name}/{cfg.model.norm}", "what": what,
            "evaluates": should_evaluate(cfg, t),
            "ratio_round": ratio(times, "round", "torch"),
            "ratio_dense": ratio(times, "dense", "torch"),
            "torch_s": Figure(times["torch"]), "dense_s": Figure(times["dense"]),
            "round_s": Figure(times["round"])}


def measure_alone(threads: int, repeats: int = 5, t: int = 1, preset: str = "demo",
                  sets=()) -> dict:
    """refimpl's round and dense local training timed in a process that never loads PyTorch, as a
    user runs them (Numba on OpenMP with passive waits; with PyTorch loaded first, refimpl uses
    Numba's workqueue layer instead: refimpl/core/_jit.py). Seconds per
    repeat."""
    _keep, _ = set_threads(threads)
    w = _Round(t, preset, sets)
    times = paired({"round": w.round, "dense": w.dense}, repeats=repeats, inner=1)
    return {"round_s": times["round"], "dense_s": times["dense"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--round", type=int, default=1, help="round t to time (1..R)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--alone-json", action="store_true",
                    help="time refimpl only (this process must not load PyTorch; run with "
                    "REFIMPL_BENCH_NO_TORCH=1) and print the seconds as JSON")
    args = ap.parse_args(argv)
    if args.alone_json:
        import json

        print(json.dumps(measure_alone(args.threads, args.repeats, args.round, args.preset,
                                       args.set)))
        return
    r = measure(args.threads, args.repeats, args.round, args.preset, args.set)
    print(f"{args.preset} round t={r['round']}: {r['clients']} clients, {r['iterations']} local "
          f"iterations (B={r['batch']}), model {r['model']}; torch {r['torch']}; {r['info']}; "
          f"median (min..max) of {args.repeats} repeats")
    print(f"  {'pytorch twin, dense local training':<52}{r['torch_s'].fmt(digits=3)} s")
    print(f"  {'refimpl dense local training (same work)':<52}{r['dense_s'].fmt(digits=3)} s"
          f"   ratio {r['ratio_dense'].fmt()}")
    print(f"  {'refimpl full round: ' + r['what']:<52}{r['round_s'].fmt(digits=3)} s"
          f"   ratio {r['ratio_round'].fmt()}")
    if r["evaluates"]:
        print("  (the full round includes the test-set evaluation of this round)")
    print(f"ratio refimpl round / pytorch twin: {r['ratio_round'].median:.2f}")


if __name__ == "__main__":
    main()
