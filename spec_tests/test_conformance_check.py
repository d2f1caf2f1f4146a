# covers: TAPE-1, SAP-3, NSC-3, SAP-2, CACHE-1, ERK-2, LT-1, LT-2, BAE-1, BAE-4, PG-5, PG-7
"""`fedmef conformance check`: planted divergences (one value changed in a copy of the golden
dump) are reported at exactly their step, quantity and rules, with max abs/rel errors; values
within tolerance pass; missing, malformed and damaged files give clear results; the command's
exit code is 0 on a match, 1 on a divergence, 2 on an unreadable dump."""

import json
import shutil

import numpy as np
import pytest

from refimpl.cli import main
from refimpl.conformance import binfile
from refimpl.conformance.check import check_dumps
from refimpl.conformance.dump import Dump, DumpError, npz_bytes
from refimpl.conformance.quantities import QUANTITIES

from .conformance_dump import exported, load_step, reference


@pytest.fixture
def dump(tmp_path):
    """A private copy of the golden dump to plant divergences in."""
    return shutil.copytree(exported(), tmp_path / "candidate")


def _edit(d, step, fn):
    entry, arrays = load_step(d, step)
    fn(arrays)
    (d / entry["file"]).write_bytes(npz_bytes(arrays))
    return entry


def _check(d):
    return check_dumps(Dump.open(d), reference())


def _bump(key, at, delta):
    def fn(arrays):
        a = arrays[key].copy()
        a.reshape(-1)[at] += delta
        arrays[key] = a
    return fn


def _flip(key, at):
    def fn(arrays):
        a = arrays[key].copy()
        a.reshape(-1)[at] = ~a.reshape(-1)[at] if a.dtype == bool else a.reshape(-1)[at] ^ 1
        arrays[key] = a
    return fn


PLANTED = [
    ("r1_c3_s1", "grad/conv2.weight", "grad", _bump("grad/conv2.weight", 5, 1e-7), 1e-7),
    ("r2_c0_s1", "lr", "lr", _bump("lr", 0, 5e-11), 5e-11),
    ("r2_c2_s0", "sap/conv3/kept", "sap_kept", _bump("sap/conv3/kept", -1, 1), 1),
    ("r1_c1_s0", "sap/fc/bits", "sap_buffer", _flip("sap/fc/bits", 0), 1),
    ("init", "erk_counts", "erk_counts", _bump("erk_counts", 1, 1), 1),
    ("r2_start", "marked/conv3", "marked", _bump("marked/conv3", 0, 1), 1),
    ("r2_c3_grow", "pair_value/conv2", "pair_value", _bump("pair_value/conv2", 2, -3e-9), 3e-9),
    ("r2_server", "mask/conv2", "new_mask", _flip("mask/conv2", 7), 1),
    ("r2_c3_s5", "penalty_grad/conv3", "penalty_grad", _bump("penalty_grad/conv3", 3, 1e-9),
     1e-9),
    ("inputs", "r1/c0/shuffle/e1", "in.shuffle", _bump("r1/c0/shuffle/e1", 0, 1), 1),
]


@pytest.mark.parametrize("step,key,cls,plant,delta", PLANTED, ids=[p[1] for p in PLANTED])
def test_planted_divergence_is_reported_exactly(dump, step, key, cls, plant, delta):
    _edit(dump, step, plant)
    report = _check(dump)
    assert not report.ok
    [d] = report.divergences  # exactly one step diverges: the planted one
    assert (d.step, d.key, d.cls, d.what) == (step, key, cls, "value")
    assert d.rules == QUANTITIES[cls].rules
    assert d.max_abs == pytest.approx(abs(delta), rel=1e-3)
    assert d.max_rel > 0
    text = report.format()
    assert f"DIVERGES {step}" in text and f"{key} [{cls}: {', '.join(d.rules)}]" in text
    assert f"the first divergence is at step {step}, quantity {key}" in text


def test_first_divergence_of_a_step_is_the_earliest_quantity(dump):
    """Keys are compared in computation order: a forward quantity diverging before a gradient
    is the one reported; the others are counted."""
    def plant(arrays):
        _bump("grad/fc.weight", 0, 1.0)(arrays)
        _bump("act/03_conv", 4, 1.0)(arrays)
    _edit(dump, "r1_c0_s2", plant)
    [d] = _check(dump).divergences
    assert (d.step, d.key, d.rules) == ("r1_c0_s2", "act/03_conv",
                                        ("CONV-1", "CONV-5", "NSC-1", "NSC-4"))
    assert "1 further quantity of 60 differ" in _check(dump).format()


def test_within_tolerance_passes_and_beyond_fails(dump):
    """Normwise float tolerance: |a − b| <= 1e-15 + 1e-10·max|ref|."""
    _, arrays = load_step(exported(), "r2_c0_s3")
    scale = float(np.abs(arrays["grad/conv3.weight"]).max())
    _edit(dump, "r2_c0_s3", _bump("grad/conv3.weight", 11, 0.5e-10 * scale))
    assert _check(dump).ok
    _edit(dump, "r2_c0_s3", _bump("grad/conv3.weight", 11, 1e-10 * scale))
    [d] = _check(dump).divergences
    assert d.key == "grad/conv3.weight" and d.max_rel == pytest.approx(1.5e-10, rel=1e-3)


