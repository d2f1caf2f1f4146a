"""One static arena for a lean training step (SPEC MEM-5): every buffer of the ledger's
liveness timeline at a fixed byte offset, and the C header that carries the plan to a port
(``fedmef memory --emit-c-header``, ``fedmef conformance export --c-header``; docs/porting.md).

The arena's size is the ledger's ``training_peak`` to the byte: the offsets are chosen so that
buffers alive at the same event never overlap and the highest byte any buffer reaches is the
peak of live bytes. Buffers (``ArenaBuffer``):

- ``state``: always live, split per tensor (the ledger's ``weights_sparse``, ``gradients``,
  ``optimizer_state`` and ``data_batch``): a masked weight's active values and its mask bitmap,
  biases and NSConv gains, the gradient and momentum of every trainable entry, the batch x and its
  int64 labels;
- the timeline's outputs, residuals, cotangents and workspace, with the ledger's lifetimes
  (events, both ends inclusive). A cotangent is named after the node that produced its value
  (``conv3/conv2d:grad`` and ``conv3/nsconv_standardize:grad`` are two buffers).

Offset assignment (exact, or a clear error). Every buffer sits at a multiple of its element
size. The always-live tensors whose size is a multiple of 4 fill the bottom (8-byte ones first,
the gradients and momentum last, so that they form one contiguous region), those whose size is
not (odd-sized mask bitmaps) the top. Buffers born in the forward pass and freed in the backward
(residuals, and outputs a residual keeps) nest like a stack in a chain network: one born later
is freed no later. Those whose size is a multiple of 4 are stacked above the bottom in birth
order, so the live ones form a contiguous block at every event. The rest (short-lived outputs,
cotangents, workspace, and the few residuals that do not nest or would break alignment) are
placed by a depth-first search, each within the gap the two fixed blocks leave during its whole
lifetime, trying the gap's top, its bottom, then the edges of buffers already placed. At the
peak event the gap is exactly as large as what is live in it, so the search succeeds only with
a perfect fit there; it is bounded, and a configuration it cannot pack raises
:class:`ArenaError` instead of emitting an arena larger than the ledger's peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from . import memory as M
from .models.graph import Conv, GlobalAvgPool, Linear, MaxPool, ReLU, ResidualBlock
from .sap import exact_gamma

__all__ = ["ArenaError", "ArenaBuffer", "ArenaPlan", "arena_plan", "c_header", "SEARCH_NODES"]

#: Node budget of the depth-first search (the scenario and the SRAM table of docs/porting.md
#: need a few hundred to a few thousand).
SEARCH_NODES = 200_000
_WORKSPACE_ALIGN = {"weight_index": 4, "selection_histogram": 4}
KINDS = ("state", "output", "residual", "cotangent", "workspace")


class ArenaError(ValueError):
    """No exact packing was found (or the plan is inconsistent); the message says which."""


@dataclass
class ArenaBuffer:
    """One buffer of the arena: ``nbytes`` at ``offset``, alive from event ``born`` to event
    ``died`` (inclusive), ``align`` its element size."""

    name: str
    kind: str
    nbytes: int
    align: int
    born: int
    died: int
    offset: int = -1

    @property
    def end(self) -> int:
        return self.offset + self.nbytes

    def overlaps_in_time(self, other: ArenaBuffer) -> bool:
        return not (self.died < other.born or other.died < self.born)


@dataclass
class ArenaPlan:
    """The arena of one training step: ``buffers`` with offsets, ``nbytes`` (= the ledger's
    ``training_peak``), the ledger's ``events``, the ``ledger`` and the ``model`` it plans, and
    ``grad_region`` (offset, bytes) of the contiguous gradient and momentum block."""

    buffers: list[ArenaBuffer]
    nbytes: int
    events: list[dict]
    ledger: M.Ledger
    model: object
    grad_region: tuple[int, int]
    search_nodes: int

    def buffer(self, name: str) -> ArenaBuffer:
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(f"arena plan has no buffer {name!r}")

    def live_bytes(self, event: int) -> int:
        return sum(b.nbytes for b in self.buffers if b.born <= event <= b.died)


def _state_buffers(led: M.Ledger, model, last: int, itemsize: int, sparse: bool,
                   momentum: bool) -> list[ArenaBuffer]:
    """The always-live tensors, per parameter, in the order they are stacked."""
    rows = {r["name"]: r for r in led.layers}
    out = []

    def add(name, nbytes, align):
        if nbytes:
            out.append(ArenaBuffer(name, "state", int(nbytes), align, 0, last))

    batch = led.config["batch"]
    add("state/batch:y", batch * 8, 8)
    add("state/batch:x", batch * math.prod(led.config["input_shape"]) * itemsize, itemsize)
    prunable = set(model.prunable)
    counts = {}
    for name, p in model.params.items():
        layer = name.rsplit(".", 1)[0]
        n = int(p.size)
        if name in prunable:
            counts[name] = rows[layer]["nnz"] if sparse else n
            add(f"state/{name}:values", counts[name] * itemsize, itemsize)
            if sparse:
                add(f"state/{name}:mask", (n + 7) // 8, 1)
        else:
            counts[name] = n
            add(f"state/{name}", n * itemsize, itemsize)
    for name in model.params:
        add(f"state/{name}:grad", counts[name] * itemsize, itemsize)
    if momentum:
        for name in model.params:
            add(f"state/{name}:momentum", counts[name] * itemsize, itemsize)
    want = sum(led.timeline["persistent"].values())
    if sum(b.nbytes for b in out) != want:
        raise ArenaError(f"arena: the always-live tensors sum to {sum(b.nbytes for b in out)} "
                         f"bytes, the ledger counts {want} (weights, gradients, optimizer state, "
                         f"data batch); the plan and the ledger disagree")
    return out


def _timeline_buffers(led: M.Ledger, itemsize: int) -> list[ArenaBuffer]:
    out = []
    for b in led.timeline["buffers"]:
        name = b["name"]
        if b["kind"] == "cotangent":  # unique: the node that produced the value
            name = f"{name.rsplit(':', 1)[0]}/{b['op']}:grad"
        if b["kind"] == "workspace":
            role = name.rsplit(":", 1)[1]
            align = _WORKSPACE_ALIGN.get(role, itemsize if role == "decoded_input" else 8)
        else:
            align = np.dtype(b["dtype"]).itemsize
        out.append(ArenaBuffer(name, b["kind"], b["bytes"], align, b["born"], b["died"]))
    names = [b.name for b in out]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ArenaError(f"arena: buffer names are not unique ({dup[:3]}); the model runs two "
                         f"nodes of one kind in one layer scope, which the port's plan cannot "
                         f"address")
    return out


def _align_up(v: int, a: int) -> int:
    return -(-v // a) * a


def _assign(buffers: list[ArenaBuffer], peak: int, n_fwd: int, last: int,
            budget: int) -> tuple[int, tuple[int, int]]:
    """Set every buffer's offset (module docstring); returns (search nodes, gradient region)."""
    state = [b for b in buffers if b.kind == "state"]
    lo = 0
    bottom = sorted((b for b in state if b.nbytes % 4 == 0),
                    key=lambda b: (-b.align, b.name.endswith((":grad", ":momentum")),
                                   b.name.endswith(":momentum")))
    grad0 = grad1 = None
    for b in bottom:
        b.offset = lo
        lo += b.nbytes
        if b.name.endswith((":grad", ":momentum")):
            grad0 = b.offset if grad0 is None else grad0
            grad1 = b.end
    hi = peak
    for b in (b for b in state if b.nbytes % 4):
        hi -= b.nbytes
        b.offset = hi
    if lo > hi:
        raise ArenaError(f"arena: the always-live tensors ({lo + peak - hi} bytes) exceed the "
                         f"peak {peak}")
    # the nesting stack of forward-to-backward buffers
    spanning = sorted((b for b in buffers if b.kind != "state" and b.born < n_fwd <= b.died
                       and b.align <= 4 and b.nbytes % 4 == 0),
                      key=lambda b: (b.born, -b.died, -b.align, b.name))
    stack, stacked = [], []
    for b in spanning:
        while stack and stack[-1].died < b.born:
            stack.pop()
        if stack and b.died > stack[-1].died:
            continue  # does not nest: placed by the search
        b.offset = stack[-1].end if stack else lo
        stack.append(b)
        stacked.append(b)
    gap_lo = [lo] * (last + 1)
    for b in stacked:
        for e in range(b.born, b.died + 1):
            gap_lo[e] = max(gap_lo[e], b.end)
    fixed = set(map(id, stacked)) | set(map(id, state))
    free = [b for b in buffers if id(b) not in fixed]
    for b in free:
        b.offset = -1
    window = {id(b): (max(gap_lo[b.born:b.died + 1]), hi - b.nbytes) for b in free}
    # long-lived first (the most constrained), then in time order, larger first
    free.sort(key=lambda b: (-(b.died - b.born) if b.born < n_fwd <= b.died else 0, b.born,
                             -b.nbytes, b.name))
    nodes = [0]

    def place(k: int) -> bool:
        if k == len(free):
            return True
        nodes[0] += 1
        if nodes[0] > budget:
            return False
        b = free[k]
        low, high = window[id(b)]
        placed = sorted(((o.offset, o.end) for o in free[:k] if o.overlaps_in_time(b)),
                        reverse=True)
        tried = set()
        cands = [high - high % b.align, _align_up(low, b.align)]
        for start, end in placed:
            cands += [(start - b.nbytes) // b.align * b.align, _align_up(end, b.align)]
        for o in cands:
            if o in tried or o < low or o > high:
                continue
            tried.add(o)
            if all(o + b.nbytes <= s or e <= o for s, e in placed):
                b.offset = o
                if place(k + 1):
                    return True
                b.offset = -1
        return False

    if not place(0):
        raise ArenaError(
            f"arena: no exact packing of the {len(buffers)} buffers into the training peak of "
            f"{peak} bytes was found within {budget} search nodes, so no arena equal to the "
            f"ledger's peak can be emitted for this configuration. Packed exactly: the SAP "
            f"configurations listed in docs/porting.md, 'The arena' (gamma > 0 with a chain "
            f"model); not packed: gamma 0 (the caches are the layer inputs), some index-policy "
            f"cases and residual models")
    return nodes[0], (grad0 if grad0 is not None else lo, grad1 if grad1 is not None else lo)


def _verify(buffers: list[ArenaBuffer], peak: int) -> None:
    for i, a in enumerate(buffers):
        if a.offset < 0 or a.end > peak or a.offset % a.align:
            raise ArenaError(f"arena: {a.name} at {a.offset}..{a.end} is outside the arena of "
                             f"{peak} bytes or not aligned to {a.align}")
        for b in buffers[:i]:
            if a.overlaps_in_time(b) and a.offset < b.end and b.offset < a.end:
                raise ArenaError(f"arena: {a.name} and {b.name} are alive together and overlap")
    if max(b.end for b in buffers) != peak:
        raise ArenaError("arena: the highest byte is not the peak")


def arena_plan(model, input_shape, batch, *, budget: int = SEARCH_NODES, **kw) -> ArenaPlan:
    """The arena of one training step of ``model`` (a zoo name or a built model) at ``batch``,
    with the ledger's keyword arguments (``density``, ``gamma``, ``policy``, ``momentum``,
    ``num_classes``, ``width``, ...). Raises :class:`ArenaError` when no exact packing is found."""
    input_shape = tuple(int(v) for v in input_shape)
    m = M._model(model, input_shape, kw.get("num_classes", 10), kw.get("norm", "nsconv"),
                 kw.get("width", 1.0), kw.get("dtype"))
    led_kw = {k: v for k, v in kw.items() if k not in ("norm", "width")}
    led = M.ledger(m, input_shape, batch, **led_kw)
    itemsize = np.dtype(led.config["dtype"]).itemsize
    events = led.timeline["events"]
    last = len(events) - 1
    n_fwd = sum(e["phase"] == "fwd" for e in events)
    sparse = Fraction(str(led.config["density"])) < 1
    buffers = _state_buffers(led, m, last, itemsize, sparse, led.config["momentum"]) \
        + _timeline_buffers(led, itemsize)
    peak = led.totals["training_peak"]
    nodes, region = _assign(buffers, peak, n_fwd, last, budget)
    _verify(buffers, peak)
    for e in range(last + 1):  # the ledger's live bytes, event by event
        got = sum(b.nbytes for b in buffers if b.born <= e <= b.died)
        if got != events[e]["live"]:
            raise ArenaError(f"arena: event {e} holds {got} bytes, the ledger says "
                             f"{events[e]['live']}")
    return ArenaPlan(buffers, peak, events, led, m, (region[0], region[1] - region[0]), nodes)


# ---- the C header ------------------------------------------------------------------------------
_POLICY_CODES = {"dense": 0, "bitmap": 1, "index": 2, "auto": 3}


def _c_string(s: str) -> str:
    if any(c in s for c in '"\\\n') or not s.isascii():
        raise ArenaError(f"arena: name {s!r} cannot be written as a C string literal")
    return f'"{s}"'


def _layer_rows(model) -> list[tuple]:
    """(kind, name, a, b, kernel, stride, padding, bias) per top-level layer: conv (a = C_in,
    b = C_out), relu, maxpool (kernel, stride), gap, linear (a = in, b = out)."""
    rows = []
    for layer in model.layers:
        if isinstance(layer, Conv):
            if layer.norm != "nsconv" or layer.groups != 1:
                raise ArenaError(f"arena header: layer {layer.name} is a conv with norm "
                                 f"{layer.norm!r} and groups {layer.groups}; the port implements "
                                 f"NSConv layers with groups 1 (docs/porting.md)")
            rows.append(("FM_LAYER_CONV", layer.name, layer.in_ch, layer.out_ch, layer.kernel,
                         layer.stride, layer.padding, int(layer.bias)))
        elif isinstance(layer, Linear):
            rows.append(("FM_LAYER_LINEAR", layer.name, layer.in_features, layer.out_features,
                         0, 0, 0, int(layer.bias)))
        elif isinstance(layer, ReLU):
            rows.append(("FM_LAYER_RELU", "", 0, 0, 0, 0, 0, 0))
        elif isinstance(layer, MaxPool):
            rows.append(("FM_LAYER_MAXPOOL", "", 0, 0, layer.kernel, layer.stride, 0, 0))
        elif isinstance(layer, GlobalAvgPool):
            rows.append(("FM_LAYER_GAP", "", 0, 0, 0, 0, 0, 0))
        elif isinstance(layer, ResidualBlock):
            raise ArenaError("arena header: the port runs plain layer chains; this model has "
                             "residual blocks (docs/porting.md)")
        else:  # pragma: no cover - the zoo has no other layers
            raise ArenaError(f"arena header: unsupported layer {layer!r}")
    return rows


def c_header(plan: ArenaPlan, defines: dict | None = None, comment: str = "") -> str:
    """The C99 header of ``plan`` (docs/porting.md, "The plan header"): the configuration, the
    layer list, the prunable layers' counts, the events and every buffer with its offset, size
    and lifetime, as X-macro lists. ``defines``: further ``name -> value`` macros (the
    conformance exporter adds the training hyperparameters)."""
    led, cfg = plan.ledger, plan.ledger.config
    if cfg["dtype"] != "float32":
        raise ArenaError(f"arena header: the port is float32; the plan is {cfg['dtype']}")
    if cfg["nsconv_stats"] != "dense":
        raise ArenaError("arena header: the port implements NSConv stats 'dense' (NSC-1)")
    if cfg["policy"] not in _POLICY_CODES:
        raise ArenaError(f"arena header: cache policy {cfg['policy']!r} is not one the port "
                         f"implements ({', '.join(_POLICY_CODES)})")
    g = exact_gamma(cfg["gamma"])
    rows = {r["name"]: r for r in led.layers}
    model = plan.model
    lines = [
        "/* FedMef port plan: generated by refimpl.memory_arena (docs/porting.md); do not edit. */",
    ]
    if comment:
        lines.append(f"/* {comment} */")
    c, h, w = cfg["input_shape"]
    lines += [
        "#ifndef FEDMEF_PLAN_H",
        "#define FEDMEF_PLAN_H",
        "",
        f"#define FM_PLAN_MODEL {_c_string(cfg['model'])}",
        f"#define FM_PLAN_ARENA_BYTES {plan.nbytes}u  /* = the ledger's training_peak (MEM-5) */",
        f"#define FM_PLAN_BATCH {cfg['batch']}",
        f"#define FM_PLAN_IN_C {c}",
        f"#define FM_PLAN_IN_H {h}",
        f"#define FM_PLAN_IN_W {w}",
        f"#define FM_PLAN_SPARSE {int(Fraction(str(cfg['density'])) < 1)}",
        f"#define FM_PLAN_GAMMA_NUM {g.numerator}",
        f"#define FM_PLAN_GAMMA_DEN {g.denominator}",
        f"#define FM_PLAN_POLICY {_POLICY_CODES[cfg['policy']]}  /* 0 dense 1 bitmap 2 index "
        f"3 auto */",
        f"#define FM_PLAN_MOMENTUM {int(cfg['momentum'])}",
        f"#define FM_PLAN_GRAD_REGION_OFFSET {plan.grad_region[0]}u",
        f"#define FM_PLAN_GRAD_REGION_BYTES {plan.grad_region[1]}u",
        f"#define FM_PLAN_EVENT_COUNT {len(plan.events)}",
        f"#define FM_PLAN_FWD_EVENTS {sum(e['phase'] == 'fwd' for e in plan.events)}",
        f"#define FM_PLAN_BUFFER_COUNT {len(plan.buffers)}",
        "",
        "/* layers: X(kind, name, a, b, kernel, stride, padding, bias); conv a = C_in, b = C_out;",
        "   linear a = in, b = out; maxpool kernel, stride */",
        "#define FM_PLAN_LAYERS(X) \\",
    ]
    lines += [f"    X({k}, {_c_string(n)}, {a}, {b}, {kk}, {s}, {p}, {bias}) \\"
              for k, n, a, b, kk, s, p, bias in _layer_rows(model)]
    lines += ["", "/* prunable layers: X(name, weight numel, nonzeros (ERK-2)) */",
              "#define FM_PLAN_PRUNABLE(X) \\"]
    for pname in model.prunable:
        layer = pname.rsplit(".", 1)[0]
        r = rows[layer]
        lines.append(f"    X({_c_string(layer)}, {r['prunable']}, {r['nnz']}) \\")
    lines += ["", "/* events: X(index, phase 0 fwd 1 bwd, scope, op) */",
              "#define FM_PLAN_EVENTS(X) \\"]
    for e in plan.events:
        lines.append(f"    X({e['index']}, {int(e['phase'] == 'bwd')}, {_c_string(e['scope'])}, "
                     f"{_c_string(e['op'])}) \\")
    lines += ["", "/* buffers: X(name, offset, bytes, born, died); state buffers live at every "
              "event */", "#define FM_PLAN_BUFFERS(X) \\"]
    for b in sorted(plan.buffers, key=lambda b: (b.offset, b.born, b.name)):
        lines.append(f"    X({_c_string(b.name)}, {b.offset}u, {b.nbytes}u, {b.born}, {b.died})"
                     f" \\")
    lines.append("")
    for k, v in (defines or {}).items():
        lines.append(f"#define {k} {v}")
    lines += ["", "#endif", ""]
    return "\n".join(lines)
