# covers: MEM-5, SAP-2, SAP-3, CACHE-1, CACHE-3, NSC-1, NSC-3, LT-1, LT-2, LT-3, BAE-2, BAE-4, PG-5
"""The C99 port of one client's round (ports/c, docs/porting.md), checked by the conformance kit.

The float32 scenario is exported with the port's plan header; the port is compiled with the
required flags (and again with AddressSanitizer and UndefinedBehaviorSanitizer, which also
poisons every arena buffer outside its planned lifetime), run on the export, and its dump is
compared step by step with the reference. The arena of the header, the port's count of open
bytes and its high-water mark all equal the ledger's training peak (MEM-5). Tests of the tester:
a one-ulp change where the derivation allows none is caught, a change inside the derived
float32 tolerance is not, one just beyond it is. gcc is required (``.ci/run`` installs it).
"""

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from refimpl import memory as M
from refimpl.conformance import binfile, scenario
from refimpl.conformance.check import check_dumps
from refimpl.conformance.dump import Dump
from refimpl.conformance.export import export
from refimpl.conformance.port import port_header
from refimpl.memory_arena import arena_plan, c_header

ROOT = Path(__file__).resolve().parents[1]
PORT = ROOT / "ports" / "c"
F32 = ("run.dtype=float32",)


def _gcc() -> str:
    gcc = shutil.which("gcc")
    assert gcc, "gcc is required for the C port's tests (bash .ci/run installs it)"
    return gcc


def _build(plan: Path, out: Path, sanitize: bool) -> Path:
    args = ["make", "-s", "-C", str(PORT), f"PLAN={plan}", f"BUILD={out}", f"CC={_gcc()}"]
    if sanitize:
        args.append("SANITIZE=1")
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return out / "fedmef_port"


