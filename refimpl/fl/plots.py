"""Pictures of runs, drawn on matplotlib's Agg canvas (no display, no pyplot state), written
atomically and byte-deterministically (no timestamp or version in the file).

- :func:`save_plots`: one run's ``accuracy.png``, ``loss.png`` and ``memory.png``.
- :func:`save_accuracy_overlay`: the accuracy curves of several runs on one axis
  (``fedmef compare --plot``, the experiment grid's per-density plots).
- :func:`save_footprint_accuracy`: memory footprint against accuracy of many runs; method as
  colour, density as marker, a label only where it collides with no other label or marker.

Every plot follows the same rules (docs/federated.md, "Plots"): integer round ticks, units in
every axis label, mask adjustment rounds (PG-1) as dashed grey lines, quantities of different
scale on separate panels, and a title that names the run.
"""

from __future__ import annotations

import io
from pathlib import Path

from .store import atomic_write_bytes

__all__ = ["save_plots", "save_accuracy_overlay", "save_footprint_accuracy", "run_title",
           "place_labels", "check_plot_path", "METHOD_COLORS", "PLOT_FORMATS", "RUN_PICTURES",
           "DPI", "SIZES"]

#: The pictures of a run directory (relative path, what it shows), as the run's summary lists
#: them; partition.png is data_tools.save_heatmap's.
RUN_PICTURES = (("plots/accuracy.png", "test accuracy by round"),
                ("plots/loss.png", "train and test loss by round"),
                ("plots/memory.png", "activation cache and traffic per client by round"),
                ("partition.png", "label histogram of every client (the partition)"))

DPI = 110
#: Picture sizes in inches (pixels: inches × DPI).
SIZES = {"accuracy.png": (6.4, 4.2), "loss.png": (6.4, 4.2), "memory.png": (6.4, 5.6),
         "overlay": (7.2, 5.2), "footprint": (8.8, 5.4)}
#: Okabe-Ito colours (distinguishable with the common colour-vision deficiencies).
METHOD_COLORS = {"fedavg": "#000000", "static": "#E69F00", "prune_grow": "#009E73",
                 "fedmef": "#0072B2"}
_OTHER_COLORS = ("#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#999999")
_MARKERS = ("s", "o", "^", "D", "v", "P", "X", "<", ">")
_ADJUST = dict(color="0.55", ls="--", lw=0.8, zorder=0)
#: savefig formats and the metadata that would otherwise stamp a version or a date.
PLOT_FORMATS = {"png": {"Software": None},
                "svg": {"Creator": None, "Date": None},
                "pdf": {"Creator": None, "Producer": None, "CreationDate": None}}


# ---- canvas, files, axes ----------------------------------------------------------------------
def _figure(width: float, height: float):
    """A Figure on its own Agg canvas (no pyplot: nothing global changes, no display)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "plots need matplotlib, a runtime dependency of fedmef-refimpl: install it with "
            "`pip install -r requirements/runtime.txt` (matplotlib==3.11.2)",
            name="matplotlib") from e
    # constrained layout keeps titles, legends outside the axes and tick labels from overlapping
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def check_plot_path(path) -> str:
    """The picture format of ``path`` (its suffix); a clear error for any other suffix."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in PLOT_FORMATS:
        raise ValueError(f"cannot write a plot to {str(path)!r}: unknown picture format "
                         f"{path.suffix or '(no suffix)'!r}; name the file with one of "
                         f"{', '.join('.' + f for f in PLOT_FORMATS)}")
    return fmt


def _save(fig, path) -> Path:
    """Render ``fig`` in the format of ``path``'s suffix and write it atomically."""
    import matplotlib

    path = Path(path)
    fmt = check_plot_path(path)
    buf = io.BytesIO()
    # the SVG writer salts its element ids with a random value unless told otherwise
    with matplotlib.rc_context({"svg.hashsalt": "fedmef"}):
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=PLOT_FORMATS[fmt])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _round_axis(ax, first: int, last: int) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10], min_n_ticks=1))
    ax.set_xlim(first - 0.5, last + 0.5)
    ax.set_xlabel("communication round")


