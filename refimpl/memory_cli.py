"""``fedmef memory``: the analytic memory ledger on the command line (SPEC MEM-1..MEM-6).

    fedmef memory --model resnet18 --input 3x32x32 --batch 64 --density 0.1 --gamma 0.7 \\
        --policy auto [--json] [--timeline] [--plot FILE] [--measure] [--budget BYTES]
        [--emit-c-header FILE]

prints a per-layer table, the totals in bytes and MiB and the training peak (MEM-5) with the
event where it occurs and the buffers live there (or the ledger's JSON, schema in
docs/memory.md). ``--timeline`` lists every event of the step with its live bytes; ``--plot``
draws live bytes against the step's events with the peak marked; ``--measure`` runs one real
step and reports this implementation's own peak (MEM-6) beside the ledger's. ``--budget``
answers the largest batch whose training peak (or, with ``--budget-of footprint``, paper-style
footprint) fits. ``--emit-c-header FILE`` writes the plan header of a lean port
(:mod:`refimpl.memory_arena`): every buffer of the step at a fixed offset in one arena whose size
is the training peak to the byte (docs/porting.md).
"""

from __future__ import annotations

import json
import re

import numpy as np

from . import memory as M
from .cli import positive_float, positive_int
from .fl.store import atomic_write_text
from .memory_arena import arena_plan, c_header
from .sap import POLICIES
from .sparsity import KINDS

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
          "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_bytes(text: str) -> int:
    """``"1000000"``, ``"64MiB"``, ``"1.5GB"`` -> bytes (int)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"--budget must be a byte count such as 4000000, 64MiB or 1.5GB; "
                         f"received {text!r} (units: {', '.join(u for u in _UNITS if u)})")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _mib(b: int) -> str:
    return f"{b / 2**20:,.3f}"


def _table(ledger: M.Ledger) -> str:
    head = (f"{'layer':<28}{'kind':<8}{'output':<18}{'params':>11}{'nnz':>11}"
            f"{'w_sparse B':>12}{'cache':>8}{'cache B':>12}{'no-SAP B':>12}{'other B':>11}")
    lines = [head, "-" * len(head)]
    for r in ledger.layers:
        cache = r["cache_format"] or ""
        if r["cache_shared_with"]:
            cache = "shared"
        other = r["activation_cache"] - r["activation"]["input_cache"]
        no_sap = r["activation_cache_no_sap"] - other
        shape = "x".join(str(v) for v in r["output_shape"]) or "()"
        lines.append(f"{r['name'][:27]:<28}{r['kind']:<8}{shape[:17]:<18}{r['params']:>11,}"
                     f"{r['nnz']:>11,}{r['weights_sparse']:>12,}{cache:>8}"
                     f"{r['activation']['input_cache']:>12,}{no_sap:>12,}{other:>11,}")
    return "\n".join(lines)


def _totals(ledger: M.Ledger) -> str:
    t = ledger.totals
    out = [f"{'total':<32}{'bytes':>16}{'MiB':>14}"]
    for k, v in t.items():
        out.append(f"{k:<32}{v:>16,}{_mib(v):>14}")
    out.append("")
    out.append(f"{'activation cache by category':<32}{'bytes':>16}{'MiB':>14}")
    for k, v in ledger.activation_by_category.items():
        out.append(f"  {k:<30}{v:>16,}{_mib(v):>14}")
    out.append("")
    out.append(f"{'communication per client/round':<32}{'bytes':>16}{'MiB':>14}")
    for k, v in ledger.communication.items():
        out.append(f"  {k:<30}{v:>16,}{_mib(v):>14}")
    no_sap, sap = t["activation_cache_no_sap"], t["activation_cache"]
    if no_sap:
        out.append("")
        out.append(f"SAP saves {100 * (1 - sap / no_sap):.1f}% of the activation cache and "
                   f"{100 * (1 - t['footprint'] / t['footprint_no_sap']):.1f}% of the footprint")
    return "\n".join(out)


def _peak(ledger: M.Ledger, measured: dict | None) -> str:
    pk = ledger.timeline["peak"]
    ev = pk["event"]
    out = [f"training peak (MEM-5, a lean step's liveness timeline): {pk['bytes']:,} bytes "
           f"({_mib(pk['bytes'])} MiB) at event {ev['index']} ({ev['phase']} {ev['scope']} "
           f"{ev['op']}); live there:"]
    for b in pk["live"]:
        if b["bytes"]:
            out.append(f"  {b['kind']:<11}{b['name'][:48]:<50}{b['bytes']:>14,}")
    if measured is not None:
        out.append(f"measured peak of this implementation (MEM-6, tracemalloc over one step, "
                   f"its state included): {measured['peak']:,} bytes "
                   f"({_mib(measured['peak'])} MiB); not the lean plan, see docs/memory.md")
    return "\n".join(out)


def _timeline(ledger: M.Ledger) -> str:
    tl = ledger.timeline
    born: dict[int, list[str]] = {}
    for b in tl["buffers"]:
        if b["kind"] != "workspace":
            born.setdefault(b["born"], []).append(b["name"].split(":", 1)[-1])
    lines = [f"{'event':>6} {'phase':<6}{'scope':<24}{'op':<20}{'live B':>14}  born"]
    for e in tl["events"]:
        lines.append(f"{e['index']:>6} {e['phase']:<6}{e['scope'][:23]:<24}{e['op'][:19]:<20}"
                     f"{e['live']:>14,}  {', '.join(born.get(e['index'], []))[:40]}")
    return "\n".join(lines)


def save_timeline_plot(ledger: M.Ledger, path) -> None:
    """Live bytes against the step's events (forward, then backward), the peak marked."""
    from matplotlib.figure import Figure

    tl = ledger.timeline
    ev = tl["events"]
    x = [e["index"] for e in ev]
    y = [e["live"] / 2**20 for e in ev]
    base = sum(tl["persistent"].values()) / 2**20
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9, 4.8), layout="constrained")
    ax = fig.add_subplot()
    n_fwd = sum(e["phase"] == "fwd" for e in ev)
    ax.axvspan(-0.5, n_fwd - 0.5, color="0.93", label="forward")
    ax.step(x, y, where="mid", color="C0", label="live bytes")
    ax.axhline(base, color="0.5", ls=":", label="always live (weights, grads, data)")
    pk = tl["peak"]
    ax.plot([pk["event"]["index"]], [pk["bytes"] / 2**20], "o", color="C3",
            label=f"peak {pk['bytes'] / 2**20:.2f} MiB ({pk['event']['phase']} "
                  f"{pk['event']['scope']})")
    c = ledger.config
    ax.set_title(f"{c['model']}: one training step, batch {c['batch']}, density {c['density']}, "
                 f"γ {c['gamma']} ({c['policy']})")
    ax.set_xlabel("event (forward nodes, then backward vjps)")
    ax.set_ylabel("live bytes (MiB)")
    ax.set_xlim(-0.5, len(ev) - 0.5)
    ax.set_ylim(0, max(y) * 1.1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, fontsize=8,
              frameon=False)
    fig.savefig(path, dpi=110)


