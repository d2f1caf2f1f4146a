"""The recorder: an engine observer (:class:`refimpl.fl.observe.Observer`) that turns what the
real federated engine computes into the ordered steps of a conformance dump.

Steps, in execution order (docs/conformance.md has every key):

    inputs              the scenario's random draws and data (RNG-1), needed by another
                        implementation instead of a NumPy-compatible generator
    init                ERK counts (ERK-1/2) and the masked initial model (FL-1, MASK-3)
    r{t}_start          η_t, α_t, k_l and the marked set of round t (LT-1, PG-2/3, BAE-1)
    r{t}_c{k}_s{τ}      local iteration τ of client k: batch, Ŵ, layer outputs, SAP caches,
                        loss, λ/penalty/‖θ_Low‖, step size, gradients, parameters after the step
    r{t}_c{k}_grow      growth scores and uploaded pairs of client k (PG-5)
    r{t}_server         aggregate (AGG-1), averaged growth, prune/grow sets, new masks (PG-5..7)

The forward-pass quantities (Ŵ, layer outputs) are recomputed by the engine's own functions on
the step's parameters (:func:`refimpl.fl.nets.effective_model`, ``models.forward`` on prefixes
of the layer graph: top-level layers, residual blocks whole); the SAP caches are the very records
the tape holds (a block's first conv and its projection shortcut hold one shared cache, SAP-1,
recorded under both layers).
"""

from __future__ import annotations

import numpy as np

from .. import models, sap
from ..fl.nets import effective_model
from ..fl.observe import LocalStep, Observer
from ..models.graph import Conv, GlobalAvgPool, Linear, MaxPool, ReLU, ResidualBlock
from .quantities import QUANTITIES

__all__ = ["Step", "Recorder", "FORMAT_CODES"]

#: sap_format codes: the CACHE-1 formats, then the compat format of docs/DEVIATIONS.md
FORMAT_CODES = {"dense": 0, "bitmap": 1, "index": 2, "int32": 3}


class Step:
    """One step of a dump: a name, where it happened, and ordered ``key -> (array, class)``."""

    def __init__(self, name: str, kind: str, round: int | None = None,
                 client: int | None = None, tau: int | None = None):
        self.name, self.kind, self.round, self.client, self.tau = name, kind, round, client, tau
        self.arrays: dict[str, np.ndarray] = {}
        self.classes: dict[str, str] = {}

    def put(self, key: str, value, cls: str) -> None:
        if cls not in QUANTITIES:
            raise KeyError(f"unknown quantity class {cls!r}")
        if key in self.arrays:
            raise KeyError(f"step {self.name}: key {key!r} recorded twice")
        self.arrays[key] = np.array(value, copy=True, order="C")
        self.classes[key] = cls

    def entry(self, file: str) -> dict:
        return {"name": self.name, "file": file, "kind": self.kind, "round": self.round,
                "client": self.client, "tau": self.tau,
                "keys": [[k, c] for k, c in self.classes.items()]}


def _layer(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0]


def _kind(layer) -> str:
    return {Conv: "conv", Linear: "linear", ReLU: "relu", MaxPool: "maxpool",
            GlobalAvgPool: "gap", ResidualBlock: "block"}[type(layer)]


