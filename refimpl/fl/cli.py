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
    cache = summary["activation_bytes_max"]  # None when no round completed (diverged at once)
    print(f"activation cache per client (max) "
          f"{'none (no round completed)' if cache is None else human_bytes(cache)}; "
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


def _print_transport(out) -> None:
    """One line on what Flower carried (transport.jsonl), when the run has that file."""
    from .runner import human_bytes, read_metrics

    recs = read_metrics(Path(out) / "transport.jsonl")
    if not recs:
        return
    tot = {k: sum(r[k] for r in recs) for k in ("payload_down", "ledger_down", "mask_resend",
                                                   "payload_up", "ledger_up", "framing_down",
                                                   "framing_up", "seconds")}
    print(f"Flower carried {human_bytes(tot['payload_down'])} down (ledger "
          f"{human_bytes(tot['ledger_down'])} + {human_bytes(tot['mask_resend'])} resent masks) "
          f"and {human_bytes(tot['payload_up'])} up (ledger {human_bytes(tot['ledger_up'])}) in "
          f"{len(recs)} round(s), {tot['seconds'] / len(recs):.1f} s per round; its framing "
          f"{human_bytes(tot['framing_down'])} down, {human_bytes(tot['framing_up'])} up "
          f"({Path(out) / 'transport.jsonl'})")


_FLOWER_ONLY = ("superlink", "root_certificates", "insecure", "min_nodes")


def _cmd_run_flower(args) -> int:
    """``fedmef run --engine flower``: on Flower SuperNodes (refimpl.fl.flower.launch)."""
    from .config import load_config, to_toml
    from .flower import launch

    if args.resume is not None:
        if args.preset or args.config or args.set or args.out or args.overwrite:
            raise ValueError("--resume DIR continues the run in DIR with its own config.toml; "
                             "it takes no --preset, --config, --set, --out or --overwrite")
        out, text = args.resume, None
        cfg = load_config(path=Path(out) / "config.toml") if args.superlink is None else None
    else:
        preset = args.preset if (args.preset or args.config) else "demo"
        cfg = load_config(preset, args.config, args.set)
        out, text = args.out or f"runs/{cfg.run.method}", to_toml(cfg)
    if args.superlink is not None:
        status = launch.submit(text, out, args.superlink, insecure=args.insecure,
                               root_certificates=args.root_certificates,
                               resume=args.resume is not None, overwrite=args.overwrite,
                               node_timeout=args.node_timeout, min_nodes=args.min_nodes or 1)
        print(f"\nFlower {status}; the run directory is {out} on the SuperLink's machine")
        return 0
    if args.insecure or args.root_certificates or args.min_nodes is not None:
        raise ValueError("--insecure, --root-certificates and --min-nodes go with --superlink "
                         "(a federation started elsewhere); on one machine fedmef starts its "
                         "own on 127.0.0.1")
    summary = launch.run_local(text, out, resume=args.resume is not None,
                               overwrite=args.overwrite, supernodes=args.supernodes,
                               num_clients=cfg.data.num_clients,
                               clients_per_round=cfg.train.clients_per_round,
                               node_timeout=args.node_timeout)
    _print_summary(summary, out)
    _print_transport(out)
    return 0


def _cmd_run(args) -> int:
    from .config import key_table, load_config, to_toml
    from .runner import run

    if args.engine == "flower" and not (args.keys or args.show_config):
        return _cmd_run_flower(args)
    given = [f"--{k.replace('_', '-')}" for k in _FLOWER_ONLY if getattr(args, k)]
    if args.engine == "local" and given:
        raise ValueError(f"{', '.join(given)} go with --engine flower")
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
    f = r.add_argument_group("engine", "where the clients train (results do not depend on it; "
                             "docs/flower.md)")
    f.add_argument("--engine", choices=("local", "flower"), default="local",
                   help="local: in this process; flower: on Flower SuperNodes (needs the "
                   "extra fedmef-refimpl[flower])")
    f.add_argument("--supernodes", choices=("slots", "partitions"), default="slots",
                   help="--engine flower on this machine: one SuperNode per client sampled per "
                   "round (slots), or one per client partition, as devices")
    f.add_argument("--node-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="--engine flower: how long the server waits for a SuperNode that "
                   "serves a sampled client")
    f.add_argument("--superlink", metavar="HOST:PORT", default=None,
                   help="--engine flower: submit to this running SuperLink (its SuperNodes run "
                   "on the devices) instead of starting a federation here")
    f.add_argument("--root-certificates", metavar="CA.pem", default=None,
                   help="with --superlink: the CA certificate of the SuperLink's TLS")
    f.add_argument("--insecure", action="store_true",
                   help="with --superlink: the SuperLink runs without TLS (--insecure)")
    f.add_argument("--min-nodes", type=int, default=None, metavar="N",
                   help="with --superlink: SuperNodes to wait for before the first round")
    r.set_defaults(func=_cmd_run)

    c = subparsers.add_parser("compare", help="print a table comparing run directories")
    c.add_argument("dirs", nargs="+", metavar="DIR", help="run directories")
    c.add_argument("--plot", metavar="FILE", default=None,
                   help="also write one plot of the runs' test-accuracy curves (.png, .svg or "
                   ".pdf)")
    c.set_defaults(func=_cmd_compare)
