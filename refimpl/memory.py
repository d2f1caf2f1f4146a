"""The analytic memory ledger (SPEC §5: MEM-1..MEM-6).

:func:`ledger` runs the model's own forward (``refimpl.models.forward``, the interpreter the
engine trains with) on a *dry tape* (:class:`refimpl.core.tape.Tape` with ``dry=True``): every
primitive's ``plan`` states, from shapes alone, the residual record its ``fwd`` would keep and
the workspace its kernels need. Nothing is computed. The ledger then only sums and replays:

- **activation cache** (MEM-1, MEM-2): the distinct residual buffers the dry tape holds after
  the forward and the loss, counted by the tape's own rule (TAPE-3), per layer (the tape scope
  each layer runs in) and per category (each record field names its category):

    category             held by                              bytes (s = itemsize)
    input_cache          conv2d / linear input (SAP cache)    sap.format_nbytes(fmt, numel, k, s)
    standardised_kernel  NSConv Ŵ, kept by its conv for dx    nnz · s (C_out·fan_in · s when the
                                                              layer is dense); none for a conv
                                                              whose input is the data batch
    nsconv_scale         NSConv r (C_out,) and flags          C_out · s + C_out
    bn                   BatchNorm x̂ and 1/std                numel(out) · s + C_out · s
    relu_bitmap          ReLU (out > 0), packed               ceil(numel / 8)
    maxpool_argmax       max-pool argmax in window, uint8     numel(out)
    loss                 cross-entropy probabilities, labels  N · classes · s + N · 8

- **model side** (MEM-1, MEM-3) per prunable layer with N_l entries, n_l nonzeros (ERK-2), P_l
  other parameters (bias, NSConv gain, BatchNorm weight and bias), B_l buffers (BatchNorm
  running statistics):

    weights_dense    (N_l + P_l + B_l) · s
    weights_sparse   n_l · s + ceil(N_l / 8) + (P_l + B_l) · s   (values + mask bitmap)
    masks            N_l bytes: the bool mask arrays this implementation holds
    gradients        (n_l + P_l) · s   (MASK-3: masked entries carry no gradient)
    optimizer_state  gradients when momentum is on, else 0 (plain SGD keeps no state)

- **the training peak** (MEM-5, :func:`liveness`): one training step replayed as a timeline of
  buffers from the same dry tape, forward then backward, with the always-live state (sparse
  weights with their mask bitmaps, gradients, optimizer state, the data batch). ``training_peak``
  is its maximum, reported with the event where it occurs and the buffers live there.

Totals: footprint = weights_sparse + activation_cache (the paper's measure, MEM-3);
footprint_with_gradients = footprint + gradients + optimizer_state (a sum, not a peak);
training_peak = the MEM-5 maximum. :func:`measure_step` gives MEM-6, what this Python
implementation allocates for one step (tracemalloc), reported beside it, never claimed equal.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from . import functional as F
from . import models
from .core.tape import Spec, Tape, Var, scope
from .kernels.masked_conv import WeightMask
from .sap import SapPolicy, exact_gamma, index_dtype
from .sparsity import KINDS, exact_fraction, layer_counts

__all__ = ["CATEGORIES", "SCHEMA_VERSION", "Ledger", "ledger", "dry_trace", "liveness",
           "communication", "largest_batch", "parse_shape", "measure_step"]

SCHEMA_VERSION = 2
CATEGORIES = ("input_cache", "standardised_kernel", "nsconv_scale", "bn", "relu_bitmap",
              "maxpool_argmax", "loss")
_PARAM_KEYS = ("weights_dense", "weights_sparse", "masks", "gradients", "gradients_dense",
               "optimizer_state", "optimizer_state_dense")
_KINDS = {"conv2d": "conv", "linear": "linear", "relu": "relu", "max_pool2d": "maxpool",
          "global_avg_pool2d": "avgpool", "avg_pool2d": "avgpool", "add": "add",
          "cross_entropy": "loss", "batch_norm": "bn", "reshape": "reshape"}


@dataclass
class Ledger:
    """A ledger: ``config`` (the inputs), ``layers`` (one dict per layer scope, execution
    order), ``totals`` (int bytes), ``activation_by_category`` (int bytes), ``counts``
    (parameter and nonzero counts), ``communication`` (MEM-4, int bytes per client per round)
    and ``timeline`` (MEM-5: events, buffers, the peak). :meth:`to_json` gives the stable
    schema documented in docs/memory.md."""

    config: dict
    layers: list[dict]
    totals: dict[str, int]
    activation_by_category: dict[str, int]
    counts: dict[str, int]
    communication: dict[str, int] = field(default_factory=dict)
    timeline: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"schema": "fedmef.memory", "schema_version": SCHEMA_VERSION,
                "config": self.config, "totals": self.totals,
                "activation_by_category": self.activation_by_category, "counts": self.counts,
                "communication": self.communication, "layers": self.layers,
                "timeline": self.timeline}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3x32x32"`` -> (3, 32, 32)."""
    try:
        shape = tuple(int(p) for p in str(text).lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input shape must be CxHxW with positive ints, e.g. 3x32x32; received "
                         f"{text!r}")
    return shape


