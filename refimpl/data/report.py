"""The partition record of every run (SPEC DATA-2): per-client label histograms, sizes, a stable
hash, a text table, and a PNG heatmap when matplotlib is installed.

Hash (``report["hash"]``, hex sha256) over this byte string, all integers little-endian:
``b"fedmef-partition/v1\\n"``, then uint64 num_clients, num_classes, num_samples, then per
client in id order: uint64 size, int64[num_classes] histogram, int64[size] sorted indices. It
depends only on the partition (not on the Python/NumPy version or the platform's byte order).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

__all__ = ["partition_report", "partition_hash", "format_report", "save_heatmap",
           "heatmap_figsize", "HEATMAP_DPI"]

_HASH_TAG = b"fedmef-partition/v1\n"


def partition_hash(parts, histograms: np.ndarray, num_samples: int) -> str:
    """The DATA-2 hash of a partition (see module doc). ``histograms`` int (K, C)."""
    K, C = histograms.shape
    h = hashlib.sha256(_HASH_TAG)
    h.update(np.array([K, C, num_samples], dtype="<u8").tobytes())
    for part, hist in zip(parts, histograms, strict=True):
        idx = np.sort(np.asarray(part, dtype=np.int64))
        h.update(np.array([len(idx)], dtype="<u8").tobytes())
        h.update(np.asarray(hist, dtype="<i8").tobytes())
        h.update(idx.astype("<i8").tobytes())
    return h.hexdigest()


def partition_report(labels, parts, num_classes: int, info=None) -> dict:
    """Audit a partition. ``labels`` int (n,); ``parts`` a list of K index arrays into labels.

    Returns a JSON-ready dict: num_clients, num_classes, num_samples, sizes (K ints),
    histograms (K lists of num_classes ints), classes_per_client, disjoint, complete (every
    index exactly once), summary (size and skew statistics), hash (DATA-2), and ``partition``
    (``info.as_dict()`` when a :class:`~refimpl.data.partitioners.PartitionInfo` is given).
    Label skew is the mean total-variation distance between a client's label distribution and
    the whole dataset's (0 = iid proportions, 1 = disjoint supports); empty clients are skipped.
    """
    y = np.asarray(labels, dtype=np.int64)
    C = int(num_classes)
    if y.size and (y.min() < 0 or y.max() >= C):
        raise ValueError(f"partition_report: labels outside [0, {C})")
    hist = np.zeros((len(parts), C), dtype=np.int64)
    seen = np.zeros(len(y), dtype=np.int64)
    for k, part in enumerate(parts):
        idx = np.asarray(part, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(y)):
            raise ValueError(f"partition_report: client {k} has indices outside [0, {len(y)})")
        hist[k] = np.bincount(y[idx], minlength=C)
        np.add.at(seen, idx, 1)
    sizes = hist.sum(axis=1)
    global_p = np.bincount(y, minlength=C) / max(len(y), 1)
    nonempty = sizes > 0
    tv = 0.5 * np.abs(hist[nonempty] / sizes[nonempty, None] - global_p).sum(axis=1)
    ncls = (hist > 0).sum(axis=1)
    report = {
        "num_clients": len(parts), "num_classes": C, "num_samples": int(len(y)),
        "sizes": sizes.tolist(), "histograms": hist.tolist(),
        "classes_per_client": ncls.tolist(),
        "disjoint": bool((seen <= 1).all()), "complete": bool((seen == 1).all()),
        "summary": {
            "min_size": int(sizes.min()) if len(parts) else 0,
            "max_size": int(sizes.max()) if len(parts) else 0,
            "mean_size": float(sizes.mean()) if len(parts) else 0.0,
            "std_size": float(sizes.std()) if len(parts) else 0.0,
            "empty_clients": int((~nonempty).sum()),
            "mean_classes_per_client": float(ncls.mean()) if len(parts) else 0.0,
            "label_skew_tv": float(tv.mean()) if tv.size else 0.0,
        },
        "hash": partition_hash(parts, hist, len(y)),
    }
    if info is not None:
        report["partition"] = info.as_dict()
    return report


def format_report(report: dict, max_rows: int | None = None, class_names=None) -> str:
    """A text table: a header with the hash and summary, then one row per client (size,
    per-class counts, number of classes). ``max_rows`` limits the rows shown (the rest are
    counted in a final line)."""
    C, K, s = report["num_classes"], report["num_clients"], report["summary"]
    lines = [f"partition: {K} clients, {C} classes, {report['num_samples']} samples, "
             f"sha256 {report['hash']}"]
    if "partition" in report:
        p = report["partition"]
        args = ", ".join(f"{k}={p[k]}" for k in ("method", "seed", "alpha", "classes_per_client",
                                                 "min_size", "attempts", "repaired", "moved")
                         if p.get(k) is not None)
        lines.append(f"made by: {args}")
    lines.append(f"sizes: min {s['min_size']}, mean {s['mean_size']:.1f}, max {s['max_size']}, "
                 f"std {s['std_size']:.1f}, empty {s['empty_clients']}; classes per client: "
                 f"mean {s['mean_classes_per_client']:.2f}; label skew (TV): "
                 f"{s['label_skew_tv']:.3f}; disjoint {report['disjoint']}, complete "
                 f"{report['complete']}")
    heads = [str(c) for c in (class_names if class_names is not None else range(C))]
    width = max([len(str(v)) for row in report["histograms"] for v in row] + [1])
    cols = [max(width, len(h)) for h in heads]
    header = " ".join(h.rjust(w) for h, w in zip(heads, cols, strict=True))
    lines.append(f"{'client':>6} {'size':>7}  {header}  #cls")
    rows = range(K) if max_rows is None else range(min(K, max_rows))
    for k in rows:
        counts = " ".join(str(v).rjust(w) for v, w in zip(report["histograms"][k], cols,
                                                                strict=True))
        lines.append(f"{k:>6} {report['sizes'][k]:>7}  {counts}  "
                     f"{report['classes_per_client'][k]:>4}")
    if len(rows) < K:
        lines.append(f"... {K - len(rows)} more clients (full table: --out DIR, partition.txt)")
    return "\n".join(lines)


#: Resolution of :func:`save_heatmap`'s PNG (dots per inch); its size is
#: :func:`heatmap_figsize` inches.
HEATMAP_DPI = 100


def heatmap_figsize(num_clients: int, num_classes: int) -> tuple[float, float]:
    """Width and height in inches of :func:`save_heatmap`'s picture."""
    return (min(5.0 + 0.28 * num_clients, 14.0), min(3.4 + 0.3 * num_classes, 12.0))


