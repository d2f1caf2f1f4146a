# covers: DATA-1, DATA-2, RNG-1, CONV-4
"""Partitioners (DATA-1) and their report (DATA-2): exact disjoint cover, determinism per seed,
independence of the dataset's order, the minimum client size, bounded time for alpha in
[0.01, 100] and up to 1,000 clients, randomness only from PARTITION streams (RNG-1)."""

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refimpl.data.partitioners as P
from refimpl import data as data_tools
from refimpl.core.rng import Purpose
from refimpl.data import partition, partition_report, partition_with_info

METHODS = st.sampled_from(P.METHODS)
ALPHAS = st.floats(-2.0, 2.0).map(lambda e: float(10.0 ** e))  # 0.01 .. 100, log-uniform
SEEDS = st.integers(0, 2**32 - 1)


@st.composite
def labelled(draw, max_n=400, max_classes=12):
    """(labels int64 (n,), num_clients): labels constructed over a few classes, some absent;
    at least one sample per client (fewer is an error, see test_no_client_is_ever_empty)."""
    c = draw(st.integers(1, max_classes))
    k = draw(st.integers(1, 40))
    n = draw(st.integers(k, max(k, max_n)))
    labels = draw(hnp.arrays(np.int64, n, elements=st.integers(0, c - 1)))
    return labels, k


def _call(labels, k, method, **kw):
    """partition, or None when the arguments are infeasible (checked to be truly infeasible)."""
    present = len(np.unique(labels))
    c = kw.get("classes_per_client", 2)
    try:
        return partition(labels, k, method, **kw)
    except ValueError as e:
        msg = str(e)
        if method == "pathological" and (c > present or k * c < present):
            assert "classes" in msg
            return None
        raise


def _check_cover(parts, n, k):
    assert len(parts) == k
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1
        assert np.all(np.diff(p) > 0), "each part is sorted ascending without repeats"
    allidx = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    assert len(allidx) == n, "disjoint: no index in two parts"
    assert np.array_equal(np.sort(allidx), np.arange(n)), "exact cover of 0..n-1"


@given(labelled(), METHODS, ALPHAS, st.integers(1, 4), SEEDS)
def test_parts_are_disjoint_sorted_and_cover_exactly(data, method, alpha, cpc, seed):
    """DATA-1: every index in exactly one part; parts are sorted int64."""
    labels, k = data
    parts = _call(labels, k, method, alpha=alpha, classes_per_client=cpc, seed=seed)
    if parts is not None:
        _check_cover(parts, len(labels), k)


@given(labelled(), METHODS, ALPHAS, SEEDS)
def test_same_seed_same_partition(data, method, alpha, seed):
    """DATA-1/RNG-1: two calls with the same arguments give identical arrays."""
    labels, k = data
    a = _call(labels, k, method, alpha=alpha, seed=seed)
    b = _call(labels.copy(), k, method, alpha=alpha, seed=seed)
    if a is not None:
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("method", P.METHODS)
def test_different_seeds_give_different_partitions(method):
    """RNG-1: the seed is used (a partitioner that ignored it would pass the test above)."""
    labels = np.arange(1000) % 10
    hashes = {partition_report(labels, partition(labels, 20, method, seed=s), 10)["hash"]
              for s in range(5)}
    assert len(hashes) == 5


@given(labelled(), METHODS, ALPHAS, SEEDS, st.randoms(use_true_random=False))
def test_independent_of_dataset_order_with_keys(data, method, alpha, seed, rnd):
    """DATA-1: permute the dataset (labels and content keys), partition, map back: same parts."""
    labels, k = data
    n = len(labels)
    keys = np.array(rnd.sample(range(10 * n + 1), n), dtype=np.int64)  # distinct keys
    perm = np.array(rnd.sample(range(n), n), dtype=np.int64)
    a = _call(labels, k, method, alpha=alpha, seed=seed, keys=keys)
    if a is None:
        return
    b = partition(labels[perm], k, method, alpha=alpha, seed=seed, keys=keys[perm])
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, np.sort(perm[y]))


@given(labelled(), METHODS, ALPHAS, SEEDS, st.randoms(use_true_random=False))
def test_histograms_independent_of_order_without_keys(data, method, alpha, seed, rnd):
    """DATA-1: without keys the per-client label histograms still do not depend on the order."""
    labels, k = data
    perm = np.array(rnd.sample(range(len(labels)), len(labels)), dtype=np.int64)
    a = _call(labels, k, method, alpha=alpha, seed=seed)
    if a is None:
        return
    b = partition(labels[perm], k, method, alpha=alpha, seed=seed)
    c = int(labels.max()) + 1 if len(labels) else 0
    ra, rb = partition_report(labels, a, c), partition_report(labels[perm], b, c)
    assert ra["histograms"] == rb["histograms"]