def _mark_adjustments(ax, rounds, label: str | None = "mask adjustment (prune and grow)"):
    for i, t in enumerate(rounds):
        ax.axvline(t, label=label if i == 0 else None, **_ADJUST)


def _byte_unit(largest: float) -> tuple[float, str]:
    for scale, unit in ((2.0**30, "GiB"), (2.0**20, "MiB"), (2.0**10, "KiB")):
        if largest >= scale:
            return scale, unit
    return 1.0, "B"


def run_title(cfg) -> str:
    """Two lines naming a run: method, density, SAP γ, BaE; then model, data, clients, seed."""
    r, s = cfg.run, cfg.sparse
    parts = [r.method, "dense" if s.density >= 1 else f"density {s.density:g}",
             f"SAP γ = {cfg.sap.gamma:g}" if cfg.sap.gamma > 0 else "no SAP (γ = 0)"]
    if cfg.dynamic:
        parts.append(f"BaE {'on' if cfg.bae.enabled else 'off'}")
    return (" · ".join(parts) + f"\n{cfg.model.name} ({cfg.model.norm}) on {cfg.data.dataset}, "
            f"{cfg.data.num_clients} clients, {cfg.train.clients_per_round} per round, "
            f"seed {r.seed}")


def _title(fig, text: str) -> None:
    fig.suptitle(text, fontsize=10)


def _legend_below(fig, axes, ncol: int = 2) -> None:
    """One legend for the figure, under the plots (it never hides a curve)."""
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[lab] for lab in labels], labels, loc="outside lower center",
               ncol=ncol, fontsize=8, frameon=False)