def _model(model, input_shape, num_classes, norm, width, dtype):
    if isinstance(model, str):
        dt = np.dtype(np.float32 if dtype is None else dtype)
        return models.build(model, input_shape[0], num_classes, norm=norm, width=width, dtype=dt)
    if not isinstance(model, models.Model):
        raise TypeError(f"ledger: model must be a refimpl.models.Model or a zoo name "
                        f"({models.names()}), received {type(model).__name__}")
    return model


# ---- the dry trace ---------------------------------------------------------------------------
@dataclass
class DryTrace:
    """A dry forward (and loss) of one training step: the tape, the data batch's Specs, the
    output Var the backward starts from."""

    tape: Tape
    x: Spec
    y: Spec | None
    out: Var


def dry_trace(model: models.Model, input_shape, batch: int, *, masks=None, sap=None,
              nsconv_stats="dense", loss=True, dtype=None) -> DryTrace:
    """``models.forward`` (and the cross-entropy when ``loss``) of a batch of ``batch`` inputs
    of ``input_shape`` on a dry tape whose leaves are the model's parameters (as Specs of
    ``dtype``). ``masks``: prunable name -> WeightMask (``WeightMask.counts`` suffices)."""
    dt = np.dtype(dtype) if dtype is not None else next(iter(model.params.values())).dtype
    tape = Tape(dry=True)
    params = {k: tape.leaf(Spec(v.shape, dt)) for k, v in model.params.items()}
    x = Spec((int(batch),) + tuple(input_shape), dt)
    opts = models.RunOptions(masks=masks, nsconv_stats=nsconv_stats, sap=sap)
    try:
        out = models.forward(model, params, x, True, opts)
    except ValueError as e:
        side = _smallest_input(model, input_shape[0])
        shape = "x".join(map(str, input_shape))
        if side is None:  # no size fits these channels
            raise ValueError(f"input {shape} does not fit model {model.name} (C x H x W: check "
                             f"the number of channels): {e}") from None
        raise ValueError(f"input {shape} is too small for model {model.name}: {e}; it needs "
                         f"height and width >= {side}") from None
    y = None
    if loss:
        if out.ndim != 2:
            raise ValueError(f"ledger: the model ends in shape {out.shape}, expected (N, classes)")
        y = Spec((int(batch),), np.int64)
        with scope("loss"):
            out = F.cross_entropy(out, np.zeros(int(batch), dtype=np.int64))
    return DryTrace(tape, x, y, out)


def _smallest_input(model: models.Model, channels: int) -> int | None:
    """The smallest side s such that a (channels, s, s) input runs through ``model`` (a dry
    trace: the output size grows with the input, so doubling then bisection finds it), or
    None (no size fits: e.g. the wrong number of channels)."""
    def fits(s):
        tape = Tape(dry=True)
        params = {k: tape.leaf(Spec(v.shape, v.dtype)) for k, v in model.params.items()}
        try:
            models.forward(model, params, Spec((1, channels, s, s), np.float32), True)
        except (ValueError, TypeError):
            return False
        return True

    lo, hi = 0, 1  # invariant: not fits(lo) (0 never fits), fits(hi) once found
    while not fits(hi):
        lo, hi = hi, hi * 2
        if hi > 1 << 16:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