def _cmd_memory(args) -> int:
    shape = M.parse_shape(args.input)
    if args.classes < 1:
        raise ValueError(f"--classes must be >= 1, received {args.classes}")
    kw = dict(density=args.density, density_kind=args.density_kind, gamma=args.gamma,
              policy=args.policy, dtype=np.dtype(args.dtype), momentum=args.momentum,
              nsconv_stats=args.nsconv_stats, num_classes=args.classes, norm=args.norm,
              width=args.width)
    ledger = M.ledger(args.model, shape, args.batch, loss=not args.no_loss, **kw)
    measured = None
    if args.measure:
        measured = M.measure_step(args.model, shape, args.batch, **kw)
    if args.plot:
        save_timeline_plot(ledger, args.plot)
    if args.emit_c_header:
        plan = arena_plan(args.model, shape, args.batch, loss=not args.no_loss, **kw)
        atomic_write_text(args.emit_c_header, c_header(
            plan, comment=f"fedmef memory --model {args.model} --input {args.input} --batch "
                          f"{args.batch} --density {args.density} --gamma {args.gamma} "
                          f"--policy {args.policy}"))
    answer = None
    if args.budget is not None:
        budget = parse_bytes(args.budget)
        answer = {"budget": budget, "of": args.budget_of,
                  "largest_batch": M.largest_batch(budget, args.model, shape, key=args.budget_of,
                                                   **kw)}
    if args.json:
        d = ledger.to_dict()
        if answer is not None:
            d["budget"] = answer
        if measured is not None:
            d["measured"] = measured
        print(json.dumps(d, indent=2))
        return 0
    c = ledger.config
    print(f"model {c['model']}  input {'x'.join(map(str, c['input_shape']))}  batch {c['batch']}"
          f"  density {c['density']} ({c['density_kind']})  gamma {c['gamma']}  policy "
          f"{c['policy']}  dtype {c['dtype']}  momentum {c['momentum']}")
    print()
    print(_table(ledger))
    print()
    print(_totals(ledger))
    print()
    print(_peak(ledger, measured))
    if args.timeline:
        print()
        print(_timeline(ledger))
    if args.plot:
        print(f"timeline plot: {args.plot}")
    if args.emit_c_header:
        print(f"C plan header: {args.emit_c_header} (one arena of {plan.nbytes:,} bytes = the "
              f"training peak, {len(plan.buffers)} buffers at fixed offsets)")
    if answer is not None:
        print()
        n = answer["largest_batch"]
        print(f"budget {answer['budget']:,} bytes ({_mib(answer['budget'])} MiB) for "
              f"{answer['of']}: " + (f"largest batch that fits = {n}" if n else
                                     "not even batch 1 fits"))
    return 0