# ---- one run ----------------------------------------------------------------------------------
def save_plots(records: list[dict], directory, cfg) -> list[Path]:
    """Write ``accuracy.png``, ``loss.png`` and ``memory.png`` of one run into ``directory``.

    ``records``: the run's metrics.jsonl records (docs/federated.md); ``cfg``: its Config (the
    title). Returns the paths written (none when there are no records). Raises when matplotlib
    is missing or a file cannot be written.
    """
    if not records:
        return []
    d = Path(directory)
    title = run_title(cfg)
    first, last = records[0]["round"], records[-1]["round"]
    rounds = [r["round"] for r in records]
    evals = [r for r in records if r["test_accuracy"] is not None]
    adjust = [r["round"] for r in records if r["adjustment"]]
    color = METHOD_COLORS.get(cfg.run.method, _OTHER_COLORS[0])
    paths = []

    fig = _figure(*SIZES["accuracy.png"])
    ax = fig.add_subplot(1, 1, 1)
    _mark_adjustments(ax, adjust)
    acc = [100 * r["test_accuracy"] for r in evals]
    # a run with a validation split (data.validation) also shows it, dashed
    vals = [r for r in records if r.get("val_accuracy") is not None]
    vacc = [100 * r["val_accuracy"] for r in vals]
    if evals or not vals:
        ax.plot([r["round"] for r in evals], acc, "o-", ms=4, color=color,
                label="test accuracy of the global model")
    if vals:
        ax.plot([r["round"] for r in vals], vacc, "s--", ms=3, color="#CC79A7",
                label="validation accuracy (held-out training data)")
    for rs, ys in ((evals, acc), (vals, vacc)):
        if rs:
            ax.annotate(f"{ys[-1]:.1f}%", (rs[-1]["round"], ys[-1]), xytext=(0, 7),
                        textcoords="offset points", ha="center", fontsize=8)
    if acc or vacc:
        ax.set_ylim(0, min(100.0, max(acc + vacc) * 1.1 + 3))
    _round_axis(ax, first, last)
    ax.set_ylabel("accuracy (%)" if vals else "test accuracy (%)")
    ax.grid(alpha=0.3)
    _legend_below(fig, [ax])
    _title(fig, title)
    paths.append(_save(fig, d / "accuracy.png"))

    fig = _figure(*SIZES["loss.png"])
    ax = fig.add_subplot(1, 1, 1)
    _mark_adjustments(ax, adjust)
    ax.plot(rounds, [r["train_loss"] for r in records], "-", color="#CC79A7",
            label="train loss (clients' mean over their local steps)")
    if evals or not vals:
        ax.plot([r["round"] for r in evals], [r["test_loss"] for r in evals], "o-", ms=4,
                color=color, label="test loss of the global model")
    if vals:
        ax.plot([r["round"] for r in vals], [r["val_loss"] for r in vals], "s--", ms=3,
                color="#E69F00", label="validation loss of the global model")
    ax.set_ylim(bottom=0)
    _round_axis(ax, first, last)
    ax.set_ylabel("cross-entropy (nats per example)")
    ax.grid(alpha=0.3)
    _legend_below(fig, [ax])
    _title(fig, title)
    paths.append(_save(fig, d / "loss.png"))

    # the activation cache (hundreds of KiB) and the traffic per client (tens of KiB) differ in
    # scale: one panel each, each with its own unit
    fig = _figure(*SIZES["memory.png"])
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    act = [r["activation_bytes"] for r in records]
    scale, unit = _byte_unit(max(act))
    ax1.plot(rounds, [a / scale for a in act], "o-", ms=3, color="#CC79A7",
             label="activation cache, largest client of the round")
    ax1.set_ylim(0, max(max(act) / scale, 1) * 1.25)
    ax1.set_ylabel(f"activation cache ({unit})")
    up = [r["bytes_up"] / len(r["clients"]) for r in records]
    down = [r["bytes_down"] / len(r["clients"]) for r in records]
    scale, unit = _byte_unit(max(up + down))
    ax2.plot(rounds, [v / scale for v in down], "o-", ms=3, color="#0072B2",
             label="download (server to client)")
    ax2.plot(rounds, [v / scale for v in up], "s-", ms=3, color="#D55E00",
             label="upload (client to server)")
    ax2.set_ylim(0, max(max(up + down) / scale, 1) * 1.3)
    ax2.set_ylabel(f"traffic per client ({unit})")
    for i, ax in enumerate((ax1, ax2)):
        _mark_adjustments(ax, adjust, label=None if i else "mask adjustment (prune and grow)")
        ax.grid(alpha=0.3)
    _round_axis(ax2, first, last)
    ax1.set_title("memory of local training (MEM-2)", fontsize=9, loc="left")
    ax2.set_title("communication per client per round, mean over the round's clients (MEM-4)",
                  fontsize=9, loc="left")
    _legend_below(fig, [ax1, ax2])
    _title(fig, title)
    paths.append(_save(fig, d / "memory.png"))
    return paths


# ---- several runs -----------------------------------------------------------------------------
def _method_colors(methods) -> dict:
    methods = list(dict.fromkeys(methods))
    others = [m for m in methods if m not in METHOD_COLORS]
    return {m: METHOD_COLORS.get(m) or _OTHER_COLORS[others.index(m) % len(_OTHER_COLORS)]
            for m in methods}


def _density_markers(densities) -> dict:
    return {d: _MARKERS[i % len(_MARKERS)]
            for i, d in enumerate(sorted({float(d) for d in densities}, reverse=True))}


