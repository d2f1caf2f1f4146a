# covers: ERK-2, NSC-1, NSC-3, SAP-2, SAP-3, CACHE-1, LT-3, BAE-2, BAE-4, PG-5, PG-6, PG-7, AGG-1
"""The PyTorch twin (spec_tests/twin_torch.py, independent of refimpl) reproduces the golden
vectors of the whole conformance scenario from its inputs alone: every float quantity within a
relative error of 1e-10 in float64, every integer, index set, mask and cache byte exactly. It
is given only the manifest and the 'inputs' step. The twin with a planted SAP-3 bug is caught at
the first local step's weight gradient."""

import json
import shutil

from refimpl.conformance.check import check_dumps
from refimpl.conformance.dump import Dump

from .conformance_dump import exported, reference
from .tolerances import TORCH_F64_RTOL
from .torch_oracle import torch_or_skip
from .twin_torch import erk_counts, run_twin


def _inputs_only(tmp_path):
    """A copy of the golden dump holding only manifest.json and the 'inputs' step: all the twin
    may read, so it cannot peek at any computed quantity."""
    src, dst = exported(), tmp_path / "inputs_only"
    (dst / "steps").mkdir(parents=True)
    manifest = json.loads((src / "manifest.json").read_text("utf-8"))
    first = manifest["steps"][0]
    assert first["name"] == "inputs"
    shutil.copy(src / "manifest.json", dst / "manifest.json")
    shutil.copy(src / first["file"], dst / first["file"])
    return dst


def test_twin_reproduces_the_golden_vectors(tmp_path):
    torch = torch_or_skip()
    out = run_twin(torch, _inputs_only(tmp_path), tmp_path / "twin")
    report = check_dumps(Dump.open(out, need_manifest=False), reference())
    assert report.ok, report.format()
    assert len(report.steps) == 41 and sum(s.compared for s in report.steps) == 2182
    assert 0 < report.worst_rel <= TORCH_F64_RTOL


def test_twin_with_a_planted_sap_bug_is_caught(tmp_path):
    """Weight gradients from the full input instead of x̂: the forward quantities of the first
    local step still agree, its first weight gradient does not (SAP-3)."""
    torch = torch_or_skip()
    out = run_twin(torch, exported(), tmp_path / "twin", bug="sap_full_input")
    report = check_dumps(Dump.open(out, need_manifest=False), reference())
    first = report.divergences[0]
    assert (first.step, first.key, first.what) == ("r1_c0_s0", "grad/conv1.weight", "value")
    assert "SAP-3" in first.rules and first.max_rel > 1e-6
    assert [s.name for s in report.steps[:3]] == ["inputs", "init", "r1_start"]
    assert all(s.first is None for s in report.steps[:3])


def test_twin_erk_matches_known_counts():
    """ERK-1/2 of the twin on a case worked by hand: at d = 0.3 the 3x3 conv of 1 -> 2
    channels and the 8 -> 3 linear layer are capped dense, the rest share the remainder."""
    counts = erk_counts([(2, 1, 3, 3), (4, 2, 3, 3), (8, 4, 3, 3), (3, 8)], 0.3)
    assert counts == [18, 32, 47, 24] and sum(counts) == round(0.3 * 402)