def _run(binary: Path, ref: Path, out: Path) -> dict:
    # LeakSanitizer needs ptrace, which CI containers may deny; the port allocates nothing and
    # the driver frees its two host buffers, so only leak detection is switched off
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0"}
    done = subprocess.run([str(binary), str(ref / "conformance.bin"), str(out)],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "runtime error" not in done.stderr and "Sanitizer" not in done.stderr, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    """The float32 export with its header, the plain and the sanitized build, and their runs."""
    root = tmp_path_factory.mktemp("port")
    ref = root / "reference"
    export(ref, F32, npz=False, c_header=root / "plan.h")
    plain = _build(root / "plan.h", root / "build", sanitize=False)
    checked = _build(root / "plan.h", root / "build-san", sanitize=True)
    return {"root": root, "ref": ref, "header": (root / "plan.h").read_text(),
            "plain": _run(plain, ref, root / "port.bin"),
            "sanitized": _run(checked, ref, root / "port-san.bin")}


def _check(port, candidate: Path):
    return check_dumps(Dump.open(candidate, need_manifest=False), Dump.open(port["ref"]),
                       kinds=("local", "growth"))


def test_port_passes_the_conformance_check(port):
    """Every local step of every sampled client, and the growth scores of the adjustment round,
    match the float32 reference (quantity by quantity, the first divergence with its rules)."""
    report = _check(port, port["root"] / "port.bin")
    assert report.ok, report.format()
    manifest = json.loads((port["ref"] / "manifest.json").read_text())
    kinds = [s["kind"] for s in manifest["steps"]]
    assert len(report.steps) == kinds.count("local") + kinds.count("growth") == 35
    assert {s.name for s in report.steps if s.name.endswith("_grow")} == \
        {"r2_c0_grow", "r2_c2_grow", "r2_c3_grow"}
    extruding = [s for s in report.steps if "marked_norm" in dict(s.entry["keys"])]
    assert len(extruding) == 16 and all(s.first is None for s in extruding)  # BaE steps


def test_sanitized_run_is_clean_and_identical(port):
    """-fsanitize=address,undefined with every arena buffer poisoned outside its planned
    lifetime: no report, and the same dump bit for bit (IEEE float32, no contraction)."""
    assert port["sanitized"] == port["plain"]
    a, _ = binfile.read(str(port["root"] / "port.bin"))
    b, _ = binfile.read(str(port["root"] / "port-san.bin"))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_momentum_weight_decay_index_cache_and_l2_penalty(tmp_path):
    """The other configured paths of the client: SGD with momentum and weight decay (LT-1, the
    momentum buffers in the arena), the index cache format (CACHE-1) and the l2 penalty
    (BAE-2): conformant, and the arena (now with momentum) is still exact."""
    sets = F32 + ("train.momentum=0.9", "train.weight_decay=0.0005", "sap.cache_policy=index",
                  "bae.variant=l2")
    ref = tmp_path / "reference"
    export(ref, sets, npz=False, c_header=tmp_path / "plan.h")
    header = (tmp_path / "plan.h").read_text()
    assert "#define FM_PLAN_MOMENTUM 1" in header and ":momentum" in header
    run = _run(_build(tmp_path / "plan.h", tmp_path / "build", sanitize=False), ref,
               tmp_path / "port.bin")
    report = check_dumps(Dump.open(tmp_path / "port.bin", need_manifest=False), Dump.open(ref),
                         kinds=("local", "growth"))
    assert report.ok, report.format()
    tensors, _ = binfile.read(str(tmp_path / "port.bin"))
    assert int(tensors["r1_c0_s0/sap/conv1/format"]) == 2  # index
    assert run["arena_bytes"] == run["peak_live"] == run["high_water"] > 5925


def test_arena_equals_the_ledger_to_the_byte(port):
    """MEM-5: the header's arena is the ledger's training peak for the scenario's model, batch,
    density and gamma; the port's largest sum of open buffers and its highest byte equal it."""
    cfg = scenario.scenario_config(F32)
    led = M.ledger("cnn", (1, 8, 8), cfg.train.batch_size, density=cfg.sparse.density,
                   gamma=cfg.sap.gamma, policy=cfg.sap.cache_policy, width=cfg.model.width,
                   num_classes=cfg.data.synthetic_classes)
    peak = led.totals["training_peak"]
    assert f"#define FM_PLAN_ARENA_BYTES {peak}u" in port["header"]
    run = port["plain"]
    assert run["arena_bytes"] == run["peak_live"] == run["high_water"] == peak
    assert (run["rounds"], run["clients"]) == (2, 6)


def _plant(port, tmp_path, key, change):
    tensors, meta = binfile.read(str(port["root"] / "port.bin"))
    a = tensors[key].copy()
    change(a.reshape(-1))
    tensors[key] = a
    out = tmp_path / "planted.bin"
    binfile.write(str(out), tensors, meta)
    return _check(port, out)


def test_one_ulp_where_the_derivation_allows_none_is_caught(port, tmp_path):
    """x = (u8/255 − mean)/std is exact in float32 (three correctly rounded operations): one
    ulp of one entry of one batch is a divergence of batch_x (LT-2) at that step."""
    def ulp(a):
        a[5] = np.nextafter(a[5], np.float32(np.inf))

    report = _plant(port, tmp_path, "r2_c3_s6/x", ulp)
    bad = report.divergences
    assert [(d.step, d.key, d.cls, d.rules) for d in bad] == \
        [("r2_c3_s6", "x", "batch_x", ("LT-2",))]
    assert bad[0].index == 5 and 0 < bad[0].max_abs < 1e-6


def test_float32_tolerance_is_the_derived_bound(port, tmp_path):
    """A gradient moved by half the derived tolerance passes; by 1.5 times it, the check
    reports it (TAPE-1, SAP-3, NSC-3) with the derived allowance."""
    manifest = json.loads((port["ref"] / "manifest.json").read_text())
    rtol = manifest["tolerance"]["float32"]["rtol"]
    assert manifest["quantities"]["grad"]["rtol"] == rtol
    ref, _ = binfile.read(str(port["ref"] / "conformance.bin"))
    key = "r1_c3_s5/grad/conv2.weight"
    scale = float(np.abs(ref[key]).max())

    def nudge(factor):
        def change(a):
            i = int(np.argmax(np.abs(a)))
            a[i] = np.float32(a[i] + factor * rtol * scale)
        return change

    assert _plant(port, tmp_path, key, nudge(0.5)).ok
    bad = _plant(port, tmp_path, key, nudge(1.5)).divergences
    assert [(d.step, d.key, d.cls) for d in bad] == [("r1_c3_s5", "grad/conv2.weight", "grad")]
    assert "allowed abs err" in bad[0].detail


def test_derived_tolerance_covers_the_ports_and_float32s_own_error(port):
    """The derivation is an upper bound: the port's worst difference and the float32
    reference's own distance from the float64 reference both lie well inside it."""
    manifest = json.loads((port["ref"] / "manifest.json").read_text())
    tol = manifest["tolerance"]["float32"]
    assert tol["rtol"] == pytest.approx(tol["steps"] * 2 * 2.0**-24 * tol["chain"])
    assert tol["steps"] == 9  # the largest client: 2 epochs of ceil(13/4) batches, + growth
    report = _check(port, port["root"] / "port.bin")
    assert 0 < report.worst_rel < tol["rtol"] / 10


def test_plan_headers_agree_and_unsupported_scenarios_are_refused(port, tmp_path):
    """`fedmef memory --emit-c-header` of the scenario's configuration lists the same buffers
    at the same offsets as the exporter's header; a scenario the port does not implement is
    refused with the reason."""
    plan = arena_plan("cnn", (1, 8, 8), 4, density=0.3, gamma=0.7, width=0.125, num_classes=3)
    mine = c_header(plan)
    def buffers(text):
        return [line for line in text.splitlines() if line.startswith('    X("') and "u, " in line]

    listing, theirs = buffers(mine), buffers(port["header"])
    assert listing == theirs and len(listing) == len(plan.buffers)
    cfg = scenario.scenario_config(F32 + ("bae.variant=authors",))
    data, model, _ = scenario.build(cfg)
    with pytest.raises(ValueError, match="bae.variant l2sq and l2"):
        port_header(cfg, model, data.input_shape)
    cfg = scenario.scenario_config(("model.name=resnet8",) + F32)
    data, model, _ = scenario.build(cfg)
    with pytest.raises(ValueError, match="plain layer chains"):
        port_header(cfg, model, data.input_shape)
    cfg = scenario.scenario_config()  # float64
    data, model, _ = scenario.build(cfg)
    with pytest.raises(ValueError, match="--set run.dtype=float32"):
        port_header(cfg, model, data.input_shape)


SRAM_TABLE = [(b, d, g) for b in (1, 8, 32) for d, g in ((1.0, 0.7), (0.1, 0.7), (0.05, 0.9))]


@pytest.mark.parametrize("batch,density,gamma", SRAM_TABLE)
def test_arena_of_the_sram_table_packs_exactly(batch, density, gamma):
    """MEM-5 for the configurations of docs/porting.md's SRAM table (cnn, 1x28x28): buffers
    alive at one event never overlap, each sits at a multiple of its element size, and the
    highest byte is the training peak, which every event's live bytes reach at most."""
    plan = arena_plan("cnn", (1, 28, 28), batch, density=density, gamma=gamma)
    assert plan.nbytes == M.ledger("cnn", (1, 28, 28), batch, density=density,
                                   gamma=gamma).totals["training_peak"]
    assert max(b.end for b in plan.buffers) == plan.nbytes
    for e in range(len(plan.events)):
        live = sorted((b for b in plan.buffers if b.born <= e <= b.died), key=lambda b: b.offset)
        assert all(a.end <= b.offset for a, b in zip(live, live[1:])), e
        assert sum(b.nbytes for b in live) == plan.events[e]["live"] <= plan.nbytes
    assert all(b.offset % b.align == 0 for b in plan.buffers)
    assert math.prod(plan.grad_region) > 0


def test_porting_doc_figures_are_the_ledgers(port):
    """docs/porting.md: the SRAM table is the ledger's training peak, and the tolerance the
    manifest's derivation (no hand-typed figure drifts)."""
    doc = (ROOT / "docs" / "porting.md").read_text("utf-8")
    rows = [line.split("|")[1:-1] for line in doc.splitlines()
            if line.count("|") == 7 and line.split("|")[1].strip().replace(".", "").isdigit()]
    assert len(rows) == len(SRAM_TABLE)
    for cells in rows:
        d, g, b, peak, kib, fits = (c.strip() for c in cells)
        want = M.ledger("cnn", (1, 28, 28), int(b), density=float(d),
                        gamma=float(g)).totals["training_peak"]
        assert int(peak.replace(",", "")) == want
        assert int(kib.replace(",", "")) == math.ceil(want / 1024)
        size = next(s for s in (2 ** k for k in range(20)) if s * 1024 >= want)
        assert fits == (f"{size // 1024} MiB" if size >= 1024 else f"{size} KiB")
    tol = json.loads((port["ref"] / "manifest.json").read_text())["tolerance"]["float32"]
    assert f"**rtol = {tol['rtol']:.2e}**" in doc
    assert f"| {tol['forward']} |" in doc and f"| {tol['backward']} |" in doc
    assert f"{port['plain']['arena_bytes']:,} bytes" in doc
