"""``fedmef conformance export DIR`` and ``fedmef conformance check DIR [--against REF]``
(registered by :mod:`refimpl.cli`; docs/conformance.md)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

__all__ = ["add_parser", "run_check"]


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*")) if path.is_dir() else path.stat().st_size


def _cmd_export(args) -> int:
    from .dump import BINFILE, MANIFEST, STEPS
    from .export import export

    manifest = export(args.dir, args.set, overwrite=args.overwrite, npz=not args.bin_only,
                      c_header=args.c_header)
    out = Path(args.dir)
    keys = sum(len(s["keys"]) for s in manifest["steps"])
    sc = manifest["scenario"]
    print(f"scenario {sc['name']} ({sc['rounds_run']} rounds"
          f"{', sets ' + ' '.join(sc['sets']) if sc['sets'] else ''}): "
          f"{len(manifest['steps'])} steps, {keys} quantities")
    for name in (MANIFEST, STEPS, BINFILE):
        if (out / name).exists():
            print(f"  {out / name}  {_size(out / name) / 1024:.0f} KiB")
    if args.c_header:
        print(f"  {args.c_header}  the C port's plan header (docs/porting.md)")
    return 0


def run_check(directory, against=None, verbose: bool = False, out=print, kinds=None) -> int:
    """Compare the dump in ``directory`` with ``against`` (a dump directory or .bin file), or
    with a fresh export of the same scenario; print the report; 0 on a match, 1 otherwise.
    ``kinds``: compare only the steps of these kinds (e.g. ``("local", "growth")`` for a port
    of the client)."""
    from .check import check_dumps
    from .dump import Dump, DumpError
    from .export import export

    candidate = Dump.open(directory, need_manifest=against is None)
    if against is not None:
        report = check_dumps(candidate, Dump.open(against), kinds)
    else:
        sets = _manifest_sets(candidate)
        with tempfile.TemporaryDirectory(prefix="fedmef-conformance-") as tmp:
            ref = Path(tmp) / "reference"
            try:
                export(ref, sets)
            except ValueError as e:  # a bad override read from the candidate's manifest
                raise DumpError(f"{_manifest_name(candidate)}: its scenario.sets {sets} cannot "
                                f"be exported: {e}; fix the manifest or pass --against REF"
                                ) from None
            report = check_dumps(candidate, Dump.open(ref), kinds)
            report.reference = f"fresh export of this checkout (scenario sets {sets})"
    out(report.format(verbose))
    return 0 if report.ok else 1


def _manifest_name(dump) -> str:
    p = Path(dump.path)
    return str(p / "manifest.json") if (p / "manifest.json").exists() else \
        f"the manifest in {str(dump.path)!r}"


def _manifest_sets(dump) -> list[str]:
    """The scenario overrides recorded in a dump's manifest, checked to be a list of strings."""
    from .dump import DumpError

    scenario = dump.manifest.get("scenario")
    sets = scenario.get("sets", []) if isinstance(scenario, dict) else None
    if not (isinstance(sets, list) and all(isinstance(x, str) for x in sets)):
        raise DumpError(f"{_manifest_name(dump)}: scenario.sets must be a list of "
                        f"\"section.key=value\" strings, received {sets!r}")
    return sets


def _cmd_check(args) -> int:
    from .check import STEP_KINDS

    kinds = None
    if args.steps:
        kinds = tuple(k.strip() for k in args.steps.split(",") if k.strip())
        unknown = [k for k in kinds if k not in STEP_KINDS]
        if unknown or not kinds:
            raise ValueError(f"--steps {args.steps!r}: unknown step kind(s) {unknown}; valid: "
                             f"{', '.join(STEP_KINDS)} (comma-separated, e.g. local,growth)")
    return run_check(args.dir, args.against, args.verbose, kinds=kinds)


def add_parser(subparsers) -> None:
    """Add ``conformance`` with its ``export`` and ``check`` sub-commands."""
    c = subparsers.add_parser(
        "conformance", help="golden vectors of a tiny FedMef run, and a step-by-step checker",
        description="Cross-implementation conformance kit (docs/conformance.md): `export` dumps "
        "a tiny deterministic FedMef scenario step by step; `check` compares another "
        "implementation's dump with ours and reports the first divergence of every step.")
    sub = c.add_subparsers(dest="conformance_command", required=True)

    e = sub.add_parser("export", help="write the golden vectors of the scenario",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("dir", metavar="DIR", help="output directory (created; must be empty)")
    e.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override one scenario key, e.g. --set bae.variant=authors (repeatable)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing dump in DIR")
    e.add_argument("--c-header", metavar="FILE", default=None,
                   help="also write the C port's plan header of this scenario (arena offsets "
                   "from the ledger, training hyperparameters; docs/porting.md)")
    e.add_argument("--bin-only", action="store_true",
                   help="write manifest.json and conformance.bin only, no steps/*.npz (the "
                   "committed golden dump, refimpl/conformance/golden, is written this way)")
    e.set_defaults(func=_cmd_export)

    k = sub.add_parser("check", help="compare a dump with ours; exit 1 on any divergence")
    k.add_argument("dir", metavar="DIR", help="the dump to check (a directory with steps/*.npz "
                   "or conformance.bin, or a .bin file)")
    k.add_argument("--against", metavar="REF", default=None,
                   help="reference dump (default: a fresh export of this checkout, with the "
                   "scenario overrides recorded in DIR's manifest)")
    k.add_argument("--verbose", action="store_true", help="also list the matching steps")
    k.add_argument("--steps", metavar="KINDS", default=None,
                   help="compare only the steps of these kinds, comma-separated (inputs, init, "
                   "round_start, local, growth, server); e.g. local,growth for a port of the "
                   "client's round")
    k.set_defaults(func=_cmd_check)
