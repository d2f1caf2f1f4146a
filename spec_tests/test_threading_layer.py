# covers: RNG-1
"""How the parallel kernels run is chosen for speed only: with an OpenMP runtime already loaded
from another file (PyTorch's own copy), Numba's OpenMP layer gets a runtime of its own with
passive waits; with the very runtime Numba's layer links already loaded, refimpl compiles them
serial (and any other parallel Numba code runs on the ``workqueue`` layer); otherwise they run
on Numba's default layer with passive OpenMP waits (refimpl/core/_jit.py, docs/decisions.md).
Every parallel kernel gives the same bytes serial, under either layer and at any thread count,
so a run is bit-identical whichever was chosen (RNG-1)."""

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from refimpl.core._jit import JIT_ENABLED

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not JIT_ENABLED, reason="needs compiled kernels")

# Compiles one uncached parallel function first (Numba re-reads its configuration at a compile),
# then runs the parallel kernel families (the masked conv's wide and generic paths, forward and
# backward; max-pool; batch norm) and the dense conv twins (their data moves compile serial) on
# fixed inputs, and prints the layer Numba used and a digest of the outputs. argv[1]: a shared
# library to load before refimpl ("" for none); argv[2]: threads; argv[3]: "numba-first" to
# import numba before refimpl.
_PROBE = r"""
import ctypes, hashlib, json, sys
if sys.argv[1]:
    ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)
import numpy as np
if sys.argv[3] == "numba-first":
    import numba
from refimpl.core import _jit
import numba

@numba.njit(parallel=True, cache=False)
def fresh(a):
    for i in numba.prange(a.shape[0]):
        a[i] += 1.0
    return a

fresh(np.zeros(64))
from refimpl.kernels import conv as CK, masked_conv as MK, norm as NK, pool as PK
_jit.set_num_threads(int(sys.argv[2]))
rng = np.random.default_rng(7)
h = hashlib.sha256()
def put(*arrays):
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
x = rng.standard_normal((5, 3, 9, 9)).astype(np.float32)
w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
b = rng.standard_normal(6).astype(np.float32)
mask = rng.random(w.shape) < 0.3
index = MK.build_index(mask)
val = MK.gather(w, index)
for stride, pad in (((1, 1), (1, 1)), ((2, 2), (0, 0))):
    geom = (stride, pad, (1, 1), 1)
    for impl in ("np", "jit"):
        y = CK.conv2d_forward(x, w, *geom, impl=impl, bias=b)
        g = rng.standard_normal(y.shape).astype(np.float32)
        put(y, CK.conv2d_grad_input(g, w, x.shape, *geom, impl=impl),
            CK.conv2d_grad_weight(x, g, w.shape, *geom, impl=impl))
    y = MK.masked_conv2d_forward(x, index, val, b, *geom, y.shape)
    dx, dval, db = np.zeros_like(x), np.zeros_like(val), np.zeros_like(b)
    put(y, *MK.masked_conv2d_backward(g, x, index, val, *geom, dx=dx, dval=dval, db=db))
p, arg = PK.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), 4, 4)
put(p, arg, PK.max_pool2d_backward(p, arg, x.shape, (2, 2), (2, 2), (0, 0), (1, 1)))
gb = rng.standard_normal(x.shape).astype(np.float32)
xh, y = NK.bn_forward(x, b[:3], b[3:], w[0, :, 0, 0], b[:3], True)
put(xh, y, NK.bn_grad_input(gb, xh, w[0, :, 0, 0], b[3:], b[:3], b[3:], True),
    NK.bn_grad_input(gb, None, None, b[3:], None, None, False))
import time
busy = []
for _ in range(3):  # a parallel region every 2 ms: spinning workers keep a core busy between them
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(20):
        fresh(np.zeros(64))
        time.sleep(0.002)
    busy.append((time.process_time() - c0) / (time.perf_counter() - t0))
print(json.dumps({"layer": numba.threading_layer(), "choice": _jit.threading_choice(),
                  "serial": _jit.SERIAL_KERNELS, "digest": h.hexdigest(),
                  "busy": min(busy)}))
"""