class Recorder(Observer):
    """Collects the steps of one run of the scenario (see the module docstring)."""

    def __init__(self, cfg, model: models.Model, data, state0):
        self.cfg, self.model, self.data = cfg, model, data
        self.prunable = model.prunable
        self._inputs = Step("inputs", "inputs")
        self._steps: list[Step] = []
        self._shuffles: dict[tuple[int, int, int], list[np.ndarray]] = {}
        self._grow_orders: dict[tuple[int, int], np.ndarray] = {}
        self._clients: dict[int, np.ndarray] = {}
        self._pending: dict | None = None
        self._marked: dict[int, list] = {}
        self._record_inputs(state0)

    # -- initial state ----------------------------------------------------------------------
    def _record_inputs(self, state0) -> None:
        d, s = self.data, self._inputs
        s.put("data/mean", d.mean, "in.data")
        s.put("data/std", d.std, "in.data")
        for k, part in enumerate(d.parts):
            s.put(f"data/c{k}/x_u8", d.x_train[part], "in.data")
            s.put(f"data/c{k}/y", d.y_train[part], "in.data")
        for name, v in self.model.params.items():
            s.put(f"init/param/{name}", v, "in.init_param")
        for name in self.prunable:
            s.put(f"init/mask/{_layer(name)}", state0.masks[name], "in.init_mask")
        init = Step("init", "init")
        init.put("erk_counts", np.array([int(state0.masks[n].sum()) for n in self.prunable],
                                        dtype=np.int64), "erk_counts")
        for name, v in state0.params.items():
            init.put(f"param/{name}", v, "init_param")
        self._steps.append(init)

    # -- observer hooks ---------------------------------------------------------------------
    def round_start(self, t, clients, plan, alpha) -> None:
        self._clients[t] = np.asarray(clients, dtype=np.int64)
        st = Step(f"r{t}_start", "round_start", round=t)
        st.put("lr", np.float64(plan.lr), "round_lr")
        if alpha is not None:
            st.put("alpha", np.float64(alpha), "alpha")
        if plan.grow_counts is not None:
            st.put("grow_counts", np.array(plan.grow_counts, dtype=np.int64), "grow_counts")
        if plan.marked is not None:
            self._marked[t] = plan.marked
            for name, idx in zip(self.prunable, plan.marked, strict=True):
                st.put(f"marked/{_layer(name)}", np.asarray(idx, dtype=np.int64), "marked")
        self._steps.append(st)

    def local_forward(self, t, client, tau, model, params, x, options, tape) -> None:
        masks = options.masks
        _, eff = effective_model(model, params, masks, self.cfg.model.nsconv_stats)
        w_hat = {layer.name: eff[f"{layer.name}.weight"] for layer in model.layers
                 if isinstance(layer, Conv) and layer.norm == "nsconv"}
        acts = []
        for i, layer in enumerate(model.layers):
            prefix = models.Model(model.name, model.layers[:i + 1], params,
                                  {k: v.copy() for k, v in model.buffers.items()})
            acts.append((f"{i:02d}_{_kind(layer)}",
                         models.forward(prefix, params, x, train=True, options=options)))
        inputs = self._layer_inputs(model, params, x, options, [a for _, a in acts])
        self._pending = {"key": (t, client, tau), "w_hat": w_hat, "acts": acts,
                         "sap": self._caches(tape, inputs)}

    @staticmethod
    def _layer_inputs(model, params, x, options, outs) -> list[np.ndarray]:
        """The input of each prunable layer, in prunable order (``models.iter_layers``): the
        previous top-level output, and inside a residual block the block input (its first body
        layer and its shortcut) or ``models.forward`` of the top-level prefix followed by the
        body's layers before it (the values the block computes: same functions, same order)."""
        res = []
        for i, layer in enumerate(model.layers):
            h = x if i == 0 else outs[i - 1]
            if isinstance(layer, (Conv, Linear)):
                res.append(h)
            elif isinstance(layer, ResidualBlock):
                for j, inner in enumerate(layer.body):
                    if isinstance(inner, (Conv, Linear)):
                        res.append(h if j == 0 else models.forward(
                            models.Model(model.name, model.layers[:i] + layer.body[:j], params,
                                         {k: v.copy() for k, v in model.buffers.items()}),
                            params, x, train=True, options=options))
                res += [h for inner in layer.shortcut if isinstance(inner, (Conv, Linear))]
        return res

    def _caches(self, tape, inputs) -> list[tuple[str, dict]]:
        """The SAP cache records the tape holds for every conv/linear input (SAP-1, CACHE-1),
        matched to the prunable layers in execution order."""
        nodes = [n for n in tape.nodes if n.prim.name in ("conv2d", "linear")]
        if len(nodes) != len(self.prunable):
            raise RuntimeError(f"recorder: {len(nodes)} conv/linear nodes on the tape, expected "
                               f"{len(self.prunable)} (one per prunable layer)")
        out = []
        for name, node, x_in in zip(self.prunable, nodes, inputs, strict=True):
            cache = getattr(node.res, "cache", None)
            if cache is None:
                raise RuntimeError(f"recorder: layer {name} holds no SAP cache; the scenario "
                                   f"needs SAP active (sap.gamma > 0 or a non-dense policy)")
            out.append((_layer(name), self._cache_arrays(cache, x_in)))
        return out

    @staticmethod
    def _cache_arrays(cache, x_in) -> dict:
        numel = cache.numel
        if cache.fmt == "bitmap":
            kept = np.flatnonzero(np.unpackbits(cache.bits, bitorder="little")[:numel])
            buf = {"bits": cache.bits, "values": cache.values}
        elif cache.fmt in ("index", "int32"):
            kept = cache.index.astype(np.int64)
            buf = {"index": cache.index, "values": cache.values}
        elif cache.fmt == "dense":  # x̂: zeros cannot tell kept from dropped, ask the selection
            kept = np.flatnonzero(sap.keep_mask(x_in, cache.n_keep)) \
                if cache.n_keep < numel else np.arange(numel)
            buf = {"values": cache.dense}
        else:
            raise RuntimeError(f"recorder: unknown cache format {cache.fmt!r}; known: "
                               f"{', '.join(FORMAT_CODES)}")
        return {"kept": kept.astype(np.int64), "format": np.uint8(FORMAT_CODES[cache.fmt]),
                **buf, "nbytes": np.int64(cache.nbytes)}

    def local_step(self, t, client, step: LocalStep) -> None:
        pend, self._pending = self._pending, None
        if pend is None or pend["key"] != (t, client, step.tau):
            raise RuntimeError(f"recorder: no forward recorded for round {t} client {client} "
                               f"step {step.tau}")
        self._shuffles.setdefault((t, client, step.epoch), []).append(step.batch)
        s = Step(f"r{t}_c{client}_s{step.tau}", "local", round=t, client=client, tau=step.tau)
        s.put("batch_index", step.batch, "batch_index")
        s.put("x", step.x, "batch_x")
        s.put("y", step.y, "batch_y")
        for layer, w in pend["w_hat"].items():
            s.put(f"w_hat/{layer}", w, "w_hat")
        for name, a in pend["acts"]:
            s.put(f"act/{name}", a, "act")
        for layer, arrs in pend["sap"]:
            s.put(f"sap/{layer}/kept", arrs["kept"], "sap_kept")
            s.put(f"sap/{layer}/format", arrs["format"], "sap_format")
            for buf in ("bits", "index"):
                if buf in arrs:
                    s.put(f"sap/{layer}/{buf}", arrs[buf], "sap_buffer")
            s.put(f"sap/{layer}/values", arrs["values"], "sap_values")
            s.put(f"sap/{layer}/nbytes", arrs["nbytes"], "sap_nbytes")
        s.put("loss", np.float64(step.loss), "loss")
        if step.penalty_grads is not None:
            s.put("marked_norm", np.float64(step.marked_norm), "marked_norm")
            s.put("lam", np.float64(step.lam), "lam")
            s.put("penalty", np.float64(step.penalty), "penalty")
        s.put("lr", np.float64(step.lr), "lr")
        for name, g in step.grads.items():
            s.put(f"grad/{name}", g, "grad")
        if step.penalty_grads is not None:
            for name, g in zip(self.prunable, step.penalty_grads, strict=True):
                s.put(f"penalty_grad/{_layer(name)}", g, "penalty_grad")
        for name, v in step.params.items():
            s.put(f"param/{name}", v, "param")
        self._steps.append(s)

    def growth(self, t, client, order, scores, pairs) -> None:
        self._grow_orders[(t, client)] = np.asarray(order, dtype=np.int64)
        s = Step(f"r{t}_c{client}_grow", "growth", round=t, client=client)
        s.put("grow_index", np.asarray(order[:self.cfg.train.batch_size], dtype=np.int64),
              "grow_index")
        for name in self.prunable:
            s.put(f"score/{_layer(name)}", scores[name], "grow_score")
        for name, (idx, val) in zip(self.prunable, pairs, strict=True):
            s.put(f"pair_index/{_layer(name)}", idx, "pair_index")
            s.put(f"pair_value/{_layer(name)}", val, "pair_value")
        self._steps.append(s)

    def aggregated(self, t, params, buffers) -> None:
        s = Step(f"r{t}_server", "server", round=t)
        for name, v in params.items():
            s.put(f"agg/{name}", v, "agg_param")
        self._steps.append(s)

    def adjusted(self, t, scores, report, params, masks) -> None:
        s = self._steps[-1]
        if s.name != f"r{t}_server":
            raise RuntimeError(f"recorder: adjustment of round {t} without its aggregate")
        for name, g in zip(self.prunable, scores, strict=True):
            s.put(f"growth_avg/{_layer(name)}", g, "growth_avg")
        for name, p, q in zip(self.prunable, report.pruned, report.grown, strict=True):
            s.put(f"prune/{_layer(name)}", p, "prune_set")
            s.put(f"grow/{_layer(name)}", q, "grow_set")
        for name in self.prunable:
            s.put(f"mask/{_layer(name)}", masks[name], "new_mask")
        for name, v in params.items():
            s.put(f"param/{name}", v, "new_param")

    # -- result -----------------------------------------------------------------------------
    def steps(self) -> list[Step]:
        """All steps, ``inputs`` first (its per-round draws are complete only now)."""
        s = self._inputs
        done = {k for k in s.arrays if k.startswith("r")}
        for t, clients in sorted(self._clients.items()):
            if f"r{t}/clients" in done:
                continue
            s.put(f"r{t}/clients", clients, "in.clients")
            for k in clients.tolist():
                epochs = sorted(e for (tt, kk, e) in self._shuffles if (tt, kk) == (t, k))
                for e in epochs:
                    s.put(f"r{t}/c{k}/shuffle/e{e}",
                          np.concatenate(self._shuffles[(t, k, e)]), "in.shuffle")
                if (t, k) in self._grow_orders:
                    s.put(f"r{t}/c{k}/grow_order", self._grow_orders[(t, k)], "in.grow_order")
        return [s] + self._steps