def save_heatmap(report: dict, path, class_names=None) -> Path:
    """Write a PNG picture of a partition: each client's share of every class as a heatmap
    (clients on x, classes on y, top to bottom), the client sizes as bars above it, and the
    counts in the cells when they fit. Needs matplotlib (uses its Agg canvas directly, no
    pyplot state); written atomically, the same bytes for the same report."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("save_heatmap needs matplotlib: `pip install "
                                  "matplotlib==3.11.2`.", name="matplotlib") from e
    hist = np.asarray(report["histograms"], dtype=np.int64).reshape(report["num_clients"],
                                                                    report["num_classes"])
    K, C = hist.shape
    sizes = hist.sum(axis=1)
    share = 100.0 * hist / np.maximum(sizes, 1)[:, None]
    names = [str(c) for c in (class_names if class_names is not None else range(C))]
    fig = Figure(figsize=heatmap_figsize(K, C), dpi=HEATMAP_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    top, ax = fig.subplots(2, 1, sharex=True, height_ratios=(1, 3.2))
    top.bar(np.arange(K), sizes, width=0.8, color="0.45")
    top.set_ylabel("examples\nper client")
    top.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
    top.grid(axis="y", alpha=0.3)
    im = ax.imshow(share.T, aspect="auto", interpolation="nearest", cmap="Blues", vmin=0,
                   vmax=100, origin="upper")
    counts = K <= 30 and C <= 20  # the counts fit in the cells: the picture holds the table
    if counts:
        for k in range(K):
            for c in range(C):
                if hist[k, c]:
                    ax.text(k, c, str(hist[k, c]), ha="center", va="center", fontsize=6.5,
                            color="white" if share[k, c] > 55 else "0.15")
    ax.set_xlabel("client (id)")
    ax.set_ylabel("class (label)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if C <= 40:
        ax.set_yticks(range(C), names)
    fig.colorbar(im, ax=ax, label="share of the client's examples (%)", fraction=0.04, pad=0.01)
    p = report.get("partition") or {}
    how = {"dirichlet": f"Dirichlet α = {p.get('alpha')}", "iid": "iid",
           "pathological": f"{p.get('classes_per_client')} classes per client"}.get(
               p.get("method"), p.get("method", ""))
    fig.suptitle(f"label histogram of {K} clients ({how}), {report['num_samples']:,} examples"
                 f"{'; numbers: examples per cell' if counts else ''}\npartition sha256 "
                 f"{report['hash'][:16]}…", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=HEATMAP_DPI, metadata={"Software": None})
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path