def save_accuracy_overlay(series: list[dict], path, title: str,
                          ylabel: str = "test accuracy (%)", bottom: float | None = 0,
                          zero_line: bool = False) -> Path:
    """One axis with the test-accuracy curves of several runs.

    ``series``: dicts with ``label``, ``method``, ``density`` (float), ``rounds`` (evaluated
    rounds), ``accuracy`` (fractions, one per evaluated round) and optional ``adjustments``
    (rounds). Method is the colour, density the marker; runs that share both differ in line
    style. Adjustment rounds shared by every run that adjusts are dashed grey lines, otherwise
    each run's are ticks in its colour along the bottom. ``title``: one or two lines.
    ``ylabel``, ``bottom`` (None: automatic) and ``zero_line`` (a thin line at 0) serve
    differences of accuracies (the experiment grid's gap against rounds).
    """
    from matplotlib.transforms import blended_transform_factory

    if not series:
        raise ValueError("save_accuracy_overlay: no runs to plot")
    for s in series:
        if len(s["rounds"]) != len(s["accuracy"]):
            raise ValueError(f"series {s['label']!r}: {len(s['rounds'])} rounds but "
                             f"{len(s['accuracy'])} accuracies")
    colors = _method_colors(s["method"] for s in series)
    markers = _density_markers(s["density"] for s in series)
    styles, seen = [], {}
    for s in series:  # the k-th run of one (method, density) gets the k-th line style
        key = (s["method"], float(s["density"]))
        styles.append(("-", "--", ":", "-.")[seen.get(key, 0) % 4])
        seen[key] = seen.get(key, 0) + 1
    fig = _figure(*SIZES["overlay"])
    ax = fig.add_subplot(1, 1, 1)
    adj = {tuple(s.get("adjustments") or ()) for s in series} - {()}
    shared = len(adj) == 1
    if shared:
        some = any(not s.get("adjustments") for s in series)
        _mark_adjustments(ax, next(iter(adj)), "mask adjustment" +
                          (" (of the runs that adjust)" if some else ""))
    rug = blended_transform_factory(ax.transData, ax.transAxes)
    for i, (s, ls) in enumerate(zip(series, styles)):
        c = colors[s["method"]]
        ax.plot(s["rounds"], [100 * a for a in s["accuracy"]], ls=ls, marker=markers[
                float(s["density"])], ms=4, color=c,
                label=s["label"] if s["rounds"] else f"{s['label']} (no evaluation yet)")
        if not shared and s.get("adjustments"):
            ax.plot(s["adjustments"], [0.02 + 0.025 * i] * len(s["adjustments"]), ls="",
                    marker="|", ms=8, mew=1.5, color=c, transform=rug)
    if not shared and adj:
        ax.plot([], [], ls="", marker="|", ms=8, mew=1.5, color="0.3",
                label="mask adjustments (ticks in each run's colour)")
    last = max([t for s in series for t in s["rounds"]] + [t for a in adj for t in a] + [1])
    _round_axis(ax, 1, last)
    if bottom is not None:
        ax.set_ylim(bottom=bottom)
    if zero_line:
        ax.axhline(0, color="0.2", lw=0.8, zorder=1)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    _legend_below(fig, [ax], ncol=1)
    _title(fig, title)
    return _save(fig, path)


def _boxes_overlap(a, b, pad: float = 1.0) -> bool:
    return not (a[2] + pad <= b[0] or b[2] + pad <= a[0] or a[3] + pad <= b[1]
                or b[3] + pad <= a[1])


def _segment_hits(p, q, box) -> bool:
    """Whether the segment p-q passes through ``box`` (x0, y0, x1, y1); sampled, pixels."""
    for k in range(1, 20):
        x = p[0] + (q[0] - p[0]) * k / 20
        y = p[1] + (q[1] - p[1]) * k / 20
        if box[0] <= x <= box[2] and box[1] <= y <= box[3]:
            return True
    return False


def _segments_cross(p, q, r, t) -> bool:
    """Whether segments p-q and r-t properly intersect (pixels)."""
    def side(a, b, c):
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

    return (side(p, q, r) * side(p, q, t) < 0) and (side(r, t, p) * side(r, t, q) < 0)


