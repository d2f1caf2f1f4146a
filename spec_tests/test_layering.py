# covers: TAPE-2, MEM-1
"""The package is layered and its imports point one way (STYLE 14; docs/decisions.md,
"Package layers"): no module imports a module of a higher layer, and no group of modules imports
itself in a circle. Every import counts, including one inside a function (a lazy import that
closes a loop is still a loop). The primitives must own their residual bytes (TAPE-2, MEM-1): so
the ledger sits above the model code whose dry trace it sums, never below it.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Lowest first. A module may import modules of its own layer or below.
LAYERS = (
    ("core", ("refimpl.core",)),
    ("kernels", ("refimpl.kernels",)),
    ("policies", ("refimpl.sap", "refimpl.sparsity")),
    ("ops", ("refimpl.ops",)),
    ("functional", ("refimpl.functional",)),
    ("models and data", ("refimpl.models", "refimpl.data")),
    ("engine, ledger, tools", ("refimpl.memory", "refimpl.memory_cli", "refimpl.fl",
                               "refimpl.conformance", "refimpl.cli", "refimpl")),
    ("public names", ("models", "data_tools")),
)


def _layer(module: str) -> int:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    if best is None:
        raise AssertionError(f"module {module} is in no layer; add it to LAYERS")
    return best


def _modules():
    out = {}
    for top in ("refimpl", "models", "data_tools"):
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path, known) -> set[str]:
    """Project modules ``module`` imports anywhere in its source (resolved, relative too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from .. import x`` names the submodule x (or an attribute of the package): the
            # package itself is not a dependency
            names = ([base] if node.module else []) + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name and name != module:
                found.add(name)
    return found


def _graph():
    mods = _modules()
    return {m: _imports(m, p, mods) for m, p in mods.items()}


def test_no_import_points_up_a_layer():
    graph = _graph()
    up = [f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
          for m, deps in graph.items() for d in sorted(deps)
          # a package's __init__ re-exporting its own submodules is its face, not an arrow up
          if _layer(d) > _layer(m) and not d.startswith(m + ".")]
    assert up == [], "\n".join(up)


def test_no_import_circle():
    graph = _graph()
    # edges from a package face to its own submodules are re-exports, not dependencies back
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == "open":
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """Tests of the tester: an import inside a function and a relative import are both
    resolved, so a lazy import that closes a loop cannot hide."""
    known = {"refimpl", "refimpl.core", "refimpl.core.tape", "refimpl.functional"}
    src = tmp_path / "tape.py"
    src.write_text("def f():\n    from .. import functional\n")
    assert _imports("refimpl.core.tape", src, known) == {"refimpl.functional"}
    assert _layer("refimpl.functional") > _layer("refimpl.core.tape")


@pytest.mark.parametrize("name", ["models", "data_tools"])
def test_public_names_are_the_layered_packages(name):
    import importlib

    public = importlib.import_module(name)
    inner = importlib.import_module({"models": "refimpl.models",
                                     "data_tools": "refimpl.data"}[name])
    assert public.__all__ == inner.__all__
    for attr in public.__all__:
        assert getattr(public, attr) is getattr(inner, attr)