# ---- layer rows (MEM-1) ----------------------------------------------------------------------
def _row(name, kind, in_shape, out_shape, norm):
    r = {"name": name, "kind": kind, "input_shape": list(in_shape),
         "output_shape": list(out_shape), "norm": norm, "params": 0, "prunable": 0, "nnz": 0}
    r.update({k: 0 for k in _PARAM_KEYS})
    r.update({"cache_format": None, "cache_numel": 0, "cache_keep": 0,
              "cache_shared_with": None, "activation": {c: 0 for c in CATEGORIES}})
    return r


def _main_node(nodes):
    for n in nodes:
        if n.prim.name in ("conv2d", "linear"):
            return n
    return nodes[0]


def _rows(trace: DryTrace, model: models.Model, itemsize: int, nnz: dict, momentum: bool,
          sparse: bool) -> list[dict]:
    tape = trace.tape
    by_scope: dict[str, list] = {}
    for node in tape.nodes:
        by_scope.setdefault(node.scope, []).append(node)
    layers = {layer.name: layer for layer in models.iter_layers(model.layers)
              if isinstance(layer, (models.Conv, models.Linear))}
    rows, seen_cache = {}, {}
    for name, nodes in by_scope.items():
        main = _main_node(nodes)
        kind = _KINDS.get(main.prim.name, main.prim.name)
        x_spec = tape._shapes[main.inputs[0]] if main.inputs[0] is not None else None
        in_shape = x_spec[0] if x_spec is not None else trace.x.shape
        out_shape = tape._shapes[nodes[-1].out][0]
        layer = layers.get(name)
        if kind == "conv" and layer.groups > 1 and layer.groups == layer.in_ch:
            kind = "dwconv"
        r = _row(name, kind, in_shape, out_shape, getattr(layer, "norm", None))
        if main.prim.name in ("conv2d", "linear") and main.res is not None:
            res = main.res
            held = res.cache if res.cache is not None else res.x
            if res.cache is not None:
                r.update(cache_format=res.cache.fmt, cache_numel=res.cache.numel,
                         cache_keep=res.cache.n_keep)
            elif res.x is not None:
                r.update(cache_format="dense", cache_numel=res.x.size, cache_keep=res.x.size)
            if held is not None:  # one record (or the input itself) kept by two layers: SAP-1
                first = seen_cache.setdefault(id(held), name)
                if first != name:
                    r["cache_shared_with"] = first
        if layer is not None:
            _params_of(r, model, name, itemsize, nnz, momentum, sparse)
        rows[name] = r
    for i, _, path, buf in tape.residual_buffers():
        node = tape.nodes[i]
        rows[node.scope]["activation"][node.res.category_of(path)] += buf.nbytes
    return list(rows.values())


