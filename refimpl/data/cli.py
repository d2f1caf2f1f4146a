"""``fedmef partition``: split a dataset among clients and print its DATA-2 report.

    fedmef partition --dataset fashion-mnist-bundled --clients 100 --alpha 0.5
    fedmef partition --dataset fashion-mnist --method pathological --classes-per-client 2 --out DIR

With ``--out DIR`` it writes ``partition.json`` (the report, the arguments and the dataset's
checksums), ``partition.txt`` (the full table), ``parts.npz`` (``client_00000`` ... index arrays,
byte-stable) and ``heatmap.png`` (when matplotlib is installed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .bundled import npz_bytes
from .dataset import content_keys
from .loaders import DATASETS, load_dataset
from .partitioners import DEFAULT_MAX_RETRIES, METHODS, partition_with_info
from .report import format_report, partition_report, save_heatmap

__all__ = ["add_parser", "run_partition"]


def add_parser(subparsers):
    """Add the ``partition`` sub-command to an argparse ``subparsers`` (sets ``func``)."""
    p = subparsers.add_parser(
        "partition", help="split a dataset among clients and report it (DATA-1, DATA-2)",
        description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist-bundled", choices=list(DATASETS))
    p.add_argument("--root", default=None, help="data directory or file (loader default)")
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--method", default="dirichlet", choices=list(METHODS))
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    p.add_argument("--classes-per-client", type=int, default=2, help="pathological: c")
    p.add_argument("--min-size", type=int, default=None,
                   help="minimum samples per client, >= 1 (default max(1, min(10, n // (2 * "
                   "clients))))")
    p.add_argument("--max-retries", type=int, default=DEFAULT_MAX_RETRIES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keys", default="content", choices=["content", "index"],
                   help="canonical order: image content (order-independent) or file index")
    p.add_argument("--rows", type=int, default=20, help="table rows printed (all in --out)")
    p.add_argument("--out", type=Path, default=None, help="directory for the report files")
    p.set_defaults(func=run_partition)
    return p


def _json(report: dict) -> str:
    """JSON with one top-level key per line and each client's histogram on one line."""
    lines = []
    for k, v in report.items():
        if k == "histograms":
            rows = ",\n  ".join(json.dumps(r) for r in v)
            lines.append(f' "{k}": [\n  {rows}\n ]')
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def run_partition(args) -> int:
    """Load, partition, report. Returns 0, or 2 when an optional package is missing."""
    try:
        ds = load_dataset(args.dataset, args.root)
    except ModuleNotFoundError as e:
        print(f"fedmef partition: error: {e}", file=sys.stderr)
        return 2
    x, y = (ds.x_train, ds.y_train) if args.split == "train" else (ds.x_test, ds.y_test)
    keys = content_keys(x) if args.keys == "content" else None
    parts, info = partition_with_info(
        y, args.clients, args.method, alpha=args.alpha,
        classes_per_client=args.classes_per_client, min_size=args.min_size, seed=args.seed,
        max_retries=args.max_retries, keys=keys, num_classes=ds.num_classes)
    report = partition_report(y, parts, ds.num_classes, info=info)
    report["dataset"] = {"name": ds.name, "split": args.split, "source": ds.source,
                         "checksums": ds.checksums, "verified": ds.verified,
                         "keys": args.keys}
    print(ds.summary())
    print(format_report(report, max_rows=args.rows, class_names=None))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "partition.json").write_text(_json(report))
        (args.out / "partition.txt").write_text(format_report(report, class_names=ds.classes)
                                                + "\n")
        width = max(5, len(str(len(parts) - 1)))
        (args.out / "parts.npz").write_bytes(
            npz_bytes({f"client_{k:0{width}d}": p for k, p in enumerate(parts)}))
        written = ["partition.json", "partition.txt", "parts.npz"]
        try:
            save_heatmap(report, args.out / "heatmap.png", class_names=ds.classes)
            written.append("heatmap.png")
        except ModuleNotFoundError as e:
            print(f"note: no heatmap ({e})")
        print(f"wrote {', '.join(written)} to {args.out}")
    return 0
