"""``fedmef run`` and ``fedmef compare`` (registered by :mod:`refimpl.cli`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_parser"]


def _print_summary(summary: dict, out) -> None:
    from .runner import human_bytes, read_metrics

    acc = summary["final_test_accuracy"]
    print(f"\nrun directory: {out}")
    print(f"method {summary['method']} (norm {summary['norm']}, BaE "
          f"{'on' if summary['bae'] else 'off'}, SAP γ {summary['sap_gamma']:g}, density "
          f"{summary['density']:g}), rounds {summary['rounds_completed']}/{summary['rounds']}, "
          f"{summary['adjustments']} mask adjustment(s)")
    records = read_metrics(Path(out) / "metrics.jsonl")
    if records:
        print(f"train loss {records[0]['train_loss']:.4f} (round 1) -> "
              f"{records[-1]['train_loss']:.4f} (round {records[-1]['round']})")
        evals = [(r["round"], r["test_accuracy"]) for r in records
                 if r["test_accuracy"] is not None]
        if evals:
            print("test accuracy by round: " + ", ".join(f"{t}: {a:.3f}" for t, a in evals))
    if acc is not None:
        print(f"final test accuracy {acc:.4f} (loss {summary['final_test_loss']:.4f}); best "
              f"{summary['best_test_accuracy']:.4f} at round {summary['best_round']}")
    print(f"activation cache per client (max) {human_bytes(summary['activation_bytes_max'])}; "
          f"communication up {human_bytes(summary['bytes_up_total'])}, down "
          f"{human_bytes(summary['bytes_down_total'])}")
    if summary["seconds_per_round"] is not None:
        print(f"{summary['seconds']:.1f} s ({summary['seconds_per_round']:.2f} s per round)")
    _print_pictures(Path(out))


def _print_pictures(out: Path) -> None:
    from .plots import RUN_PICTURES

    found = [(out / name, what) for name, what in RUN_PICTURES if (out / name).exists()]
    if not found:
        print("pictures: none written (the line above the summary says why)")
        return
    print("pictures:")
    width = max(len(str(p)) for p, _ in found)
    for p, what in found:
        print(f"  {str(p):<{width}}  {what}")


def _cmd_run(args) -> int:
    from .config import key_table, load_config, to_toml
    from .runner import run

    if args.keys:
        for key, default, doc in key_table():
            print(f"{key:<26} {json.dumps(default):<24} {doc}")
        return 0
    if args.resume is not None:
        if args.preset or args.config or args.set or args.out or args.overwrite:
            raise ValueError("--resume DIR continues the run in DIR with its own config.toml; "
                             "it takes no --preset, --config, --set, --out or --overwrite")
        summary = run(None, args.resume, resume=True, progress=not args.quiet)
        out = args.resume
    else:
        preset = args.preset if (args.preset or args.config) else "demo"
        cfg = load_config(preset, args.config, args.set)
        if args.show_config:
            sys.stdout.write(to_toml(cfg))
            return 0
        out = args.out or f"runs/{cfg.run.method}"
        summary = run(cfg, out, overwrite=args.overwrite, progress=not args.quiet)
    _print_summary(summary, out)
    return 0


def _cmd_compare(args) -> int:
    from .compare import compare_rows, format_table

    if args.plot:
        from .plots import check_plot_path

        check_plot_path(args.plot)
    print(format_table(compare_rows(args.dirs)))
    if args.plot:
        from .compare import save_compare_plot

        print(f"plot of the test-accuracy curves: {save_compare_plot(args.dirs, args.plot)}")
    return 0


def add_parser(subparsers) -> None:
    """Add ``run`` and ``compare`` to the ``fedmef`` command."""
    from .config import preset_names

    r = subparsers.add_parser(
        "run", help="run a federated experiment (FedMef, a baseline or an ablation)",
        description="Run a federated experiment. Configuration layers: --preset (default demo "
        "when no --config is given), then --config FILE (TOML), then --set section.key=value. "
        "`fedmef run --keys` lists every key.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--preset", choices=preset_names(), default=None,
                   help="built-in configuration to start from")
    r.add_argument("--config", metavar="FILE", default=None, help="TOML configuration file")
    r.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override one key, e.g. --set train.lr=0.05 (repeatable)")
    r.add_argument("--out", metavar="DIR", default=None,
                   help="run directory (default runs/<method>)")
    r.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the run in DIR from its newest checkpoint")
    r.add_argument("--overwrite", action="store_true",
                   help="replace an existing run directory")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--show-config", action="store_true",
                   help="print the resolved configuration as TOML and exit")
    r.add_argument("--keys", action="store_true", help="list every configuration key and exit")
    r.set_defaults(func=_cmd_run)

    c = subparsers.add_parser("compare", help="print a table comparing run directories")
    c.add_argument("dirs", nargs="+", metavar="DIR", help="run directories")
    c.add_argument("--plot", metavar="FILE", default=None,
                   help="also write one plot of the runs' test-accuracy curves (.png, .svg or "
                   ".pdf)")
    c.set_defaults(func=_cmd_compare)
