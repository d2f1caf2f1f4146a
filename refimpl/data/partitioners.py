"""Client partitions of a labelled dataset (SPEC DATA-1, RNG-1).

Three methods, each returning one sorted int64 index array per client (disjoint, covering every
sample exactly once):

- ``iid``: the samples in a random order, cut into ``num_clients`` runs whose sizes differ by at
  most one (the first ``n % K`` clients get one more).
- ``dirichlet``: per class c, client shares ``p_c ~ Dir(alpha * 1_K)``, turned into integer counts
  by largest remainder (ties to the lower client id). A draw is accepted when every client holds
  at least ``min_size`` samples; at most ``1 + max_retries`` draws are made, then the draw with
  the smallest total shortfall is repaired deterministically (below). So it always terminates.
- ``pathological``: every client holds ``classes_per_client`` distinct classes: with the present
  classes in a random order pi, client k holds pi[(k*c + j) mod P] for j < c, so each class has
  floor(K*c/P) or one more holders; a class's samples are shared evenly among its holders (the
  remainder to holders in random order). Needs c <= P (classes present) and K*c >= P (exact cover).

Repair (any method, when ``min_size`` is not met): for each client below ``min_size`` in
ascending id, take samples from the currently largest client (ties: lower id), from its largest
class (ties: lower class), never taking a donor below ``min_size``. It terminates because
``min_size * K <= n`` (checked), so a donor above ``min_size`` exists while any client is short.

Order independence. All randomness acts on a canonical order of the samples: sorted by
(label, key, original index), where ``keys`` is a per-sample content key supplied by the caller
(e.g. :func:`refimpl.data.content_keys` of the images). The counts per client and class depend
only on the class sizes and the seed; the samples of class c are taken in the canonical order,
shuffled by a permutation that depends only on (seed, c, n_c). Hence permuting the dataset (and
its keys) and mapping the result back gives the same partition. Without ``keys`` the key is the
original index: the per-client label histograms are still order-independent, the index sets are
not. Samples with equal (label, key) are interchangeable and ordered by index.

Randomness (RNG-1):
``refimpl.core.rng.stream(seed, Purpose.PARTITION, round=0, client=SUB, extra=E)`` with SUB = 0 for
the count draws (E = attempt number, or 0), 1 for the within-class shuffle
(E = class), 2 for the iid shuffle (E = 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..core.rng import Purpose, stream

__all__ = ["partition", "partition_with_info", "PartitionInfo", "METHODS", "DEFAULT_MIN_SIZE",
           "DEFAULT_MAX_RETRIES", "apportion", "repair_counts", "canonical_order",
           "validation_split"]

METHODS = ("iid", "dirichlet", "pathological")
#: min_size=None means max(1, min(DEFAULT_MIN_SIZE, n // (2 * num_clients))): at most half an
#: equal share, so the default never forces all clients to the same size, and never below 1: no
#: client is ever empty (num_clients > n is an error).
DEFAULT_MIN_SIZE = 10
DEFAULT_MAX_RETRIES = 50
_SUB_DRAW, _SUB_CLASS_SHUFFLE, _SUB_IID = 0, 1, 2


@dataclass(frozen=True)
class PartitionInfo:
    """How a partition was made (for run records): the resolved arguments, how many count draws
    were made, whether the repair ran and how many samples it moved."""

    method: str
    num_clients: int
    num_classes: int
    num_samples: int
    seed: int
    alpha: float | None
    classes_per_client: int | None
    min_size: int
    max_retries: int
    attempts: int
    repaired: bool
    moved: int
    keyed: bool

    def as_dict(self) -> dict:
        return asdict(self)


def _int_arg(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < lo:
        raise ValueError(f"partition: {name} must be an int >= {lo}, received {v!r}")
    return int(v)


def canonical_order(labels: np.ndarray, keys: np.ndarray | None) -> np.ndarray:
    """Indices sorting the samples by (label, key, index) (CONV-4: no reliance on sort
    stability). int64 (n,)."""
    idx = np.arange(len(labels), dtype=np.int64)
    cols = (idx,) if keys is None else (idx, keys)
    return np.lexsort(cols + (labels,)).astype(np.int64)


def apportion(n: int, p: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``n`` proportional to ``p`` (float64 (K,), >= 0, sum > 0):
    floor(n*p) plus one each for the ``n - sum`` largest fractional parts (ties: lower index)."""
    p = np.asarray(p, dtype=np.float64)
    p = p / p.sum()
    q = p * n
    base = np.floor(q).astype(np.int64)
    rem = int(n - base.sum())
    frac = q - base
    order = np.lexsort((np.arange(len(p)), -frac))
    base[order[:rem]] += 1
    return base