@pytest.mark.parametrize("change,what,detail", [
    (lambda a: a.pop("loss"), "missing", "missing from the candidate's step"),
    (lambda a: a.update(loss=np.zeros(2)), "shape", "shape (2,), expected ()"),
    (lambda a: a.update({"sap/conv1/kept": a["sap/conv1/kept"].astype(float)}), "dtype",
     "dtype float64, expected an integer or boolean array"),
    (lambda a: a.update(loss=np.float64("nan")), "nonfinite", "non-finite value nan"),
])
def test_malformed_quantities_are_divergences(dump, change, what, detail):
    _edit(dump, "r1_c1_s1", change)
    [d] = _check(dump).divergences
    assert d.step == "r1_c1_s1" and d.what == what and detail in d.detail


def test_integer_width_does_not_matter(dump):
    """Another implementation may write int32 indices or uint8 masks: values are compared."""
    def narrow(arrays):
        arrays["sap/conv1/kept"] = arrays["sap/conv1/kept"].astype(np.int32)
        arrays["batch_index"] = arrays["batch_index"].astype(np.uint16)
    _edit(dump, "r1_c1_s1", narrow)
    assert _check(dump).ok


def test_missing_step_file_is_reported_and_the_rest_compared(dump):
    entry = next(s for s in json.loads((dump / "manifest.json").read_text())["steps"]
                 if s["name"] == "r1_c3_s4")
    (dump / entry["file"]).unlink()
    report = _check(dump)
    [d] = report.divergences
    assert d.step == "r1_c3_s4" and d.what == "missing_step" and entry["file"] in d.detail
    assert len(report.steps) == len(json.loads((dump / "manifest.json").read_text())["steps"])


def test_binary_only_dump_is_checked_too(tmp_path):
    """A C implementation may write only conformance.bin (or pass the file itself)."""
    tensors, meta = binfile.read(str(exported() / "conformance.bin"))
    key = "r2_c2_s3/param/conv3.gain"
    tensors[key] = tensors[key].copy()
    tensors[key][2] *= 1 + 1e-6
    binfile.write(str(tmp_path / "mine.bin"), tensors, {})  # no manifest: optional here
    report = check_dumps(Dump.open(tmp_path / "mine.bin", need_manifest=False), reference())
    [d] = report.divergences
    assert (d.step, d.key, d.rules) == ("r2_c2_s3", "param/conv3.gain",
                                        ("LT-1", "LT-3", "MASK-3"))
    assert report.candidate.endswith("(bin)")


def test_damaged_and_missing_files_are_clear_errors(dump, tmp_path):
    with pytest.raises(DumpError, match="does not exist"):
        Dump.open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DumpError, match="holds neither steps/\\*.npz nor conformance.bin"):
        Dump.open(tmp_path / "empty")
    entry = _edit(dump, "r1_c0_s0", lambda a: None)
    (dump / entry["file"]).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DumpError, match=r"r1_c0_s0.npz' is damaged or not an .npz file"):
        _check(dump)
    bad_bin = tmp_path / "cut.bin"
    bad_bin.write_bytes((exported() / "conformance.bin").read_bytes()[:5000])
    with pytest.raises(DumpError, match="cut.bin' is damaged: .*truncated tensor file"):
        Dump.open(bad_bin)
    binfile.write(str(tmp_path / "bare.bin"), {"inputs/data/mean": np.zeros(1)}, {})
    with pytest.raises(DumpError, match="bare.bin' has no manifest .* pass --against REF"):
        Dump.open(tmp_path / "bare.bin")
    (dump / "manifest.json").write_text("{not json")
    with pytest.raises(DumpError, match="manifest.json' is not valid JSON"):
        Dump.open(dump)
    (dump / "manifest.json").write_text(json.dumps({"format": "something-else/9"}))
    with pytest.raises(DumpError, match="format 'something-else/9', expected "
                                        "'fedmef-conformance/1'"):
        Dump.open(dump)


def test_dump_of_another_scenario_is_refused(dump):
    m = json.loads((dump / "manifest.json").read_text())
    m["scenario"]["config"]["train"]["lr"] = 0.2
    (dump / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DumpError, match="exported for another scenario configuration"):
        _check(dump)


def test_command_exit_codes(dump, tmp_path, capsys):
    ref = str(exported())
    assert main(["conformance", "check", str(dump), "--against", ref]) == 0
    assert "OK: 41 steps" in capsys.readouterr().out
    _edit(dump, "r1_c3_s1", _bump("grad/conv2.weight", 5, 1e-7))
    assert main(["conformance", "check", str(dump), "--against", ref]) == 1
    out = capsys.readouterr().out
    assert "DIVERGES r1_c3_s1 (round 1, client 3, local step 1): grad/conv2.weight [grad: " \
           "TAPE-1, SAP-3, NSC-3]: max abs err 1.000e-07" in out
    assert main(["conformance", "check", str(tmp_path / "missing")]) == 2
    assert "fedmef conformance: error:" in capsys.readouterr().err


def test_check_without_reference_regenerates_ours(dump, capsys):
    assert main(["conformance", "check", str(dump)]) == 0
    out = capsys.readouterr().out
    assert "reference: fresh export of this checkout" in out and "OK: 41 steps" in out
