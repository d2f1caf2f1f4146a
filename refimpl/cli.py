"""The ``fedmef`` command line."""

from __future__ import annotations

import argparse
import importlib
import math
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


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a batch, a class or channel count)."""
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, received {text!r}")
    return v


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a width multiplier)."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, received {text!r}")
    return v


def models_norms() -> tuple[str, ...]:
    from .models import NORMS

    return NORMS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedmef", description="FedMef reference implementation (SPEC.md is the source of "
        "truth for every rule).")
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("models", help="list the model zoo with parameter counts")
    m.add_argument("--in-channels", type=positive_int, default=1)
    m.add_argument("--classes", type=positive_int, default=10)
    m.add_argument("--norms", nargs="+", default=list(models_norms()), choices=models_norms())
    m.add_argument("--width", type=positive_float, default=1.0)
    m.set_defaults(func=_cmd_models)

    # Each further command lives beside the code it drives and registers itself here through
    # ``add_parser(subparsers)``, which must set ``func`` on the parser it adds.
    for module in _COMMAND_MODULES:
        importlib.import_module(module).add_parser(sub)
    return parser


def _os_error(e: OSError) -> str:
    """``<path>: <reason>`` for an operating-system error (the message itself when the error
    names no file, e.g. one raised by our own code with a full sentence)."""
    if e.filename is None:
        return e.strerror or str(e)
    reason = e.strerror or str(e)
    if e.filename2 is not None:
        return f"{e.filename} -> {e.filename2}: {reason}"
    return f"{e.filename}: {reason}"


def main(argv=None) -> int:
    """The one place that turns failures into exit codes: 2 with ``fedmef CMD: error: ...`` for
    bad input and operating-system errors (a read-only or full disk, a path that is a file), 1
    for a run that failed (an error marked ``user_facing``: a client or a Flower run), 130
    for Ctrl-C (also inside a compiled kernel), 0 when a pipe reader stops early. Temporary
    files are removed where they are made (atomic writes, run and dump directories)."""
    from .core._jit import interrupted
    from .core.alloc import keep_freed_memory

    args = build_parser().parse_args(argv)
    keep_freed_memory()  # steps reuse their buffers instead of faulting in fresh pages
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into a reader that stopped early (| head)
        sys.stderr.close()
        return 0
    except ValueError as e:
        print(f"fedmef {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"fedmef {args.command}: error: {_os_error(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if not getattr(e, "user_facing", False):  # a bug: keep its traceback
            raise
        print(f"fedmef {args.command}: error: {e}", file=sys.stderr)
        return 1
    except BaseException as e:
        if not interrupted(e):
            raise
        # a run has logged what its directory holds and how to continue; say it for the rest
        if not getattr(e, "reported", False):
            print(f"fedmef {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
