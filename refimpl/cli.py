"""The ``fedmef`` command line."""

from __future__ import annotations

import argparse
import importlib
import sys

#: Modules that add sub-commands (``fedmef partition``, ``memory``, ``run``, ``compare``, ...).
_COMMAND_MODULES = (
    "refimpl.data.cli",
    "refimpl.memory_cli",
    "refimpl.fl.cli",
    "refimpl.conformance.cli",
)


def _cmd_models(args) -> int:
    from . import models

    print(f"input {args.in_channels} channels, {args.classes} classes; 'prunable' counts the "
          f"conv and linear weights (MASK-1), 'layers' the prunable tensors")
    print(f"{'model':<14}{'norm':<8}{'params':>12}{'prunable':>12}{'layers':>8}")
    for name in models.names():
        for norm in args.norms:
            m = models.build(name, args.in_channels, args.classes, norm=norm, width=args.width)
            print(f"{name:<14}{norm:<8}{m.num_params():>12,}{m.num_prunable():>12,}"
                  f"{len(m.prunable):>8}")
    return 0


def models_norms() -> tuple[str, ...]:
    from .models import NORMS

    return NORMS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedmef", description="FedMef reference implementation (SPEC.md is the source of "
        "truth for every rule).")
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("models", help="list the model zoo with parameter counts")
    m.add_argument("--in-channels", type=int, default=1)
    m.add_argument("--classes", type=int, default=10)
    m.add_argument("--norms", nargs="+", default=list(models_norms()), choices=models_norms())
    m.add_argument("--width", type=float, default=1.0)
    m.set_defaults(func=_cmd_models)

    # Each further command lives beside the code it drives and registers itself here through
    # ``add_parser(subparsers)``, which must set ``func`` on the parser it adds.
    for module in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue  # a command whose module is not part of this checkout yet
        mod.add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"fedmef {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into a reader that stopped early (| head)
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