def _probe(preload: str, threads: int = 2, order: str = "refimpl-first", **env_extra) -> dict:
    """The probe in a fresh process whose environment holds no Numba or OpenMP settings but
    ``env_extra`` (so refimpl's own NUMBA_OPT default is a change Numba sees)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NUMBA_", "OMP_", "GOMP_"))}
    env.update(env_extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _PROBE, preload, str(threads), order], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def numba_layers() -> set:
    """The threading layers numba can load here (omp needs a system OpenMP runtime)."""
    out = subprocess.run([sys.executable, "-c", "import numba.np.ufunc.omppool"],
                         capture_output=True, text=True, timeout=120)
    return {"workqueue"} | ({"omp"} if out.returncode == 0 else set())


def _gomp() -> str:
    lib = ctypes.util.find_library("gomp")
    if lib is None:
        pytest.skip("no libgomp on this machine")
    return lib


def test_a_preloaded_openmp_runtime_makes_the_kernels_serial_with_the_same_bytes():
    plain = _probe("")
    preloaded = _probe(_gomp())
    numba_first = _probe(_gomp(), order="numba-first")  # numba imported before refimpl
    for p in (preloaded, numba_first):
        assert p["serial"] and "already loaded" in p["choice"], p
        assert p["layer"] == "workqueue", p  # other parallel Numba code of the process
    assert not plain["serial"], plain
    assert numba_first["digest"] == preloaded["digest"]
    assert plain["layer"] != "workqueue" or "omp" not in numba_layers(), plain
    assert preloaded["digest"] == plain["digest"]


def test_a_runtime_loaded_from_another_file_leaves_numba_its_own_passive_runtime(tmp_path):
    """PyTorch brings its own copy of libgomp (torch/lib/libgomp.so.1), loaded globally with
    PyTorch's wait policy (its workers spin). Numba's OpenMP layer is then loaded bound to the
    system's runtime (RTLD_DEEPBIND), which reads refimpl's passive default: the kernels stay
    parallel, its workers sleep between kernels, and the bytes do not change."""
    gomp = _gomp()
    found = next((p for p in _library_dirs() if (p / gomp).exists()), None)
    if found is None:
        pytest.skip(f"{gomp} not found on disk")
    vendored = tmp_path / "vendored"
    vendored.mkdir()
    copy = vendored / gomp
    copy.write_bytes((found / gomp).resolve().read_bytes())
    plain = _probe("")
    for order in ("refimpl-first", "numba-first"):
        own = _probe(str(copy), order=order)
        if "omp" not in numba_layers():
            assert own["serial"], own
            continue
        assert not own["serial"] and own["layer"] == "omp", own
        assert "of its own" in own["choice"] and "passive" in own["choice"], own
        assert own["digest"] == plain["digest"]
        assert own["busy"] < 0.5, own  # sleeping workers (spinning ones measured about 1.0)
    shared = _probe(gomp)  # the very file Numba's layer links: one runtime, kernels serial
    assert shared["serial"] and shared["layer"] == "workqueue", shared


def _library_dirs() -> list:
    """Where the dynamic loader looks for system libraries (ldconfig's cache, then the usual)."""
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    except OSError:  # no ldconfig on PATH: the usual directories only
        out = ""
    dirs = [Path(line.rsplit("=>", 1)[1].strip()).parent for line in out.splitlines()
            if "=>" in line and "libgomp" in line]
    return dirs + [Path(p) for p in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib",
                                     "/lib/x86_64-linux-gnu")]


def test_the_users_layer_and_thread_count_are_kept_and_change_no_byte():
    gomp = _gomp()
    base = _probe("", threads=1)
    chosen = _probe(gomp, threads=2, NUMBA_THREADING_LAYER="workqueue")
    assert chosen["layer"] == "workqueue" and "the user's" in chosen["choice"], chosen
    passive = _probe(gomp, threads=2, OMP_WAIT_POLICY="passive")
    assert passive["layer"] != "workqueue" or "omp" not in numba_layers(), passive
    assert not (base["serial"] or chosen["serial"] or passive["serial"])
    assert base["digest"] == chosen["digest"] == passive["digest"]



def test_only_runtimes_under_their_soname_count_as_shared():
    """Numba's OpenMP layer shares a runtime that is loaded under its soname (PyTorch's
    torch/lib/libgomp.so.1); a vendored copy under another name (scikit-learn's
    libgomp-<hash>.so.1.0.0) is a runtime of its own and does not switch the layer."""
    from refimpl.core._jit import shared_openmp

    for name in ("libgomp.so.1", "libgomp.so.1.0.0", "libomp.so", "libomp.so.5", "libiomp5.so"):
        assert shared_openmp(name), name
    for name in ("libgomp-e985bcbb.so.1.0.0", "libgomp-a34b3233.so.1", "libopenblas.so.0",
                 "omppool.cpython-311-x86_64-linux-gnu.so", "libiomp5md.dll"):
        assert not shared_openmp(name), name