def repair_counts(counts: np.ndarray, min_size: int) -> tuple[np.ndarray, int]:
    """Move samples (as counts) until every client (row) holds >= ``min_size``. Returns
    (new counts int64 (K, C), number of samples moved). Requires K * min_size <= counts.sum()."""
    counts = counts.copy()
    sizes = counts.sum(axis=1)
    if min_size * len(sizes) > sizes.sum():
        raise ValueError(f"repair: {len(sizes)} clients x min_size {min_size} exceeds "
                         f"{int(sizes.sum())} samples")
    moved = 0
    for k in np.flatnonzero(sizes < min_size):
        need = min_size - sizes[k]
        while need > 0:
            donor = int(np.argmax(sizes))  # first maximum = lowest id
            cls = int(np.argmax(counts[donor]))
            m = int(min(need, sizes[donor] - min_size, counts[donor, cls]))
            counts[donor, cls] -= m
            counts[k, cls] += m
            sizes[donor] -= m
            sizes[k] += m
            need -= m
            moved += m
    return counts, moved


def _deficit(counts: np.ndarray, min_size: int) -> int:
    return int(np.maximum(min_size - counts.sum(axis=1), 0).sum())


def _dirichlet_counts(class_sizes, K, alpha, seed, attempt):
    rng = stream(seed, Purpose.PARTITION, 0, _SUB_DRAW, attempt)
    counts = np.zeros((K, len(class_sizes)), dtype=np.int64)
    for c, n_c in enumerate(class_sizes):
        if n_c == 0:
            continue
        p = rng.dirichlet(np.full(K, alpha))
        if not (np.all(np.isfinite(p)) and p.sum() > 0):
            p = np.zeros(K)  # guard against underflow at extreme alpha: all to one client
            p[int(rng.integers(K))] = 1.0
        counts[:, c] = apportion(int(n_c), p)
    return counts