def add_parser(subparsers) -> None:
    """Add the ``memory`` sub-command (called by :mod:`refimpl.cli`)."""
    p = subparsers.add_parser(
        "memory", help="analytic memory ledger: per-layer bytes of weights, masks, gradients, "
        "optimizer state and activation cache (SAP), footprint, and the training peak of a "
        "step's liveness timeline")
    p.add_argument("--model", required=True, help="zoo model name (see `fedmef models`)")
    p.add_argument("--input", default="3x32x32", help="input shape CxHxW (default 3x32x32)")
    p.add_argument("--batch", type=positive_int, default=64)
    p.add_argument("--density", default="1.0", help="weight density d (1 = dense model)")
    p.add_argument("--density-kind", default="erk", choices=KINDS)
    p.add_argument("--gamma", default="0.0", help="SAP ratio gamma in [0, 1)")
    p.add_argument("--policy", default="auto", choices=POLICIES, help="activation cache format")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--momentum", action="store_true", help="count SGD momentum buffers")
    p.add_argument("--norm", default="nsconv", choices=("nsconv", "bn", "none"))
    p.add_argument("--nsconv-stats", default="dense", choices=("dense", "masked"))
    p.add_argument("--width", type=positive_float, default=1.0, help="model width multiplier")
    p.add_argument("--classes", type=positive_int, default=10, help="output classes (>= 1)")
    p.add_argument("--no-loss", action="store_true",
                   help="leave out the cross-entropy residual (a bare forward pass)")
    p.add_argument("--json", action="store_true", help="print the ledger as JSON")
    p.add_argument("--timeline", action="store_true",
                   help="list every event of the step with its live bytes (MEM-5)")
    p.add_argument("--plot", default=None, metavar="FILE",
                   help="draw live bytes against the step's events (png, svg or pdf)")
    p.add_argument("--measure", action="store_true",
                   help="also run one real step and report this implementation's peak (MEM-6)")
    p.add_argument("--budget", default=None,
                   help="bytes available (e.g. 64MiB): print the largest batch that fits")
    p.add_argument("--budget-of", default="training_peak", choices=("training_peak", "footprint"))
    p.add_argument("--emit-c-header", default=None, metavar="FILE",
                   help="write the plan header of a lean port: every buffer of the step at a "
                   "fixed offset in one arena of exactly the training peak (docs/porting.md)")
    p.set_defaults(func=_cmd_memory)