def _params_of(r, model, name, s, nnz, momentum, sparse):
    """The model-side categories of layer ``name`` (MEM-1)."""
    wname = f"{name}.weight"
    n = int(np.prod(model.params[wname].shape))
    other = sum(int(v.size) for k, v in model.params.items()
                if k.startswith(f"{name}.") and k != wname)
    buffers = sum(int(v.size) for k, v in model.buffers.items() if k.startswith(f"{name}."))
    k = nnz.get(wname, n)
    r.update(params=n + other, prunable=n, nnz=k)
    r["weights_dense"] = (n + other + buffers) * s
    r["weights_sparse"] = (k * s + (n + 7) // 8 if sparse else n * s) + (other + buffers) * s
    r["masks"] = n if sparse else 0
    r["gradients"] = (k + other) * s
    r["gradients_dense"] = (n + other) * s
    r["optimizer_state"] = r["gradients"] if momentum else 0
    r["optimizer_state_dense"] = r["gradients_dense"] if momentum else 0


def _activation_by_scope(trace: DryTrace) -> dict[str, int]:
    out: dict[str, int] = {}
    for i, _, _, buf in trace.tape.residual_buffers():
        scope_name = trace.tape.nodes[i].scope
        out[scope_name] = out.get(scope_name, 0) + buf.nbytes
    return out


# ---- the liveness timeline (MEM-5) -----------------------------------------------------------
def liveness(trace: DryTrace, persistent: dict[str, int]) -> dict:
    """Replay one training step of ``trace`` as a timeline of buffers (MEM-5).

    Events: one per forward node (``fwd``), then one per vjp in reverse order (``bwd``).
    Buffers and their lifetimes (both ends inclusive, in event indices):

    - ``output``: a node's output, from its event to its last forward use, or longer when a
      residual holds it (then until that holder's vjp); the step's final output until the
      backward starts. A reshape's output is its input's buffer (a view).
    - ``residual``: a buffer of a residual record that is not an output, a parameter or the
      data batch, from its node's event to the vjp of the last record holding it.
    - ``cotangent``: the gradient of an intermediate value, from the vjp that first produces
      it (later contributions accumulate into it) to the vjp that consumes it; the seed of the
      backward from the first backward event. Parameter gradients are always live.
    - ``workspace``: a kernel's temporaries (the plan's fwd/vjp workspace), during its event.

    ``persistent``: name -> bytes always live (sparse weights, gradients, optimizer state, the
    data batch). Returns a dict with ``events`` (each with the live bytes during it), ``buffers``
    (each: name, kind, bytes, born, died, ``op`` the primitive of the node it belongs to (for a
    cotangent: the node that produced the value), ``dtype`` its element type, None for a
    workspace) and the ``peak`` (bytes, event, and the buffers live there).
    """
    tape = trace.tape
    nodes = tape.nodes
    n = len(nodes)
    leaves = {vid for vid in range(tape._next_id) if tape.is_leaf(vid)}
    producer = {node.out: i for i, node in enumerate(nodes)}
    # the backward's order: nodes reached from the seed, in reverse
    has_ct, order = {trace.out.id}, []
    for i in range(n - 1, -1, -1):
        if nodes[i].out in has_ct:
            order.append(i)
            has_ct.update(v for v, need in zip(nodes[i].inputs, nodes[i].needs) if need)
    bwd_event = {i: n + k for k, i in enumerate(order)}
    events = [{"index": i, "phase": "fwd", "scope": node.scope, "op": node.prim.name}
              for i, node in enumerate(nodes)]
    events += [{"index": n + k, "phase": "bwd", "scope": nodes[i].scope, "op": nodes[i].prim.name}
               for k, i in enumerate(order)]
    last = len(events) - 1

    buffers: list[dict] = []

    def add(name, kind, nbytes, born, died, op, dtype=None):
        buffers.append({"name": name, "kind": kind, "bytes": int(nbytes), "born": born,
                        "died": died, "op": op,
                        "dtype": None if dtype is None else np.dtype(dtype).name})
        return buffers[-1]

    # outputs (a reshape's output aliases its input buffer)
    owner = {}  # var id -> output buffer
    value_id = {}  # id(Spec) of a var's value -> var id
    for i, node in enumerate(nodes):
        value_id[id(node.plan.out)] = node.out
        src = node.inputs[0]
        if node.prim.name == "reshape" and src in owner:
            owner[node.out] = owner[src]
            continue
        owner[node.out] = add(f"{node.scope}/{node.prim.name}:out", "output",
                              node.plan.out.nbytes, i, i, node.prim.name, node.plan.out.dtype)
    for i, node in enumerate(nodes):  # forward uses extend an output's life
        for v in node.inputs:
            if v in owner:
                owner[v]["died"] = max(owner[v]["died"], i)
    seed = owner[trace.out.id]
    seed["died"] = max(seed["died"], bwd_event.get(producer[trace.out.id], n - 1) if order
                       else n - 1)
    # residual buffers (by identity of their Spec objects; the tape's counting rule)
    residual: dict[int, dict] = {}
    data_ids = {id(trace.x)} | ({id(trace.y)} if trace.y is not None else set())
    for i, node in enumerate(nodes):
        if node.res is None:
            continue
        release = bwd_event.get(i, last)
        for path, buf in node.res.arrays():
            top = path.split(".", 1)[0]
            if top in node.res.operands:
                vid = node.inputs[node.res.operands[top]]
                if vid is None or vid in leaves:
                    continue  # a parameter or a constant: the caller's memory
            if id(buf) in data_ids:
                continue
            if id(buf) in value_id:  # an output kept by this record
                o = owner[value_id[id(buf)]]
                o["died"] = max(o["died"], release)
                continue
            b = residual.get(id(buf))
            if b is None:
                residual[id(buf)] = add(f"{node.scope}/{node.prim.name}:{path}", "residual",
                                        buf.nbytes, i, release, node.prim.name, buf.dtype)
            else:
                b["died"] = max(b["died"], release)
    # workspace
    for i, node in enumerate(nodes):
        for name, nbytes in node.plan.fwd_workspace.items():
            add(f"{node.scope}/{node.prim.name}:{name}", "workspace", nbytes, i, i,
                node.prim.name)
        if i in bwd_event:
            e = bwd_event[i]
            for name, nbytes in node.plan.vjp_workspace.items():
                add(f"{node.scope}/{node.prim.name}.vjp:{name}", "workspace", nbytes, e, e,
                    node.prim.name)
    # cotangents
    ct = {}
    if order:
        seed = nodes[producer[trace.out.id]]
        ct[trace.out.id] = add(f"{seed.scope}:grad", "cotangent", trace.out.value.nbytes, n, n,
                               seed.prim.name, trace.out.value.dtype)
    for i in order:
        node, e = nodes[i], bwd_event[i]
        mine = ct.get(node.out)
        if mine is not None:
            mine["died"] = max(mine["died"], e)
        for v, need in zip(node.inputs, node.needs):
            if not need or v in leaves:
                continue
            if node.prim.name == "reshape" and mine is not None:
                ct[v] = mine  # a view of the output's cotangent
                continue
            if v not in ct:
                spec = tape._shapes[v]
                ct[v] = add(f"{nodes[producer[v]].scope}:grad", "cotangent",
                            math.prod(spec[0]) * np.dtype(spec[1]).itemsize, e, e,
                            nodes[producer[v]].prim.name, spec[1])
    base = sum(persistent.values())
    live = [base] * len(events)
    for b in buffers:
        for e in range(b["born"], b["died"] + 1):
            live[e] += b["bytes"]
    for ev, v in zip(events, live):
        ev["live"] = v
    peak_at = int(np.argmax(live))
    at_peak = [b for b in buffers if b["born"] <= peak_at <= b["died"]]
    return {"events": events, "buffers": buffers, "persistent": dict(persistent),
            "peak": {"bytes": live[peak_at], "event": events[peak_at],
                     "live": [{"name": k, "kind": "persistent", "bytes": v}
                              for k, v in persistent.items()]
                     + sorted(({"name": b["name"], "kind": b["kind"], "bytes": b["bytes"]}
                               for b in at_peak), key=lambda b: -b["bytes"])}}


# ---- the ledger ------------------------------------------------------------------------------
def _validate(batch, input_shape, density, density_kind, nsconv_stats, num_classes):
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"ledger: batch must be an int >= 1, received {batch!r}")
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(f"ledger: input_shape must be (C, H, W) of positive ints, received "
                         f"{input_shape}")
    d = exact_fraction(density)
    if not 0 < d <= 1:
        raise ValueError(f"ledger: density must lie in (0, 1], received {density!r}; 1 is a "
                         f"dense model, 0.1 keeps 10% of the prunable weights")
    if density_kind not in KINDS:
        raise ValueError(f"ledger: unknown density_kind {density_kind!r}; valid: {KINDS}")
    if nsconv_stats not in ("dense", "masked"):
        raise ValueError(f"ledger: nsconv_stats must be 'dense' or 'masked', received "
                         f"{nsconv_stats!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"ledger: num_classes must be an int >= 1, received {num_classes!r}")
    return input_shape, d


def ledger(model, input_shape, batch, *, density=1.0, density_kind="erk", gamma=0.0,
           policy="auto", dtype=None, momentum=False, nsconv_stats="dense", num_classes=10,
           norm="nsconv", width=1.0, loss=True, alpha_t=0.3) -> Ledger:
    """The analytic ledger of one training step (MEM-1, MEM-3, MEM-4, MEM-5).

    model: a built ``refimpl.models.Model`` or a zoo name (built with in_channels =
    input_shape[0], ``num_classes``, ``norm``, ``width``). input_shape (C, H, W); batch N >= 1.
    density d in (0, 1] and density_kind (ERK-1/2) give the per-layer nonzeros; gamma γ ∈ [0, 1)
    and policy (dense | bitmap | index | auto) the SAP caches, as ``SapPolicy.make(gamma,
    policy)`` sets them for a run. dtype: float32 | float64 (None: the model's, float32 for a
    name). momentum: SGD momentum buffers on. nsconv_stats: NSC-1/NSC-2 (same sizes). loss:
    include the cross-entropy (a training step computes it; False for a bare forward, whose
    backward then starts from the logits). alpha_t: α_t of the adjustment round for the growth
    pairs of MEM-4 (default 0.3, the paper's α, an upper bound on every round's α_t).
    """
    input_shape, d = _validate(batch, input_shape, density, density_kind, nsconv_stats,
                               num_classes)
    sap = SapPolicy.make(gamma, policy)
    m = _model(model, input_shape, num_classes, norm, width, dtype)
    dt = np.dtype(dtype) if dtype is not None else next(iter(m.params.values())).dtype
    if dt not in (np.float32, np.float64):
        raise ValueError(f"ledger: dtype must be float32 or float64, received {dt}")
    shapes = {n: m.params[n].shape for n in m.prunable}
    sparse = d < 1
    nnz, masks = {}, None
    if sparse:
        counts = layer_counts(list(shapes.values()), density, density_kind)
        nnz = dict(zip(shapes, counts, strict=True))
        masks = {n: WeightMask.counts(shapes[n], nnz[n]) for n in shapes}
    kw = dict(masks=masks, nsconv_stats=nsconv_stats, loss=loss, dtype=dt)
    trace = dry_trace(m, input_shape, batch, sap=sap, **kw)
    rows = _rows(trace, m, dt.itemsize, nnz, bool(momentum), sparse)
    # the same step without SAP, and with the public code's int32 index cache (same γ)
    no_sap = _activation_by_scope(dry_trace(m, input_shape, batch, sap=None, **kw))
    int32 = _activation_by_scope(dry_trace(m, input_shape, batch,
                                           sap=SapPolicy(exact_gamma(gamma), "int32"), **kw))
    for r in rows:
        r["activation_cache"] = sum(r["activation"].values())
        r["activation_cache_no_sap"] = no_sap.get(r["name"], 0)
        r["activation_cache_int32_index"] = int32.get(r["name"], 0)
    totals = {k: sum(r[k] for r in rows) for k in _PARAM_KEYS}
    for k in ("activation_cache", "activation_cache_no_sap", "activation_cache_int32_index"):
        totals[k] = sum(r[k] for r in rows)
    totals["footprint"] = totals["weights_sparse"] + totals["activation_cache"]
    totals["footprint_no_sap"] = totals["weights_sparse"] + totals["activation_cache_no_sap"]
    totals["footprint_with_gradients"] = totals["footprint"] + totals["gradients"] \
        + totals["optimizer_state"]
    persistent = {"weights_sparse": totals["weights_sparse"], "gradients": totals["gradients"],
                  "optimizer_state": totals["optimizer_state"],
                  "data_batch": trace.x.nbytes + (trace.y.nbytes if trace.y is not None else 0)}
    timeline = liveness(trace, persistent)
    totals["training_peak"] = timeline["peak"]["bytes"]
    by_cat = {c: sum(r["activation"][c] for r in rows) for c in CATEGORIES}
    counts = {"params": sum(r["params"] for r in rows),
              "prunable": sum(r["prunable"] for r in rows), "nnz": sum(r["nnz"] for r in rows)}
    config = {"model": m.name, "input_shape": list(input_shape), "batch": int(batch),
              "density": str(density), "density_kind": density_kind, "gamma": str(gamma),
              "policy": policy, "dtype": dt.name, "momentum": bool(momentum),
              "nsconv_stats": nsconv_stats, "loss": bool(loss), "alpha_t": float(alpha_t)}
    comm = communication(rows, dt.itemsize, sparse, alpha_t)
    return Ledger(config, rows, totals, by_cat, counts, comm, timeline)


def communication(rows, itemsize: int, sparse: bool, alpha_t: float) -> dict[str, int]:
    """MEM-4, bytes per client per round from the ledger's layer rows.

    down: nonzero values of the prunable tensors + every dense tensor (biases, gains, BatchNorm
    parameters and running statistics); mask_bitmap: ceil(N_l/8) per layer, sent when the mask
    changed; up: the same values and dense tensors; growth_pairs (adjustment rounds): per layer
    k_l = min(ceil(α_t·n_l), n_l, N_l − n_l) (flat index, value) pairs, the index in the
    narrowest of uint8/16/32 that holds N_l − 1 (as CACHE-1)."""
    values = sum(r["weights_sparse"] - ((r["prunable"] + 7) // 8 if sparse else 0)
                 for r in rows)
    bitmap = sum((r["prunable"] + 7) // 8 for r in rows) if sparse else 0
    pairs = 0
    if sparse:
        for r in rows:
            n, nnz = r["prunable"], r["nnz"]
            if n:
                k = min(math.ceil(alpha_t * nnz), nnz, n - nnz)
                pairs += k * (index_dtype(n).itemsize + itemsize)
    return {"down": values, "mask_bitmap": bitmap, "down_mask_changed": values + bitmap,
            "up": values, "growth_pairs": pairs, "up_adjustment": values + pairs}


def largest_batch(budget: int, model, input_shape, *, key: str = "training_peak",
                  limit: int = 1 << 20, **kw) -> int:
    """The largest batch N (<= limit) whose ``totals[key]`` fits in ``budget`` bytes; 0 when
    not even N = 1 fits. Every total, the MEM-5 peak included, is non-decreasing in N (every
    buffer's size is), so a doubling search and bisection find it."""
    m = _model(model, tuple(input_shape), kw.get("num_classes", 10), kw.get("norm", "nsconv"),
               kw.get("width", 1.0), kw.get("dtype"))
    kw = {k: v for k, v in kw.items() if k not in ("norm", "width")}

    def fits(n):
        try:
            return ledger(m, input_shape, n, **kw).totals[key] <= budget
        except ValueError:  # e.g. an index cache beyond uint32 (CACHE-1): does not fit
            return False

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:  # invariant: fits(lo), not fits(hi) (or hi beyond the limit)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


# ---- MEM-6: what this implementation allocates -----------------------------------------------
def measure_step(model, input_shape, batch, *, density=1.0, density_kind="erk", gamma=0.0,
                 policy="auto", dtype=None, momentum=False, nsconv_stats="dense",
                 num_classes=10, norm="nsconv", width=1.0, seed=0) -> dict:
    """MEM-6: the peak bytes Python allocates (tracemalloc) for one training step of this
    implementation: the state it holds (dense parameters, bool masks with their weight
    indexes, the data batch), the forward and loss on the tape, the backward and the SGD step.
    One warm-up step runs first (Numba compiles, caches fill). Arrays allocated inside compiled
    kernels (Numba's own allocator) are not seen by tracemalloc; the project's kernels allocate
    their buffers in Python, so this misses only small scratch. Returns ``{"peak": bytes,
    "state": bytes}`` (``state``: held before the step starts)."""
    import tracemalloc

    from .core.autodiff import value_and_grad
    from .core.optim import SGD
    from .sparsity import random_masks

    input_shape = tuple(int(v) for v in input_shape)
    m = _model(model, input_shape, num_classes, norm, width, dtype)
    dt = np.dtype(dtype) if dtype is not None else next(iter(m.params.values())).dtype
    rng = np.random.default_rng(seed)
    shapes = [m.params[n].shape for n in m.prunable]
    sparse = exact_fraction(density) < 1
    gens = [np.random.default_rng([seed, i]) for i in range(len(shapes))]
    sap = SapPolicy.make(gamma, policy)

    def state():
        params = {k: v.astype(dt) for k, v in m.params.items()}
        masks = None
        if sparse:
            counts = layer_counts(shapes, density, density_kind)
            masks = dict(zip(m.prunable, random_masks(shapes, counts, gens), strict=True))
            for k, mk in masks.items():
                params[k] *= mk
        x = rng.standard_normal((batch,) + input_shape).astype(dt)
        y = rng.integers(0, num_classes, batch)
        return params, masks, x, y

    def step(params, masks, x, y):
        opts = models.RunOptions(masks=masks, nsconv_stats=nsconv_stats, sap=sap)
        local = models.Model(m.name, m.layers, params, {k: v.copy() for k, v in
                                                        m.buffers.items()})

        def loss_fn(p):
            return F.cross_entropy(models.forward(local, p, x, True, opts), y)

        _, grads = value_and_grad(loss_fn)(params)
        SGD(0.01, momentum=0.9 if momentum else 0.0).step(params, grads, masks)

    step(*state())  # warm-up: compile, fill caches
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        s = state()
        held = tracemalloc.get_traced_memory()[0]
        step(*s)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return {"peak": int(peak), "state": int(held)}

