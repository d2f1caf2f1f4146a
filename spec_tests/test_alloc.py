# covers: RNG-1
"""Keeping freed memory (refimpl/core/alloc.py, set by every CLI command) is for speed only: a
run gives the same bytes with glibc's defaults (FEDMEF_KEEP_FREED_MEMORY=0), and the switch
says what it did."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_STATE = "from refimpl.core.alloc import keep_freed_memory as k; a = k(); print(a); " \
         "assert k() is a"


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False


def _state(env_value):
    env = {**os.environ}
    env.pop("FEDMEF_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["FEDMEF_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", _STATE], env=env, cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_switch_says_what_it_did_and_can_be_turned_off():
    assert _state("0") == "malloc defaults (FEDMEF_KEEP_FREED_MEMORY=0)"
    on = _state(None)
    if _glibc():
        assert on.startswith("glibc malloc keeps freed memory"), on
    else:
        assert on.startswith("malloc defaults"), on


@pytest.mark.parametrize("method, sets", [("fedavg", ["sparse.density=auto", "model.norm=bn"]),
                                          ("fedmef", [])])
def test_a_run_is_byte_identical_with_malloc_defaults(tmp_path, method, sets):
    models = []
    for value in ("1", "0"):
        out = tmp_path / f"run{value}"
        cmd = [sys.executable, "-m", "refimpl.cli", "run", "--preset", "smoke", "--quiet",
               "--out", str(out), "--set", f"run.method={method}"]
        for s in sets:
            cmd += ["--set", s]
        env = {**os.environ, "FEDMEF_KEEP_FREED_MEMORY": value}
        r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        models.append(((out / "model.npz").read_bytes(), (out / "metrics.jsonl").read_bytes()))
    assert models[0] == models[1]