def _candidates():
    """Label positions around a point, nearest first: (dx, dy) of the label's anchor in pixels,
    its alignment, and whether it needs a leader line."""
    near = [(6, 0, "left", "center"), (-6, 0, "right", "center"), (0, 6, "center", "bottom"),
            (0, -6, "center", "top"), (5, 5, "left", "bottom"), (-5, 5, "right", "bottom"),
            (5, -5, "left", "top"), (-5, -5, "right", "top")]
    out = [(dx, dy, ha, va, False) for dx, dy, ha, va in near]
    far = []
    for dx in (22, 40, 60, 85, 115):
        for dy in range(-90, 91, 9):
            for sx, ha in ((1, "left"), (-1, "right")):
                far.append((sx * dx, dy, ha, "center", True))
    far.sort(key=lambda c: (c[0] ** 2 + c[1] ** 2, -c[0]))
    return out + far


def place_labels(ax, xy, texts, order=None, fontsize: float = 7.0, marker_px: float = 4.0):
    """Annotate points ``xy`` (data coordinates) with ``texts``, each label only where it
    collides with no other label, marker or leader line and stays inside the axes.

    Points are tried in ``order`` (default: as given; earlier ones get the nearer places);
    each tries positions next to the point first, then farther ones with a thin leader line.
    Call it after the axes' limits and the figure's layout are final. Returns ``(placed,
    skipped)``: placed is a list of (index, (x0, y0, x1, y1) label box in pixels), skipped the
    indices left without a label.
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    frame = (frame.x0 + 2, frame.y0 + 2, frame.x1 - 2, frame.y1 - 2)
    pts = [tuple(ax.transData.transform(p)) for p in xy]
    taken = [(x - marker_px, y - marker_px, x + marker_px, y + marker_px) for x, y in pts]
    leaders = []
    placed, skipped = [], []
    candidates = _candidates()
    for i in (range(len(xy)) if order is None else order):
        probe = ax.text(0, 0, texts[i], fontsize=fontsize, transform=None)
        bb = probe.get_window_extent(renderer)
        probe.remove()
        w, h = bb.width, bb.height
        px, py = pts[i]
        for dx, dy, ha, va, leader in candidates:
            x0 = px + dx - (w if ha == "right" else w / 2 if ha == "center" else 0)
            y0 = py + dy - (h if va == "top" else h / 2 if va == "center" else 0)
            box = (x0, y0, x0 + w, y0 + h)
            if not (frame[0] <= box[0] and box[2] <= frame[2] and frame[1] <= box[1]
                    and box[3] <= frame[3]):
                continue
            if any(_boxes_overlap(box, t) for t in taken):
                continue
            if any(_segment_hits(p, q, box) for p, q in leaders):
                continue
            end = (px + dx, py + dy)
            if leader and (any(_segment_hits((px, py), end, t) for j, t in enumerate(taken)
                               if j != i)
                           or any(_segments_cross((px, py), end, p, q) for p, q in leaders)):
                continue
            ax.annotate(texts[i], xy[i], xytext=(dx, dy), textcoords="offset pixels",
                        ha=ha, va=va, fontsize=fontsize,
                        arrowprops=dict(arrowstyle="-", lw=0.5, color="0.45",
                                        shrinkA=0, shrinkB=2) if leader else None)
            taken.append(box)
            if leader:
                leaders.append(((px, py), end))
            placed.append((i, box))
            break
        else:
            skipped.append(i)
    return placed, skipped


def save_footprint_accuracy(points: list[dict], path, title: str,
                            xlabel: str = "memory footprint per client",
                            ylabel: str = "test accuracy (%)",
                            fill_labels: tuple[str, str] | None = None
                            ) -> tuple[Path, list[int]]:
    """A scatter of footprint (bytes, log axis) against accuracy (fraction) of many runs.

    ``points``: dicts with ``label``, ``method``, ``density`` (float), ``footprint`` (bytes),
    ``accuracy`` (fraction), optional ``filled`` (bool, default True) and ``priority`` (lower
    is labelled first, default 0). Method is the colour, density the marker, fill whatever
    ``fill_labels`` (filled, open) says; each has a block in the legend. Labels go only where
    they collide with nothing (:func:`place_labels`). Returns the path and the indices of the
    points left without a label (a note under the plot names them).
    """
    if not points:
        raise ValueError("save_footprint_accuracy: no points to plot")
    order = sorted(range(len(points)), key=lambda i: (points[i].get("priority", 0), i))
    note, skipped = "", None
    # the note under the plot takes room from the axes, which can move the labels: redraw
    # until the note names exactly the points left without a label
    for _ in range(3):
        fig, ax, xy = _footprint_axes(points, title, xlabel, ylabel, fill_labels, note)
        _, skipped = place_labels(ax, xy, [p["label"] for p in points], order)
        wanted = _unlabelled_note(points, skipped)
        if wanted == note:
            break
        note = wanted
    return _save(fig, path), skipped


def _unlabelled_note(points, skipped) -> str:
    import textwrap

    if not skipped:
        return ""
    names = ", ".join(points[i]["label"] for i in skipped)
    return "\n".join(textwrap.wrap(f"Not labelled (no room beside the point): {names}", 120))


def _footprint_axes(points, title, xlabel, ylabel, fill_labels, note):
    """The scatter of :func:`save_footprint_accuracy` without labels, its layout frozen."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    methods = list(dict.fromkeys(p["method"] for p in points))
    colors = _method_colors(methods)
    markers = _density_markers(p["density"] for p in points)
    densities = list(markers)
    scale, unit = _byte_unit(max(p["footprint"] for p in points))
    fig = _figure(*SIZES["footprint"])
    ax = fig.add_subplot(1, 1, 1)
    xy = [(p["footprint"] / scale, 100 * p["accuracy"]) for p in points]
    for p, (x, y) in zip(points, xy):
        c = colors[p["method"]]
        ax.scatter([x], [y], s=34, marker=markers[float(p["density"])], zorder=3,
                   facecolors=c if p.get("filled", True) else "white", edgecolors=c,
                   linewidths=1.2)
    xs, ys = [x for x, _ in xy], [y for _, y in xy]
    ax.set_xscale("log")
    ax.set_xlim(min(xs) / 1.7, max(xs) * 1.6)  # room for a label on either side
    span = max(ys) - min(ys) or 1.0
    ax.set_ylim(min(ys) - 0.12 * span, max(ys) + 0.12 * span)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"{xlabel} ({unit}, log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="major")
    handles = [Line2D([], [], ls="", marker="o", ms=7, color=colors[m], label=m)
               for m in methods]
    handles += [Line2D([], [], ls="", marker=markers[d], ms=7, mfc="0.5", mec="0.5",
                       label="dense" if d >= 1 else f"density {d:g}") for d in densities]
    head = Line2D([], [], ls="")
    blocks = [("method (colour)", handles[:len(methods)]),
              ("density (marker)", handles[len(methods):])]
    if fill_labels:
        blocks.append(("marker fill", [
            Line2D([], [], ls="", marker="o", ms=7, mfc="0.5", mec="0.5", label=fill_labels[0]),
            Line2D([], [], ls="", marker="o", ms=7, mfc="white", mec="0.5",
                   label=fill_labels[1])]))
    # one legend, a block per visual channel under its own heading
    hs, ls = [], []
    for heading, block in blocks:
        hs += [head] + block
        ls += [heading] + [h.get_label() for h in block]
    leg = fig.legend(hs, ls, loc="outside right upper", fontsize=8, frameon=False,
                     handletextpad=0.4)
    for text in leg.get_texts():
        if text.get_text() in {heading for heading, _ in blocks}:
            text.set_fontweight("bold")
    if note:
        fig.supxlabel(note, fontsize=7, color="0.3", x=0.02, ha="left")
    _title(fig, title)
    fig.draw_without_rendering()
    fig.set_layout_engine("none")  # freeze: labels are placed in the final pixels
    return fig, ax, xy
