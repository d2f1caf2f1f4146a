# covers: META
"""The suite's own index (docs/testing.md): every test file names the SPEC rules it checks in a
valid ``# covers:`` header, every SPEC rule is covered by some test file (or listed as pending
with a reason), the generated table in docs/testing.md is current, and the mutant list of
``make mutants`` names real rules and real test files. The index itself is tested on planted
files (a missing header, an unknown rule id)."""

import pytest

from . import mutants, rule_index
from .rule_index import (
    DOC,
    PENDING,
    ROOT,
    SPEC_RULES,
    build_index,
    covers_header,
    find_spec,
    problems,
    render,
    spec_rule_ids,
    splice,
    suite_files,
)


def test_every_test_file_has_a_covers_header_of_known_rules():
    for path in suite_files():
        ids = covers_header(path)  # raises on a missing or empty header
        unknown = [r for r in ids if r not in SPEC_RULES and r != rule_index.META]
        assert not unknown, f"{path.name}: unknown rule ids {unknown}"


def test_every_spec_rule_is_covered_or_pending_with_a_reason():
    index = build_index()
    assert problems(index) == []
    assert all(reason.strip() for reason in PENDING.values())


def test_docs_testing_table_is_current():
    text = DOC.read_text(encoding="utf-8")
    assert splice(text, render(build_index())) == text, \
        "docs/testing.md is stale: run `make rules`"


def test_spec_rule_ids_match_spec_md():
    spec = find_spec()
    if spec is None:
        pytest.skip("SPEC.md not found (set FEDMEF_SPEC to its path to compare rule ids)")
    assert spec_rule_ids(spec.read_text(encoding="utf-8")) == list(SPEC_RULES)


def test_the_index_catches_planted_problems(tmp_path, monkeypatch):
    """Tests of the tester: an uncovered rule, an unknown id and a missing header are found; a
    pending rule with its reason is not a problem."""
    monkeypatch.setitem(PENDING, "MEM-5", "pending: planted for this test")
    (tmp_path / "test_a.py").write_text("# covers: PG-7, XYZ-9\ndef test_pg7_x():\n"
                                        "    '''PG-7 and MASK-3.'''\n")
    index = build_index(tmp_path)
    assert index["PG-7"] == [("test_a.py", ["test_pg7_x"])]
    assert index["MASK-3"] == []  # only the header counts as covering
    found = "\n".join(problems(index))
    assert "XYZ-9" in found and "CONV-1: no test file covers it" in found
    assert "MEM-5" not in found  # pending, with its reason
    (tmp_path / "test_b.py").write_text("import numpy\n")
    with pytest.raises(ValueError, match="first line must be '# covers: RULE-IDS'"):
        build_index(tmp_path)
    assert "SPEC.md defines other rule ids" in "\n".join(
        problems(build_index(ROOT / "spec_tests"), ["CONV-1"]))


def test_spec_rule_ids_parser():
    text = "## 0\n- CONV-1 Layouts: ...\n  - not-a-rule\n- MASK-3 Invariant ...\nsee PG-7\n"
    assert spec_rule_ids(text) == ["CONV-1", "MASK-3"]


def test_mutants_name_real_rules_files_and_tests():
    seen = set()
    for m in mutants.MUTANTS:
        assert m.id not in seen, f"duplicate mutant id {m.id}"
        seen.add(m.id)
        assert m.rule in SPEC_RULES, f"{m.id}: unknown rule {m.rule}"
        assert m.tests, f"{m.id}: names no tests"
        for t in m.tests:
            assert (ROOT / t.split("::")[0]).is_file(), f"{m.id}: no test file {t}"
        for e in m.edits:
            assert (ROOT / e.file).is_file(), f"{m.id}: no file {e.file}"
            assert e.old != e.new, f"{m.id}: an edit that changes nothing"
            assert not e.file.startswith("spec_tests/"), f"{m.id}: mutates a test"
