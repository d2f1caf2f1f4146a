# covers: SAP-1, SAP-2, CACHE-1, CACHE-2, TAPE-1, FL-1
"""The conformance recorder on a residual model (docs/conformance.md, "Residual models"): the
scenario with ``model.name=resnet8`` exports, checks against a fresh export of itself, records
the shared cache of a block's first conv and its projection shortcut under both layers (SAP-1),
and a planted divergence inside a block is reported at its step and key.
"""

import json
import shutil

import numpy as np

from refimpl import sap
from refimpl.conformance import binfile
from refimpl.conformance.check import check_dumps
from refimpl.conformance.cli import run_check
from refimpl.conformance.dump import Dump
from spec_tests.conformance_dump import exported

R8 = ("model.name=resnet8",)


def _manifest(d):
    return json.loads((d / "manifest.json").read_text("utf-8"))


def test_resnet8_scenario_exports_and_checks(capsys):
    d = exported(*R8)
    m = _manifest(d)
    arch = m["scenario"]["architecture"]
    assert [a["kind"] for a in arch] == ["conv", "relu", "block", "block", "block", "gap",
                                         "linear"]
    assert arch[3]["shortcut"][0]["name"] == "layer2.0.shortcut" and arch[3]["relu"]
    assert run_check(d) == 0
    assert "OK: 41 steps" in capsys.readouterr().out
    local = next(s for s in m["steps"] if s["kind"] == "local")
    acts = [k for k, _ in local["keys"] if k.startswith("act/")]
    assert acts == [f"act/{i:02d}_{a['kind']}" for i, a in enumerate(arch)]


def test_shared_cache_is_recorded_under_both_layers():
    """SAP-1: the block's first conv and its projection shortcut read one input and hold one
    cache of it; the dump records the same kept set, buffers and bytes for both."""
    d = exported(*R8)
    tensors, _ = binfile.read(str(d / "conformance.bin"))
    step = "r1_c0_s0"
    for part in ("kept", "format", "bits", "values", "nbytes"):
        a = tensors[f"{step}/sap/layer2.0.conv1/{part}"]
        b = tensors[f"{step}/sap/layer2.0.shortcut/{part}"]
        assert np.array_equal(a, b), part
    # the block input is the output of the block before it (top-level layer 2)
    x_in = tensors[f"{step}/act/02_block"].reshape(-1)
    kept = tensors[f"{step}/sap/layer2.0.conv1/kept"]
    assert np.array_equal(kept, np.flatnonzero(sap.keep_mask(x_in,
                                                             sap.keep_count(x_in.size, 0.7))))


def test_dense_caches_inside_blocks_record_their_kept_set():
    """With the dense format the kept set cannot be read from x̂ (a kept zero looks dropped):
    the recorder selects it from each layer's input, inside blocks too (SAP-2, CACHE-1)."""
    d = exported(*R8, "sap.cache_policy=dense")
    tensors, meta = binfile.read(str(d / "conformance.bin"))
    step = "r2_c3_s1"
    names = [n[:-7] for n in meta["scenario"]["prunable"]]
    for name in names:
        xhat = tensors[f"{step}/sap/{name}/values"].reshape(-1)
        kept = tensors[f"{step}/sap/{name}/kept"]
        assert int(tensors[f"{step}/sap/{name}/format"]) == 0
        assert kept.size == sap.keep_count(xhat.size, 0.7)
        assert np.all(np.diff(kept) > 0)
        assert set(np.flatnonzero(xhat)) <= set(kept.tolist()), name
    inner = tensors[f"{step}/sap/layer3.0.conv2/kept"]
    assert inner.size == sap.keep_count(tensors[f"{step}/sap/layer3.0.conv2/values"].size, 0.7)


def test_planted_divergence_inside_a_block_is_reported(tmp_path):
    d = exported(*R8)
    shutil.copytree(d, tmp_path / "dump")
    tensors, meta = binfile.read(str(tmp_path / "dump" / "conformance.bin"))
    key = "r1_c3_s2/grad/layer3.0.conv2.weight"
    tensors[key] = tensors[key] * np.float64(1 + 1e-6)
    binfile.write(str(tmp_path / "dump" / "conformance.bin"), tensors, meta)
    report = check_dumps(Dump.open(tmp_path / "dump" / "conformance.bin"),
                         Dump.open(d / "conformance.bin"))
    assert [(x.step, x.key, x.cls) for x in report.divergences] == \
        [("r1_c3_s2", "grad/layer3.0.conv2.weight", "grad")]