def test_content_keys_make_image_datasets_order_independent():
    """DATA-1 with data_tools.content_keys on real-shaped images (the CLI's default)."""
    ds = data_tools.load_dataset("synthetic", n_train=300, n_test=10, shape=(1, 6, 6), seed=3)
    perm = np.random.default_rng(1).permutation(300)
    a = partition(ds.y_train, 7, "dirichlet", alpha=0.3, keys=ds.train_keys(), seed=9)
    b = partition(ds.y_train[perm], 7, "dirichlet", alpha=0.3,
                  keys=data_tools.content_keys(ds.x_train[perm]), seed=9)
    assert all(np.array_equal(x, np.sort(perm[y])) for x, y in zip(a, b, strict=True))


@given(labelled(), METHODS, ALPHAS, SEEDS, st.data())
def test_min_size_held_whenever_feasible(data, method, alpha, seed, d):
    """DATA-1: every client gets >= min_size when min_size * K <= n; otherwise a clear error."""
    labels, k = data
    n = len(labels)
    if n // k >= 1:
        m = d.draw(st.integers(1, n // k))
        parts = _call(labels, k, method, alpha=alpha, seed=seed, min_size=m, max_retries=3)
        if parts is not None:
            assert min(len(p) for p in parts) >= m
            _check_cover(parts, n, k)
    with pytest.raises(ValueError, match="infeasible"):
        partition(labels, k, method, alpha=alpha, seed=seed, min_size=n // k + 1)


def test_default_min_size_is_half_an_equal_share_capped_at_10():
    labels = np.arange(10000) % 10
    assert partition_with_info(labels, 1000, alpha=0.01)[1].min_size == 5
    assert partition_with_info(labels, 10, alpha=0.01)[1].min_size == 10
    assert partition_with_info(labels[:15], 10)[1].min_size == 1  # never 0: no empty client


@settings(max_examples=8)
@given(st.integers(1, 1000), ALPHAS, st.sampled_from([10, 100]), SEEDS, st.data())
def test_dirichlet_terminates_quickly_for_any_alpha_and_clients(k, alpha, c, seed, d):
    """DATA-1: bounded retries then repair: every call terminates after at most
    1 + max_retries draws, with min_size held (counted, not timed: a wall-clock bound fails on a
    loaded machine)."""
    n = d.draw(st.integers(k, 20000))
    labels = np.arange(n) % c
    m = d.draw(st.sampled_from([1, n // k, min(10, n // k)]))
    parts, info = partition_with_info(labels, k, "dirichlet", alpha=alpha, seed=seed,
                                      min_size=m)
    assert info.attempts <= 1 + P.DEFAULT_MAX_RETRIES
    assert min(len(p) for p in parts) >= m
    assert sum(len(p) for p in parts) == n


@pytest.mark.parametrize("alpha", [0.01, 100.0])
def test_worst_case_1000_clients_all_forced_to_equal_size(alpha):
    """The tightest feasible case (min_size * K == n) at both ends of the alpha range."""
    labels = np.arange(20000) % 10
    parts, info = partition_with_info(labels, 1000, "dirichlet", alpha=alpha, min_size=20)
    assert [len(p) for p in parts] == [20] * 1000
    _check_cover(parts, 20000, 1000)
    assert info.attempts == 1 + P.DEFAULT_MAX_RETRIES and info.repaired


def test_alpha_controls_label_skew():
    """Dir(alpha): tiny alpha gives near one-class clients, large alpha near-iid ones."""
    labels = np.arange(10000) % 10
    skew = {a: partition_report(labels, partition(labels, 50, alpha=a), 10)["summary"]
            ["label_skew_tv"] for a in (0.01, 0.5, 100.0)}
    assert skew[0.01] > 0.75 and skew[100.0] < 0.1 and skew[0.01] > skew[0.5] > skew[100.0]


@given(st.integers(1, 60), st.integers(1, 10), st.integers(1, 10), SEEDS)
def test_pathological_clients_hold_exactly_c_classes(k, c, num_classes, seed):
    """pathological: c distinct classes per client, balanced holders, when data are plentiful."""
    labels = np.arange(num_classes * 200) % num_classes
    parts = _call(labels, k, "pathological", classes_per_client=c, seed=seed, min_size=1)
    if parts is None:
        assert c > num_classes or k * c < num_classes
        return
    rep = partition_report(labels, parts, num_classes)
    assert set(rep["classes_per_client"]) == {c}
    holders = (np.asarray(rep["histograms"]) > 0).sum(axis=0)
    assert holders.max() - holders.min() <= 1


@given(st.integers(1, 200), st.integers(0, 3), METHODS, SEEDS)
def test_no_client_is_ever_empty(n, extra, method, seed):
    """DATA-1 (docs/data.md, "No empty client"): with the default min_size every client gets a
    sample; more clients than samples, or min_size 0, is a ValueError that says so."""
    labels = np.arange(n) % 3
    parts = _call(labels, n, method, seed=seed, classes_per_client=1)
    if parts is not None:
        assert min(len(p) for p in parts) >= 1
    with pytest.raises(ValueError, match=f"{n + 1 + extra} clients but only {n} samples"):
        partition(labels, n + 1 + extra, method, seed=seed)
    with pytest.raises(ValueError, match="min_size must be >= 1"):
        partition(labels, 1, method, seed=seed, min_size=0)


@given(st.lists(st.lists(st.integers(0, 30), min_size=3, max_size=3), min_size=1, max_size=30),
       st.data())
def test_repair_keeps_class_totals_and_reaches_min_size(rows, d):
    """The deterministic repair only moves samples between clients, within a class."""
    counts = np.asarray(rows, dtype=np.int64)
    n, k = int(counts.sum()), len(rows)
    m = d.draw(st.integers(0, n // k))
    fixed, moved = P.repair_counts(counts, m)
    assert np.array_equal(fixed.sum(axis=0), counts.sum(axis=0))
    assert fixed.min() >= 0 and fixed.sum(axis=1).min() >= m
    assert moved == int(np.abs(fixed - counts).sum()) // 2
    assert np.array_equal(P.repair_counts(counts, m)[0], fixed)


@given(st.integers(0, 10**6), st.lists(st.floats(0, 1), min_size=1, max_size=50)
       .filter(lambda p: sum(p) > 0))
def test_apportion_is_exact_and_within_one(n, p):
    counts = P.apportion(n, np.asarray(p))
    q = np.asarray(p) / np.sum(p) * n
    assert counts.sum() == n and counts.min() >= 0
    assert np.all(np.abs(counts - q) < 1 + 1e-9)


def test_apportion_ties_go_to_the_lower_index():
    """CONV-4: equal fractional parts are ordered by index, not by sort stability."""
    assert P.apportion(2, np.ones(4)).tolist() == [1, 1, 0, 0]
    assert P.apportion(3, np.array([1.0, 2.0, 2.0, 1.0])).tolist() == [1, 1, 1, 0]


def test_randomness_only_from_partition_streams(monkeypatch):
    """RNG-1: every draw comes from refimpl.core.rng.stream(seed, PARTITION, ...); the global
    NumPy random state is never read (re-seeding it changes nothing)."""
    calls = []
    real = P.stream

    def spy(seed, purpose, *args):
        calls.append((seed, purpose) + args)
        return real(seed, purpose, *args)

    monkeypatch.setattr(P, "stream", spy)
    for name in ("seed", "shuffle", "permutation", "rand", "randint", "dirichlet"):
        monkeypatch.setattr(np.random, name, _forbidden)
    monkeypatch.setattr(np.random, "default_rng", _forbidden)
    labels = np.arange(500) % 7
    for method in P.METHODS:
        partition(labels, 30, method, seed=11, min_size=15)
    assert calls and all(c[0] == 11 and c[1] == Purpose.PARTITION for c in calls)


def _forbidden(*a, **k):
    raise AssertionError("global or unnamed NumPy randomness used in a partitioner")


def test_golden_partitions_are_stable():
    """Same seed, same bytes, across versions and machines: recorded DATA-2 hashes. A change
    here changes every recorded run's partition; bump the docs if it is on purpose."""
    labels = np.arange(600) % 6
    got = {m: partition_report(labels, partition(labels, 12, m, seed=5), 6)["hash"]
           for m in P.METHODS}
    assert got == GOLDEN


GOLDEN = {
    "iid": "fcbd61e44a52269f2100b0b5d820cc5ec4f6ff599ed36e35154c6173fdbb34b1",
    "dirichlet": "a5c6c51ff8bbd1f5758628d2b9e39ad31e6c59d57ac68032bd6cc04445cd44e4",
    "pathological": "151d2ac0194ca60d0c9d2b7f459a57c5a4868ea63c79b3927f29f0d2b03c542a",
}


def _hash_oracle(parts, labels, c):
    """DATA-2's byte encoding, written independently with struct."""
    import hashlib

    h = hashlib.sha256(b"fedmef-partition/v1\n")
    h.update(struct.pack("<QQQ", len(parts), c, len(labels)))
    for p in parts:
        p = sorted(int(i) for i in p)
        hist = [0] * c
        for i in p:
            hist[int(labels[i])] += 1
        h.update(struct.pack("<Q", len(p)))
        h.update(struct.pack(f"<{c}q", *hist))
        h.update(struct.pack(f"<{len(p)}q", *p))
    return h.hexdigest()


@given(labelled(max_n=120), METHODS, SEEDS)
def test_report_histograms_sizes_and_hash_match_an_independent_oracle(data, method, seed):
    """DATA-2: histograms, sizes and the hash follow their definitions."""
    labels, k = data
    parts = _call(labels, k, method, seed=seed)
    if parts is None:
        return
    c = int(labels.max()) + 1 if len(labels) else 1
    rep = partition_report(labels, parts, c)
    for p, hist, size in zip(parts, rep["histograms"], rep["sizes"], strict=True):
        assert hist == np.bincount(labels[p], minlength=c).tolist() and size == len(p)
    assert rep["hash"] == _hash_oracle(parts, labels, c)
    assert rep["disjoint"] and rep["complete"]


def test_report_detects_broken_partitions_and_hash_sees_one_moved_sample():
    labels = np.array([0, 1, 0, 1, 2, 2])
    good = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    moved = [np.array([0, 1]), np.array([2, 3, 4, 5])]
    dup = [np.array([0, 1, 2]), np.array([2, 3, 4, 5])]
    miss = [np.array([0, 1]), np.array([3, 4, 5])]
    rg = partition_report(labels, good, 3)
    assert rg["hash"] != partition_report(labels, moved, 3)["hash"]
    rd, rm = partition_report(labels, dup, 3), partition_report(labels, miss, 3)
    assert (rd["disjoint"], rd["complete"]) == (False, False)
    assert (rm["disjoint"], rm["complete"]) == (True, False)
    with pytest.raises(ValueError, match="outside"):
        partition_report(labels, [np.array([6])], 3)


def test_format_report_and_heatmap(tmp_path):
    labels = np.arange(200) % 4
    parts, info = partition_with_info(labels, 8, alpha=0.2, seed=1)
    rep = partition_report(labels, parts, 4, info=info)
    text = data_tools.format_report(rep, max_rows=3)
    assert rep["hash"] in text and "method=dirichlet" in text and "5 more clients" in text
    rows = [ln.split() for ln in text.splitlines()[4:7]]
    assert [int(r[1]) for r in rows] == rep["sizes"][:3]
    assert [list(map(int, r[2:6])) for r in rows] == rep["histograms"][:3]
    pytest.importorskip("matplotlib")
    out = data_tools.save_heatmap(rep, tmp_path / "h.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_clear_errors():
    y = np.arange(50) % 5
    with pytest.raises(ValueError, match="valid: iid, dirichlet, pathological"):
        partition(y, 5, "shards")
    with pytest.raises(ValueError, match="alpha"):
        partition(y, 5, alpha=0.0)
    with pytest.raises(ValueError, match="num_clients"):
        partition(y, 0)
    with pytest.raises(ValueError, match="1-D integer"):
        partition(y.astype(float), 5)
    with pytest.raises(ValueError, match="keys must have shape"):
        partition(y, 5, keys=np.arange(3))
    with pytest.raises(ValueError, match=">= 0"):
        partition(y - 1, 5)


def _cli(argv):
    import argparse

    from refimpl.data.cli import add_parser

    parser = argparse.ArgumentParser(prog="fedmef")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_partition_writes_a_record_that_matches_the_api(tmp_path, capsys):
    """DATA-2: `fedmef partition` prints and stores the histogram table and the hash; the
    stored parts are those of the API call with content keys."""
    import json

    rc = _cli(["partition", "--clients", "20", "--alpha", "0.3", "--seed", "2", "--rows", "4",
               "--out", str(tmp_path)])
    assert rc == 0
    rep = json.loads((tmp_path / "partition.json").read_text())
    with np.load(tmp_path / "parts.npz") as z:
        parts = [z[k] for k in sorted(z.files)]
    ds = data_tools.load_dataset("fashion-mnist-bundled")
    api = partition(ds.y_train, 20, alpha=0.3, seed=2, keys=ds.train_keys())
    assert all(np.array_equal(a, b) for a, b in zip(api, parts, strict=True))
    assert partition_report(ds.y_train, api, 10)["hash"] == rep["hash"]
    assert rep["hash"] in capsys.readouterr().out
    assert rep["partition"]["alpha"] == 0.3 and rep["dataset"]["verified"]
    assert (tmp_path / "partition.txt").read_text().count("\n") == 20 + 4
    with pytest.raises(FileNotFoundError, match="cifar.html"):
        _cli(["partition", "--dataset", "cifar10"])