def _pathological_counts(class_sizes, K, c, seed):
    present = np.flatnonzero(class_sizes)
    P = len(present)
    if c > P:
        raise ValueError(f"partition: classes_per_client={c} exceeds the {P} classes present")
    if K * c < P:
        raise ValueError(f"partition: {K} clients x {c} classes per client cannot cover the {P} "
                         f"classes present; use more clients or classes_per_client >= "
                         f"{-(-P // K)}")
    rng = stream(seed, Purpose.PARTITION, 0, _SUB_DRAW, 0)
    pi = rng.permutation(present)
    slots = np.arange(K * c)
    holder_client, holder_class = slots // c, pi[slots % P]
    counts = np.zeros((K, len(class_sizes)), dtype=np.int64)
    for cls in present:
        holders = holder_client[holder_class == cls]
        n_c, h = int(class_sizes[cls]), len(holders)
        share = np.full(h, n_c // h, dtype=np.int64)
        share[rng.permutation(h)[:n_c % h]] += 1
        counts[holders, cls] = share
    return counts


def partition_with_info(labels, num_clients: int, method: str = "dirichlet", *,
                        alpha: float = 0.5, classes_per_client: int = 2,
                        min_size: int | None = None, seed: int = 0,
                        max_retries: int = DEFAULT_MAX_RETRIES, keys=None,
                        num_classes: int | None = None):
    """:func:`partition` and a :class:`PartitionInfo` describing how it was made."""
    y = np.asarray(labels)
    if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise ValueError(f"partition: labels must be a 1-D integer array, received dtype "
                         f"{y.dtype} shape {y.shape}")
    y = y.astype(np.int64)
    n = len(y)
    if n and y.min() < 0:
        raise ValueError(f"partition: labels must be >= 0, found {int(y.min())}")
    K = _int_arg("num_clients", num_clients, 1)
    seed = _int_arg("seed", seed, 0)
    max_retries = _int_arg("max_retries", max_retries, 0)
    if method not in METHODS:
        raise ValueError(f"partition: unknown method {method!r}; valid: {', '.join(METHODS)}")
    C = int(y.max()) + 1 if n else 0
    if num_classes is not None:
        if _int_arg("num_classes", num_classes, 0) < C:
            raise ValueError(f"partition: label {C - 1} >= num_classes={num_classes}")
        C = int(num_classes)
    if K > n:
        raise ValueError(f"partition: {K} clients but only {n} samples; every client needs at "
                         f"least one sample, so use at most {n} clients (or more data)")
    if min_size is None:
        min_size = max(1, min(DEFAULT_MIN_SIZE, n // (2 * K)))
    if isinstance(min_size, (int, np.integer)) and not isinstance(min_size, bool) \
            and min_size < 1:
        raise ValueError("partition: min_size must be >= 1: a client with no samples cannot "
                         "train (None picks min(10, n // (2 * num_clients)), at least 1)")
    min_size = _int_arg("min_size", min_size, 1)
    if min_size * K > n:
        raise ValueError(f"partition: min_size={min_size} is infeasible for {K} clients and "
                         f"{n} samples (needs min_size * num_clients <= {n}); lower min_size "
                         f"or use fewer clients")
    if keys is not None:
        keys = np.asarray(keys)
        if keys.shape != (n,):
            raise ValueError(f"partition: keys must have shape ({n},), received {keys.shape}")
    class_sizes = np.bincount(y, minlength=C).astype(np.int64)
    order = canonical_order(y, keys)
    a_used, c_used, attempts = None, None, 1
    if method == "iid":
        counts = None
    elif method == "dirichlet":
        alpha = float(alpha)
        if not (np.isfinite(alpha) and alpha > 0):
            raise ValueError(f"partition: alpha must be a finite number > 0, received {alpha}")
        a_used, best = alpha, None
        for attempt in range(1 + max_retries):
            counts = _dirichlet_counts(class_sizes, K, alpha, seed, attempt)
            attempts = attempt + 1
            short = _deficit(counts, min_size)
            if short == 0:
                break
            if best is None or short < best[0]:
                best = (short, counts)
        else:
            counts = best[1]
    else:
        c_used = _int_arg("classes_per_client", classes_per_client, 1)
        counts = _pathological_counts(class_sizes, K, c_used, seed)
    moved = 0
    if counts is not None and _deficit(counts, min_size):
        counts, moved = repair_counts(counts, min_size)
    parts = _assign(order, class_sizes, counts, K, seed)
    info = PartitionInfo(method=method, num_clients=K, num_classes=C, num_samples=n, seed=seed,
                         alpha=a_used, classes_per_client=c_used, min_size=min_size,
                         max_retries=max_retries, attempts=attempts, repaired=moved > 0,
                         moved=moved, keyed=keys is not None)
    return parts, info


def _assign(order, class_sizes, counts, K, seed) -> list[np.ndarray]:
    """Turn counts (K, C) (or None for iid) into sorted int64 index arrays, one per client."""
    n = len(order)
    owner = np.empty(n, dtype=np.int64)
    if counts is None:
        sizes = np.full(K, n // K, dtype=np.int64)
        sizes[:n % K] += 1
        shuffled = order[stream(seed, Purpose.PARTITION, 0, _SUB_IID, 0).permutation(n)]
        owner[shuffled] = np.repeat(np.arange(K), sizes)
    else:
        starts = np.concatenate(([0], np.cumsum(class_sizes)))
        for c in np.flatnonzero(class_sizes):
            members = order[starts[c]:starts[c + 1]]
            perm = stream(seed, Purpose.PARTITION, 0, _SUB_CLASS_SHUFFLE, int(c)).permutation(
                len(members))
            owner[members[perm]] = np.repeat(np.arange(K), counts[:, c])
        sizes = counts.sum(axis=1)
    by_owner = np.lexsort((np.arange(n), owner))
    return [a.astype(np.int64) for a in np.split(by_owner, np.cumsum(sizes)[:-1])]


def partition(labels, num_clients: int, method: str = "dirichlet", *, alpha: float = 0.5,
              classes_per_client: int = 2, min_size: int | None = None, seed: int = 0,
              max_retries: int = DEFAULT_MAX_RETRIES, keys=None,
              num_classes: int | None = None) -> list[np.ndarray]:
    """Split the samples into ``num_clients`` disjoint parts (DATA-1).

    labels  int (n,), values >= 0.       keys  optional (n,) sortable content keys (see module
    doc: with them the result is independent of the dataset's order).
    method  "iid" | "dirichlet" (``alpha`` > 0) | "pathological" (``classes_per_client``).
    min_size  every client gets at least this many samples, >= 1 (None: max(1, min(10,
              n // (2 * K)))); ValueError when min_size * num_clients > n, or when
              num_clients > n (a client would be empty).
    max_retries  extra Dirichlet draws before the deterministic repair.
    seed    stream PARTITION (RNG-1): same arguments, same result.

    Returns a list of ``num_clients`` int64 arrays, each sorted ascending; together they hold
    every index 0..n-1 exactly once.
    """
    return partition_with_info(labels, num_clients, method, alpha=alpha,
                               classes_per_client=classes_per_client, min_size=min_size,
                               seed=seed, max_retries=max_retries, keys=keys,
                               num_classes=num_classes)[0]


def validation_split(labels, fraction: float, keys=None,
                     num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a validation split of a training set: ``(rest, held)``, sorted int64 index
    arrays, disjoint, together every index once.

    Stratified: the number held out is ``round(fraction · n)`` (half up), shared among the
    classes in proportion to their sizes by :func:`apportion`; class c gives its ``v_c``
    samples first in the canonical order (label, key, index) of :func:`canonical_order`. With
    content ``keys`` (:func:`refimpl.data.content_keys`, a hash of the image) that order is a
    pseudo-random one that depends on the images alone, so the split is the same for every
    seed and every ordering of the dataset, and no random stream is drawn. ``fraction`` in
    [0, 1); 0 holds out nothing.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise ValueError(f"validation_split: labels must be a 1-D integer array, received dtype "
                         f"{y.dtype} shape {y.shape}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) or \
            not 0.0 <= float(fraction) < 1.0:
        raise ValueError(f"validation_split: fraction must be a number in [0, 1), received "
                         f"{fraction!r}")
    y = y.astype(np.int64)
    n = int(y.size)
    if keys is not None:
        keys = np.asarray(keys)
        if keys.shape != y.shape:
            raise ValueError(f"validation_split: keys must have the labels' shape {y.shape}, "
                             f"received {keys.shape}")
    held_total = int(np.floor(float(fraction) * n + 0.5))
    if held_total == 0:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if held_total >= n:
        raise ValueError(f"validation_split: fraction {fraction} of {n} samples leaves no "
                         f"training data; lower it")
    C = int(num_classes) if num_classes is not None else int(y.max()) + 1
    sizes = np.bincount(y, minlength=C)
    counts = apportion(held_total, sizes.astype(np.float64))
    order = canonical_order(y, keys)
    held = []
    start = 0
    for c in range(C):  # the canonical order groups the classes in ascending label
        held.append(order[start:start + counts[c]])
        start += int(sizes[c])
    held = np.sort(np.concatenate(held)).astype(np.int64)
    keep = np.ones(n, dtype=bool)
    keep[held] = False
    return np.flatnonzero(keep).astype(np.int64), held
