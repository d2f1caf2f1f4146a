# covers: RNG-1
"""A run's bytes are a function of the code it runs (RNG-1), so a cached kernel build must never
outlive a change to the code inside it. Numba keys a cached build by its own source file; a
kernel that calls a compiled helper of another file (refimpl/core/_jit.py's vectors and bit
operations, kernels/sums.py's pairwise sum) also carries the hash of the files in
``HELPER_SOURCES`` in its stamp (refimpl/core/_jit.py), and so do the compiled functions of
the tests and benchmarks, which call the helpers as well."""

import importlib.util
import inspect
import os
import pkgutil
from pathlib import Path

import pytest

from refimpl.core import _jit

pytestmark = pytest.mark.skipif(not _jit.JIT_ENABLED, reason="needs compiled kernels")

PACKAGE = Path(_jit.__file__).resolve().parents[1]


def _compiled(obj):
    """The numba dispatchers behind ``obj`` (a dispatcher or a parallel/serial pair)."""
    import numba.core.registry

    if isinstance(obj, _jit._ByThreads):
        return [obj.parallel, obj.serial]
    if isinstance(obj, numba.core.registry.CPUDispatcher):
        return [obj]
    return []


def _kernels_of(module):
    """Every compiled function a module holds: as attributes, or in dicts of dicts of them."""
    found, stack = [], list(vars(module).values())
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            stack.extend(obj.values())
        else:
            found.extend(_compiled(obj))
    return found


def _kernel_modules():
    import refimpl.kernels

    names = ["refimpl.sap"] + [f"refimpl.kernels.{m.name}"
                               for m in pkgutil.iter_modules(refimpl.kernels.__path__)]
    return [importlib.import_module(n) for n in ["refimpl.kernels"] + names]


def test_every_file_whose_compiled_code_a_kernel_calls_is_a_helper_source():
    """Each global a compiled kernel names that is a function of another file of the package:
    that file must be in HELPER_SOURCES, or editing it would leave stale builds running."""
    needed = {}
    for module in _kernel_modules():
        own = Path(module.__file__).resolve()
        for kernel in _kernels_of(module):
            py = kernel.py_func
            for name in py.__code__.co_names:
                obj = py.__globals__.get(name)
                if obj is None or not callable(obj) or isinstance(obj, type):
                    continue
                target = _compiled(obj)[0].py_func if _compiled(obj) else obj
                try:
                    where = Path(inspect.getfile(target)).resolve()
                except TypeError:  # a builtin
                    continue
                if where != own and PACKAGE in where.parents:
                    needed.setdefault(where.relative_to(PACKAGE).as_posix(), set()).add(
                        f"{module.__name__}.{py.__name__} -> {name}")
    assert needed, "the walk found no kernel calling another file's code: it is broken"
    missing = {f: sorted(uses) for f, uses in needed.items() if f not in _jit.HELPER_SOURCES}
    assert not missing, f"add these files to refimpl/core/_jit.py HELPER_SOURCES: {missing}"


def test_refimpl_kernels_carry_the_helper_stamp_and_other_functions_do_not(tmp_path):
    from refimpl.kernels import masked_conv

    assert _jit.HELPER_STAMPED  # the pinned numba's cache API (pyproject.toml)

    fn = masked_conv._wide_forward_naive
    loc = _jit._HelperStampedLocator.from_function(fn, inspect.getfile(fn))
    assert loc is not None
    inner, helpers = loc.get_source_stamp()
    assert helpers == _jit.helpers_stamp() and inner  # numba's own stamp of the file, kept
    here = _jit._HelperStampedLocator.from_function(_vectors_probe, __file__)
    assert here is not None and here.get_source_stamp()[1] == helpers  # tests call helpers too
    outside = tmp_path / "elsewhere.py"
    outside.write_text("def f(x):\n    return x\n")
    assert _jit._HelperStampedLocator.from_function(lambda x: x, str(outside)) is None


def _vectors_probe(a):
    return _jit.vec_lanes(a)


def test_helpers_stamp_follows_every_byte_of_every_helper_file(tmp_path):
    for name in _jit.HELPER_SOURCES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x = 1\n")
    first = _jit.helpers_stamp(str(tmp_path))
    assert _jit.helpers_stamp(str(tmp_path)) == first
    for name in _jit.HELPER_SOURCES:
        path = tmp_path / name
        path.write_bytes(b"x = 2\n")  # the same size: the content decides, not the size
        os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000))
        changed = _jit.helpers_stamp(str(tmp_path))
        assert changed != first, name
        first = changed


def test_a_changed_helper_file_recompiles_a_cached_kernel(tmp_path, monkeypatch):
    """End to end with numba's cache on disk: a kernel file under a stand-in package root, cached;
    loaded again unchanged, it is a cache hit; after a helper file changes, a miss (rebuilt)."""
    import numba

    root = tmp_path / "pkg"
    for name in _jit.HELPER_SOURCES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("# helper\n")
    (root / "kern.py").write_text("def kern(x):\n    return x * 2.0 + 1.0\n")
    monkeypatch.setattr(_jit._HelperStampedLocator, "root", str(root))
    monkeypatch.setattr(_jit._HelperStampedLocator, "scope", (str(root),))
    spec = importlib.util.spec_from_file_location("refimpl_cache_probe_kern", root / "kern.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def run():
        d = numba.njit(cache=True)(mod.kern)
        assert d(3.0) == 7.0
        return sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values())

    assert run() == (0, 1)  # first build
    assert run() == (1, 0)  # from the cache
    helper = root / _jit.HELPER_SOURCES[0]
    helper.write_text("# helper, changed\n")
    assert run() == (0, 1)  # the helper changed: rebuilt, not the stale build
    assert run() == (1, 0)
