"""Mutation check of the spec suite (``make mutants``; not part of ``make test``).

Each mutant is one small, rule-breaking edit of the library (an exact text replacement in one or
more files) with the SPEC rule it breaks and the tests that must catch it. The runner copies the
repository into a scratch directory (never touching the working tree, no ``git stash``), then
for each mutant: applies its edits, runs its tests there with pytest (``-x``, derandomised
Hypothesis, no example database), records the outcome, and restores the files (bytes and
modification time, so Numba's cache stays valid).

Outcomes:

- ``caught``: the tests failed (exit code 1); the first failing test is reported.
- ``NOT CAUGHT``: the tests passed on the mutated code.
- ``STALE``: an edit's old text is not in the file exactly once (the code moved on): the
  mutant must be rewritten. Reported loudly, never counted as caught.
- ``ERROR`` / ``TIMEOUT``: pytest could not run the tests (e.g. an import error), or ran too long.

Before the mutants, the union of their tests runs once on the unmutated copy: a failing baseline
makes every "caught" meaningless, so the runner stops there. The exit status is 0 only when every
selected mutant is caught.

    python -m spec_tests.mutants                 # all mutants
    python -m spec_tests.mutants --only pg7-grown-not-zeroed nsc1-eps-outside-sqrt
    python -m spec_tests.mutants --list          # the mutants, without running anything
    python -m spec_tests.mutants --check-stale   # only check that every edit still applies
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Edit:
    file: str  # path relative to the repository root
    old: str  # exact text; must occur exactly once
    new: str


@dataclass(frozen=True)
class Mutant:
    id: str
    rule: str  # the SPEC rule the edit breaks
    what: str  # one line: what the edit does
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]  # pytest paths / node ids, relative to the root


def _m(id, rule, what, file, old, new, *tests) -> Mutant:
    return Mutant(id, rule, what, (Edit(file, old, new),), tuple(tests))


SP, OPT, NS, BAE = ("refimpl/sparsity.py", "refimpl/core/optim.py", "refimpl/ops/nsconv.py",
                    "refimpl/fl/bae.py")
SAP, KC, MEMF, SRV = ("refimpl/sap.py", "refimpl/kernels/cache.py", "refimpl/memory.py",
                      "refimpl/fl/server.py")
CONV, MKF, CLI = "refimpl/ops/conv.py", "refimpl/kernels/masked_conv.py", "refimpl/memory_cli.py"
# conv2d_vjp's fused ReLU gating and the bias gradient after it (one mutant swaps them)
_RELU_VJP = "    if p.relu:\n        g = relu_grad(g, res.relu_bits, p.relu_gain)\n"
_RELU_FWD = "        y, bits = rectified(y, p.relu_gain, any(needs))\n"
_RELU_FWD_NO_BITS = "        y, _ = rectified(y, p.relu_gain, False)\n"
_BIAS_GRAD = "    if needs[2]:\n        db = np.sum(g, axis=(0, 2, 3))\n"
T = "spec_tests/"

MUTANTS: tuple[Mutant, ...] = (
    # ---- the three uncaught changes and its weak catches (new tests must catch) ----
    _m("pg7-grown-not-zeroed", "PG-7", "adjust keeps a grown position's old value",
       SP, "        ww[q] = 0\n", "", T + "test_adjust_stale.py"),
    _m("nsc1-eps-outside-sqrt", "NSC-1", "r = max(sqrt(s²F), ε) instead of sqrt(max(s²F, ε))",
       NS, "r = np.sqrt(np.maximum(v, eps))", "r = np.maximum(np.sqrt(v), eps)",
       T + "test_nsconv_scales.py", T + "test_nsconv.py"),
    _m("nsc1-kernel-eps-outside-sqrt", "NSC-1", "compiled standardisation: r = max(sqrt(s²F), ε)",
       "refimpl/kernels/nsconv.py", "ro = np.sqrt(v if (v >= eps or v != v) else eps)",
       "ro = max(np.sqrt(v), eps)", T + "test_nsconv_scales.py"),
    _m("nsc3-kernel-gradient-ignores-clamp", "NSC-3", "compiled gradient differentiates s² even "
       "where clamped", "refimpl/kernels/nsconv.py",
       "coef = ((g * sf[o]) * gc) / r3[o] if unclamped[o] else zero",
       "coef = ((g * sf[o]) * gc) / r3[o]", T + "test_nsconv_scales.py"),
    _m("mask3-sgd-no-remask", "MASK-3", "SGD.step no longer re-masks the weights",
       OPT, "            if m is not None:\n                p *= m\n", "",
       T + "test_optim_unmasked.py"),
    _m("conv5-relu-grad-at-zero", "CONV-5", "ReLU'(0) = 1 (bitmap of x >= 0)",
       "refimpl/kernels/relu.py", "np.packbits(y > y.dtype.type(0), axis=None",
       "np.packbits(y >= y.dtype.type(0), axis=None", T + "test_conv5_routing.py"),
    _m("conv5-relu-loops-grad-at-zero", "CONV-5", "ReLU loop twins: ReLU'(0) = 1",
       "refimpl/kernels/relu.py", "            if v > zero:\n                acc |= 1 << j",
       "            if v >= zero:\n                acc |= 1 << j", T + "test_kernels.py"),
    _m("conv5-relu-backward-select", "CONV-5", "ReLU backward selects g instead of multiplying "
       "(g · 0 loses its sign and NaN)", "refimpl/kernels/relu.py", "        dx[i] = g[i] * m",
       "        dx[i] = g[i] if m == one else zero", T + "test_kernels.py"),
    _m("conv5-maxpool-last-max-jit", "CONV-5", "compiled max-pool: a later equal value wins",
       "refimpl/kernels/pool.py", "if v > best:", "if v >= best:", T + "test_conv5_routing.py"),
    _m("conv5-maxpool-last-max-np", "CONV-5", "NumPy max-pool: a later equal value wins",
       "refimpl/kernels/pool.py", "better = v > y", "better = v >= y",
       T + "test_conv5_routing.py"),
    _m("fl1-sample-unsorted", "FL-1", "sampled clients in draw order, not sorted",
       SRV, "return np.sort(rng.choice(num_clients, size=per_round, replace=False))",
       "return (rng.choice(num_clients, size=per_round, replace=False))",
       T + "test_fl_sampling.py"),
    _m("bae2-lambda-twice", "BAE-2", "penalty gradient 2λ²θ instead of 2λθ",
       BAE, "w.dtype.type(2.0 * lam) * v", "w.dtype.type(2.0 * lam * lam) * v",
       T + "test_bae_lambda.py"),
    _m("bae2-lambda-twice-client", "BAE-2", "the client's step rule multiplies λ_τ by λ again",
       BAE, "lam = lambda_at(self.lam, self.variant, tau)",
       "lam = lambda_at(self.lam, self.variant, tau) * self.lam",
       T + "test_bae_lambda.py"),
    # ---- ERK (§2) ----
    # (Moving the over-dense layer of *smallest* score into D first is an equivalent mutant,
    # not listed: each move raises ε, so every over-dense layer stays over-dense and D ends the
    # same whatever the order; see docs/testing.md.)
    _m("erk1-no-dense-cap", "ERK-1", "no layer moves into D (densities above 1)",
       SP, "over = [i for i in range(len(shapes)) if i not in dense and eps * scores[i] > 1]",
       "over = []", T + "test_sparsity_erk.py"),
    _m("erk1-erk-drops-kernel-dims", "ERK-1", "erk scores without the kernel dims",
       SP, "    return Fraction(sum(shape), n)",
       "    return Fraction(sum(shape[:2]) if len(shape) == 4 else sum(shape), n)",
       T + "test_sparsity_erk.py"),
    _m("erk1-er-keeps-kernel-dims", "ERK-1", "variant er scores like erk",
       SP, "return Fraction(shape[0] + shape[1], n)", "return Fraction(sum(shape), n)",
       T + "test_sparsity_erk.py"),
    _m("erk2-target-truncated", "ERK-2", "target n = floor(d·N) instead of floor(d·N + 1/2)",
       SP, "target = math.floor(d * sum(sizes) + Fraction(1, 2))",
       "target = math.floor(d * sum(sizes))", T + "test_sparsity_erk.py"),
    _m("erk2-remainder-smallest-fraction", "ERK-2", "remainder to the smallest fractional parts",
       SP, "key=lambda i: (-(exact[i] - counts[i]), i),",
       "key=lambda i: (exact[i] - counts[i], i),",
       T + "test_sparsity_erk.py"),
    _m("erk2-remainder-ties-last-layer", "ERK-2", "remainder ties to the last layer",
       SP, "key=lambda i: (-(exact[i] - counts[i]), i),",
       "key=lambda i: (-(exact[i] - counts[i]), -i),", T + "test_sparsity_erk.py"),
    _m("conv6-density-as-float", "CONV-6", "density parsed as a binary float, not its decimal",
       SP, "f = Fraction(str(p))", "f = Fraction(float(p))", T + "test_sparsity_erk.py"),
    _m("mask2-density-mean-of-layers", "MASK-2", "density as the mean of layer densities",
       SP, "return float(sum(int(m.sum()) for m in masks) / sum(m.size for m in masks))",
       "return float(np.mean([m.mean() for m in masks]))", T + "test_sparsity_erk.py"),
    _m("erk3-mask-with-replacement", "ERK-3", "initial mask drawn with replacement",
       SP, "size=n, replace=False, shuffle=False", "size=n, replace=True, shuffle=False",
       T + "test_sparsity_erk.py"),
    # ---- prune and grow (§8), marked set (BAE-1) ----
    _m("pg2-alpha-shifted", "PG-2", "α_t uses t − 1",
       SP, "(1.0 + math.cos(math.pi * t / t_end))",
       "(1.0 + math.cos(math.pi * (t - 1) / t_end))",
       T + "test_prune_grow.py", T + "test_fl_rules.py"),
    _m("pg3-count-floor", "PG-3", "k_l with floor instead of ceil",
       SP, "out.append(min(math.ceil(alpha_t * nnz), nnz, m.size - nnz))",
       "out.append(min(math.floor(alpha_t * nnz), nnz, m.size - nnz))",
       T + "test_prune_grow.py"),
    _m("pg3-count-uncapped", "PG-3", "k_l not capped by the inactive count",
       SP, "out.append(min(math.ceil(alpha_t * nnz), nnz, m.size - nnz))",
       "out.append(min(math.ceil(alpha_t * nnz), nnz))", T + "test_prune_grow.py"),
    _m("conv4-prune-ties-high-index", "CONV-4", "k smallest: ties to the highest index",
       SP, "order = np.lexsort((candidates, scores))", "order = np.lexsort((-candidates, scores))",
       T + "test_prune_grow.py"),
    _m("conv4-grow-ties-high-index", "CONV-4", "k largest: ties to the highest index",
       SP, "order = np.lexsort((candidates, -scores))",
       "order = np.lexsort((-candidates, -scores))", T + "test_prune_grow.py"),
    _m("pg4-prune-signed", "PG-4", "prune the smallest θ instead of the smallest |θ|",
       SP, "p = k_smallest(active, np.abs(w.reshape(-1)[active]), k)",
       "p = k_smallest(active, w.reshape(-1)[active], k)", T + "test_prune_grow.py"),
    _m("pg6-grow-signed", "PG-6", "grow the largest ḡ instead of the largest |ḡ|",
       SP, "q = k_largest(inactive, np.abs(s.reshape(-1)[inactive]), kg)",
       "q = k_largest(inactive, s.reshape(-1)[inactive], kg)", T + "test_prune_grow.py"),
    _m("pg6-grow-after-prune", "PG-6", "grow candidates include the just-pruned entries",
       SP, "inactive = np.flatnonzero(~flat_m)  # before pruning (PG-6)",
       "inactive = np.union1d(np.flatnonzero(~flat_m), p)", T + "test_prune_grow.py"),
    _m("pg7-no-remask", "PG-7", "adjust does not apply θ ← θ ⊙ M_new",
       SP, "        ww *= mm\n", "", T + "test_prune_grow.py", T + "test_adjust_stale.py"),
    _m("bae1-marked-over-all-entries", "BAE-1", "marked set chosen among all entries (zeros too)",
       SP, 'pool = np.flatnonzero(m) if among == "active" else np.arange(m.size)',
       "pool = np.arange(m.size)", T + "test_prune_grow.py::test_marked_set_by_hand",
       T + "test_prune_grow.py::test_marked_set_is_k_smallest_active"),
    _m("pg1-adjust-excludes-t-end", "PG-1", "no adjustment at t = T_end",
       "refimpl/fl/schedule.py", "t % cfg.sparse.delta_t == 0 and t <= cfg.t_end",
       "t % cfg.sparse.delta_t == 0 and t < cfg.t_end", T + "test_fl_rules.py"),
    # ---- aggregation, sampling, initialisation (§9) ----
    _m("agg1-uniform-weights", "AGG-1", "FedAvg weights 1/C instead of n_k/Σn",
       SRV, "return [(u, u.n / total) for u in ordered]",
       "return [(u, 1.0 / len(ordered)) for u in ordered]", T + "test_fl_client.py"),
    _m("agg1-completion-order", "AGG-1", "accumulate in completion order",
       SRV, "ordered = sorted(updates, key=lambda u: u.client)", "ordered = list(updates)",
       T + "test_fl_client.py"),
    _m("agg1-no-remask", "AGG-1", "aggregate does not apply θ ← θ ⊙ M",
       SRV, "            params[name] *= m\n", "            pass\n", T + "test_fl_client.py"),
    _m("agg1-accumulate-in-input-dtype", "AGG-1", "accumulate in float32 for float32 models",
       SRV, "acc = {name: np.zeros(a.shape, dtype=np.float64)",
       "acc = {name: np.zeros(a.shape, dtype=a.dtype)", T + "test_fl_client.py"),
    _m("fl1-sample-with-replacement", "FL-1", "clients sampled with replacement",
       SRV, "size=per_round, replace=False", "size=per_round, replace=True",
       T + "test_fl_sampling.py"),
    _m("fl1-init-fan-out", "FL-1", "He-normal with fan_out instead of fan_in",
       "refimpl/models/graph.py", "fan_in = int(np.prod(shape[1:]))",
       "fan_in = int(shape[0] * np.prod(shape[2:]))", T + "test_init.py"),
    _m("rng1-drop-extra", "RNG-1", "the stream ignores its 'extra' index",
       "refimpl/core/rng.py", "spawn_key=key)", "spawn_key=key[:3])",
       T + "test_fl_client.py::test_batches_cover_each_epoch", T + "test_sparsity_erk.py"),
    # ---- local training (§6) and BaE (§7) ----
    _m("lt1-momentum-first-step-zero", "LT-1", "momentum buffer starts at 0, not at d",
       OPT, "buf = self.state[name] = d.copy()", "buf = self.state[name] = 0 * d",
       T + "test_optim_masks.py"),
    Mutant("lt2-drop-last-batch", "LT-2", "the last, smaller batch of an epoch is dropped",
           (Edit("refimpl/fl/client.py", "for s in range(0, n, b):",
                 "for s in range(0, n - b + 1, b):"),
            Edit("refimpl/fl/client.py",
                 "return cfg.train.local_epochs * math.ceil(n / cfg.train.batch_size)",
                 "return cfg.train.local_epochs * (n // cfg.train.batch_size)")),
           (T + "test_fl_client.py::test_batches_cover_each_epoch",)),
    _m("pg5-growth-masked-gradient", "PG-5", "growth scores from the masked gradient",
       "refimpl/fl/client.py", "opts = run_options(cfg, None)  # no masks",
       "opts = run_options(cfg, masks)  # no masks", T + "test_fl_client.py"),
    _m("pg5-upload-among-all-positions", "PG-5", "uploaded pairs chosen among all positions",
       "refimpl/fl/client.py", "inactive = np.flatnonzero(~masks[name].reshape(-1))",
       "inactive = np.arange(masks[name].size)", T + "test_fl_client.py"),
    _m("lt1-lr-exponent", "LT-1", "η_t = η0·(η_min/η0)^(t/R)",
       "refimpl/fl/schedule.py", "** ((t - 1) / cfg.run.rounds)", "** (t / cfg.run.rounds)",
       T + "test_fl_rules.py"),
    _m("lt1-weight-decay-sign", "LT-1", "weight decay added with the wrong sign",
       OPT, "d = g + p.dtype.type(self.weight_decay) * p",
       "d = g - p.dtype.type(self.weight_decay) * p", T + "test_optim_masks.py"),
    _m("mask3-momentum-keeps-history", "MASK-3", "momentum buffer keeps masked history",
       OPT, "buf *= m  # a position pruned", "pass  # a position pruned",
       T + "test_optim_masks.py"),
    _m("lt2-same-shuffle-every-epoch", "LT-2", "every epoch reuses epoch 0's permutation",
       "refimpl/fl/client.py", "Purpose.SHUFFLE, t, client, epoch)",
       "Purpose.SHUFFLE, t, client, 0)",
       T + "test_fl_client.py::test_batches_cover_each_epoch"),
    _m("bae2-penalty-value-without-lambda", "BAE-2", "penalty value λ·Σθ² loses its λ",
       BAE, "    return lam * out\n", "    return out\n", T + "test_fl_rules.py"),
    _m("bae2-gradient-without-factor-2", "BAE-2", "l2sq gradient λθ instead of 2λθ",
       BAE, "w.dtype.type(2.0 * lam) * v", "w.dtype.type(lam) * v", T + "test_fl_rules.py"),
    _m("bae4-progress-linear", "BAE-4", "p(τ) = (T − τ)/T",
       BAE, "return (2 * iterations - 2 * tau) / (2 * iterations - tau)",
       "return (iterations - tau) / iterations", T + "test_fl_rules.py", T + "test_bae_lr.py"),
    _m("bae4-plain-sigmoid", "BAE-4", "β uses σ(‖θ_Low‖) instead of 2σ − 1",
       BAE, "factor = 2.0 * (1.0 / (1.0 + math.exp(-low_norm))) - 1.0",
       "factor = 1.0 / (1.0 + math.exp(-low_norm))", T + "test_fl_rules.py"),
    _m("bae4-no-floor-at-eta", "BAE-4", "μ_τ = β_τ without max(η_t, ·)",
       BAE, "return max(lr_t, beta)", "return beta", T + "test_fl_rules.py"),
    _m("bae5-adjustment-round-extrudes", "BAE-5", "with E_b ≥ 1 the adjustment round extrudes too",
       "refimpl/fl/schedule.py", "for t_adj in range(t + 1, t + eb + 1):",
       "for t_adj in range(t, t + eb + 1):", T + "test_fl_rules.py"),
    # ---- NSConv (§3) ----
    _m("nsc1-variance-divisor-fan-in", "NSC-1", "s² divided by F instead of max(F − 1, 1)",
       NS, "return (scale / np.maximum(count - 1, 1)).astype(dtype)",
       "return (scale / np.maximum(count, 1)).astype(dtype)", T + "test_nsconv.py"),
    _m("nsc1-default-eps", "NSC-1", "nsconv2d's default ε = 1e-5",
       "refimpl/functional.py", "NSCONV_EPS = 1e-4", "NSCONV_EPS = 1e-5",
       T + "test_nsconv_scales.py"),
    _m("nsc2-masked-scale-uses-fan-in", "NSC-2", "masked stats scale by fan_in (compat method 1)",
       NS, 'scale = count if p.stats == "masked" else fan_in', "scale = fan_in",
       T + "test_nsconv.py", T + "test_nsconv_scales.py"),
    _m("nsc3-gradient-ignores-clamp", "NSC-3", "vjp differentiates s² even where clamped",
       NS, "coef = np.where(res.unclamped,", "coef = np.where(True,",
       T + "test_nsconv.py", T + "test_nsconv_scales.py"),
    # ---- SAP and the cache (§4) ----
    _m("sap2-drop-count-ceil", "SAP-2", "n_drop = ceil(γ·numel)",
       SAP, "return numel - (g.numerator * numel) // g.denominator",
       "return numel + (-(g.numerator * numel) // g.denominator)",
       T + "test_cache_formats.py", T + "test_sap.py"),
    _m("conv6-keep-count-float", "CONV-6", "n_drop from a float product",
       SAP, "return numel - (g.numerator * numel) // g.denominator",
       "return numel - int(float(g) * numel)", T + "test_cache_formats.py",
       T + "test_sap_counts.py"),
    _m("conv4-sap-ties-last-np", "CONV-4", "NumPy selection keeps the last tied entries",
       KC, "keep[np.flatnonzero(a == t)[:need]] = True",
       "keep[np.flatnonzero(a == t)[::-1][:need]] = True", T + "test_cache_formats.py"),
    _m("conv4-sap-ties-last-radix", "CONV-4", "radix selection keeps the last tied candidates",
       KC, "for j in range(m):  # prefix is now the full pattern of t",
       "for j in range(m - 1, -1, -1):  # prefix is now the full pattern of t",
       T + "test_cache_formats.py"),
    _m("cache1-bit-order-np", "CACHE-1", "NumPy selection packs big-endian bits",
       KC, 'return np.packbits(keep, bitorder="little"), int(keep.sum())',
       'return np.packbits(keep, bitorder="big"), int(keep.sum())', T + "test_cache_formats.py"),
    _m("cache1-bit-order-all-kept", "CACHE-1", "nothing dropped: big-endian bitmap tail",
       SAP, 'return np.packbits(np.ones(numel, dtype=bool), bitorder="little")',
       'return np.packbits(np.ones(numel, dtype=bool), bitorder="big")',
       T + "test_cache_formats.py", T + "test_sap.py"),
    _m("cache3-signed-zero-lost", "CACHE-3", "index decode adds +0.0 (-0.0 becomes +0.0)",
       KC, "        out[i] = values[j]\n        prev = i\n",
       "        out[i] = values[j] + zero\n        prev = i\n", T + "test_cache_formats.py"),
    _m("conv4-sap-ties-after-last", "CONV-4", "select_bits keeps ties after the last kept one",
       KC, "keep = np.int32(u.dtype.type(hi[base + q] & mask) > t_)",
       "keep = np.int32(u.dtype.type(hi[base + q] & mask) >= t_)", T + "test_cache_formats.py"),
    _m("sap2-scan-drops-block-candidates", "SAP-2", "the threshold scan counts a block's "
       "candidates but loses them from the total", KC, "        m += np.int64(m_b)\n",
       "        m += np.int64(m_b) * 0\n", T + "test_cache_formats.py", T + "test_sap.py"),
    _m("cache1-compact-word-bytes-misplaced", "CACHE-1", "compact reads a word's bytes 7 apart",
       KC, "any byte order)\n            m |= np.uint64(bits[8 * w + q]) << np.uint64(8 * q)",
       "any byte order)\n            m |= np.uint64(bits[8 * w + q]) << np.uint64(7 * q)",
       T + "test_cache_formats.py", T + "test_sap.py"),
    _m("conv4-gather-pack-loses-high-flags", "CONV-4", "gather packs only 4 flags per word",
       KC, "pack = np.uint64(0x0102040810204080)", "pack = np.uint64(0x0102040800000000)",
       T + "test_cache_formats.py"),
    _m("sap2-gather-drops-entries-above", "SAP-2", "the keep mask loses the entries above the "
       "threshold's bracket", KC,
       "bits[g + j] = np.uint8((((w >> one) & ones) * pack) >> s56)", "bits[g + j] = 0",
       T + "test_cache_formats.py"),
    _m("cache1-index-dtype-off-by-one", "CACHE-1", "index width must hold numel, not numel − 1",
       SAP, "if numel - 1 <= np.iinfo(dt).max:", "if numel <= np.iinfo(dt).max:",
       T + "test_cache_formats.py"),
    _m("cache2-auto-tie-prefers-later", "CACHE-2", "auto ties go to bitmap/index over dense",
       SAP, "if b < best_bytes:", "if b <= best_bytes:", T + "test_cache_formats.py"),
    _m("cache4-bitmap-bytes-floor", "CACHE-4", "bitmap bytes floor(numel/8)",
       SAP, "return (numel + 7) // 8 + n_keep * itemsize", "return numel // 8 + n_keep * itemsize",
       T + "test_cache_formats.py"),
    _m("sap1-shared-cache-encoded-twice", "SAP-1", "a shared input is encoded per layer",
       "refimpl/ops/conv.py", "return None, shared.get(x, sap)",
       "return None, prune_and_encode(x, sap)", T + "test_sap.py", T + "test_memory.py"),
    # ---- tape (§1) ----
    _m("tape1-overwrite", "TAPE-1", "backward overwrites instead of accumulating",
       "refimpl/core/tape.py", "cts[key] = c if prev is None else prev + c", "cts[key] = c",
       T + "test_tape.py"),
    _m("tape3-shared-buffer-twice", "TAPE-3", "a buffer held by two records counts twice",
       "refimpl/core/tape.py",
       "                if key in seen:\n                    continue\n", "",
       T + "test_tape.py", T + "test_memory.py"),
    _m("tape3-counts-leaf-operands", "TAPE-3", "parameters referenced as operands are counted",
       "refimpl/core/tape.py", "if vid is None or vid in self._leaves:", "if vid is None:",
       T + "test_tape.py", T + "test_memory.py"),
    _m("conv5-maxpool-backward-overwrites", "CONV-5", "max-pool backward overwrites overlaps",
       "refimpl/kernels/pool.py", "                        dx[n, c, ih, iw] += g[n, c, oh, ow]",
       "                        dx[n, c, ih, iw] = g[n, c, oh, ow]", T + "test_conv5_routing.py"),
    # ---- memory ledger (§5) ----
    # The ledger sums the residual records of the primitives' dry ``plan`` functions (MEM-1),
    # so its byte counts live next to each primitive: a plan that disagrees with its fwd, a
    # record field filed under another category, a buffer counted twice.
    _m("mem1-relu-bitmap-bytes", "MEM-1", "relu_plan: a bitmap byte per element",
       "refimpl/ops/elementwise.py", "res = ReluRes(Spec(((x.size + 7) // 8,), np.uint8), x.shape)",
       "res = ReluRes(Spec((x.size,), np.uint8), x.shape)", T + "test_memory.py"),
    _m("mem1-maxpool-argmax-itemsize", "MEM-1", "max_pool2d_plan: argmax in the input's dtype",
       "refimpl/ops/pool.py", "MaxPoolRes(Spec(out, np.uint8), x.shape)",
       "MaxPoolRes(Spec(out, x.dtype), x.shape)", T + "test_memory.py"),
    _m("mem1-nsconv-flags-missing", "MEM-1", "standardize_plan forgets the clamp flags",
       NS, "Spec((o,), w.dtype), Spec((o,), np.bool_))", "Spec((o,), w.dtype), None)",
       T + "test_memory.py"),
    _m("mem1-category-misfiled", "MEM-1", "conv's Ŵ filed under input_cache (same total)",
       CONV, '"w": "standardised_kernel",\n                  "relu_bits"',
       '"w": "input_cache",\n                  "relu_bits"', T + "test_memory_categories.py"),
    _m("mem1-gradients-dense", "MEM-1", "gradient bytes of all entries, not the nonzeros",
       MEMF, 'r["gradients"] = (k + other) * s', 'r["gradients"] = (n + other) * s',
       T + "test_memory.py"),
    _m("mem1-fused-relu-bits-misfiled", "MEM-1", "fused ReLU bitmap filed under input_cache",
       CONV, '"relu_bits": "relu_bitmap"}', '"relu_bits": "input_cache"}',
       T + "test_memory_categories.py"),
    _m("mem1-nsconv-scale-misfiled", "MEM-1", "r and the clamp flags filed with Ŵ",
       NS, '    category = "nsconv_scale"\n', '    category = "standardised_kernel"\n',
       T + "test_memory_categories.py"),
    _m("mem2-fused-relu-plan-bytes", "MEM-2", "conv2d_plan: fused ReLU bitmap a byte per element",
       CONV, "bits = Spec(((out.size + 7) // 8,), np.uint8) if p.relu else None",
       "bits = Spec((out.size,), np.uint8) if p.relu else None", T + "test_memory.py"),
    _m("mem2-packed-what-planned-dense", "MEM-2", "standardize_plan: Ŵ dense, fwd packs it",
       NS, "out = Spec((p.mask.nnz,) if p.packed else w.shape, w.dtype)",
       "out = Spec(w.shape, w.dtype)", T + "test_memory_categories.py", T + "test_memory.py"),
    _m("mem2-shared-cache-planned-twice", "MEM-2", "dry trace: each layer plans its own cache of a "
       "shared input", CONV, "    if shared is not None:\n        return None, shared.get(x, sap)",
       "    if shared is not None and not isinstance(x, Spec):\n"
       "        return None, shared.get(x, sap)",
       T + "test_memory_categories.py", T + "test_memory.py"),
    # ---- the liveness timeline (MEM-5) and the measured peak (MEM-6) ----
    _m("mem5-output-freed-early", "MEM-5", "an output dies one event before its last reader",
       MEMF, 'owner[v]["died"] = max(owner[v]["died"], i)',
       'owner[v]["died"] = max(owner[v]["died"], i - 1)', T + "test_memory_timeline.py"),
    _m("mem5-output-freed-late", "MEM-5", "an output dies one event after its last reader",
       MEMF, 'owner[v]["died"] = max(owner[v]["died"], i)',
       'owner[v]["died"] = max(owner[v]["died"], i + 1)', T + "test_memory_timeline.py"),
    _m("mem5-residual-kept-after-vjp", "MEM-5", "residuals live to the end of the step",
       MEMF, "release = bwd_event.get(i, last)", "release = last", T + "test_memory_timeline.py"),
    _m("mem5-cotangent-born-late", "MEM-5", "a cotangent is born one event after its vjp",
       MEMF, "math.prod(spec[0]) * np.dtype(spec[1]).itemsize, e, e,",
       "math.prod(spec[0]) * np.dtype(spec[1]).itemsize, e + 1, e + 1,",
       T + "test_memory_timeline.py"),
    _m("mem5-fwd-workspace-omitted", "MEM-5", "no forward workspace in the timeline",
       MEMF, "for name, nbytes in node.plan.fwd_workspace.items():",
       "for name, nbytes in {}.items():", T + "test_memory_timeline.py"),
    _m("mem5-vjp-workspace-omitted", "MEM-5", "no backward workspace in the timeline",
       MEMF, "for name, nbytes in node.plan.vjp_workspace.items():",
       "for name, nbytes in {}.items():", T + "test_memory_timeline.py"),
    _m("mem5-masked-weight-index-unplanned", "MEM-5", "conv2d_plan: no weight index workspace",
       CONV, 'fwd_ws = {"weight_index": p.mask.index_nbytes, **fwd_ws}', "fwd_ws = dict(fwd_ws)",
       T + "test_memory_timeline.py"),
    _m("mem5-gradients-not-persistent", "MEM-5", "the always-live set lacks the gradients",
       MEMF, '"weights_sparse": totals["weights_sparse"], "gradients": totals["gradients"],',
       '"weights_sparse": totals["weights_sparse"],', T + "test_memory.py"),
    _m("mem6-measured-current-not-peak", "MEM-6", "measure_step reports current bytes, not peak",
       MEMF, "peak = tracemalloc.get_traced_memory()[1]",
       "peak = tracemalloc.get_traced_memory()[0]", T + "test_memory_measured.py"),
    _m("mem6-cli-json-drops-measured", "MEM-6", "fedmef memory --measure --json omits it",
       CLI, '            d["measured"] = measured\n', "            pass\n",
       T + "test_memory_measured.py"),
    _m("mem6-cli-text-drops-measured", "MEM-6", "fedmef memory --measure prints no measured peak",
       CLI, '    if measured is not None:\n        out.append(f"measured peak',
       '    if False:\n        out.append(f"measured peak', T + "test_memory_measured.py"),
    _m("mem3-footprint-dense-weights", "MEM-3", "footprint with dense weights",
       MEMF, 'totals["footprint"] = totals["weights_sparse"] + totals["activation_cache"]',
       'totals["footprint"] = totals["weights_dense"] + totals["activation_cache"]',
       T + "test_memory.py"),
    _m("mem4-growth-index-int32", "MEM-4", "growth pairs always with 4-byte indices",
       SRV, "total += idx.size * index_dtype(math.prod(shape)).itemsize + val.nbytes",
       "total += idx.size * 4 + val.nbytes", T + "test_fl_client.py"),
    # ---- the typed SAP policy and its cached layouts (SAP-2, CONV-6, CACHE-2) ----
    _m("sap2-layout-keyed-by-itemsize", "SAP-2", "SapPolicy.layout remembers one n_keep per dtype",
       SAP, "key = (numel, itemsize)", "key = itemsize", T + "test_sap_layout.py"),
    _m("conv6-layout-keyed-by-numel", "CONV-6", "SapPolicy.layout ignores the itemsize in its key",
       SAP, "key = (numel, itemsize)", "key = numel", T + "test_sap_layout.py"),
    _m("sap2-compat-keep-default-policy", "SAP-2", "SapPolicy's default keep rule is the authors'",
       SAP, '    keep: str = "exact"\n', '    keep: str = "authors"\n', T + "test_sap_layout.py"),
    _m("sap2-compat-keep-default-make", "SAP-2", "SapPolicy.make defaults to the authors' count",
       SAP, 'def make(cls, gamma=0.0, policy="auto", keep="exact")',
       'def make(cls, gamma=0.0, policy="auto", keep="authors")', T + "test_sap_layout.py"),
    _m("sap2-compat-keep-default-config", "SAP-2", "config sap.keep_count defaults to authors",
       "refimpl/fl/config.py", 'keep_count: str = _key("exact",',
       'keep_count: str = _key("authors",', T + "test_sap_layout.py"),
    _m("sap2-compat-keep-default-function", "SAP-2", "keep_count() defaults to the authors' rule",
       SAP, 'def keep_count(numel: int, gamma, rule: str = "exact")',
       'def keep_count(numel: int, gamma, rule: str = "authors")', T + "test_sap_counts.py"),
    # ---- compat switches of the authors' code (docs/DEVIATIONS.md) leaking into a default ----
    _m("nsc3-compat-mask-leaks", "NSC-3", "every stats mode drops active zeros from Ŵ (compat N1)",
       NS, "        if stats in COMPAT_STATS:\n            packed = False",
       "        if stats in ALL_STATS:\n            packed = False",
       T + "test_authors_nsconv_method2.py::test_the_departure_is_the_mask_only"),
    _m("sap1-compat-layers-default", "SAP-1", "RunOptions caches plain convs only by default",
       "refimpl/models/graph.py", '    sap_layers: str = "all"\n',
       '    sap_layers: str = "plain_conv"\n', T + "test_compat_defaults.py"),
    _m("sap1-compat-layers-config", "SAP-1", "config sap.layers defaults to plain_conv",
       "refimpl/fl/config.py", 'layers: str = _key("all",', 'layers: str = _key("plain_conv",',
       T + "test_compat_defaults.py"),
    _m("bae4-compat-lr-rule-config", "BAE-4", "config bae.lr_rule defaults to authors",
       "refimpl/fl/config.py", 'lr_rule: str = _key("spec",', 'lr_rule: str = _key("authors",',
       T + "test_compat_defaults.py"),
    _m("bae1-compat-marked-set-config", "BAE-1", "config bae.marked_set defaults to authors",
       "refimpl/fl/config.py", 'marked_set: str = _key("fixed",',
       'marked_set: str = _key("authors",', T + "test_compat_defaults.py"),
    _m("pg1-compat-schedule-config", "PG-1", "config sparse.schedule defaults to authors",
       "refimpl/fl/config.py", 'schedule: str = _key("spec",', 'schedule: str = _key("authors",',
       T + "test_compat_defaults.py"),
    _m("bae1-compat-round-rule-marked", "BAE-1", "RoundRule re-marks every step by default",
       BAE, 'lr_rule: str = "spec", marked_set: str = "fixed"',
       'lr_rule: str = "spec", marked_set: str = "authors"', T + "test_compat_defaults.py"),
    _m("bae1-compat-marked-among-all", "BAE-1", "marked_set() selects among all entries by "
       "default (compat F2)", SP, 'def marked_set(weights, masks, counts, among: str = "active")',
       'def marked_set(weights, masks, counts, among: str = "all")',
       T + "test_prune_grow.py::test_marked_set_by_hand",
       T + "test_prune_grow.py::test_marked_set_is_k_smallest_active"),
    # ---- the weight index of a masked layer (MASK-3) ----
    _m("mask3-gather-off-by-one", "MASK-3", "gather reads each active value one column early",
       MKF, ".reshape(-1).take(index.flat)", ".reshape(-1).take(index.flat - 1)",
       T + "test_kernels.py"),
    _m("mask3-scatter-off-by-one", "MASK-3", "scatter writes each value one column early",
       MKF, "dense[index.flat] = val", "dense[index.flat - 1] = val",
       T + "test_kernels.py"),
    _m("mask3-build-index-shifted", "MASK-3", "build_index pairs each entry with the previous "
       "offset", MKF, "WeightIndex(ptr, cols.astype(np.int32), m.shape)",
       "WeightIndex(ptr, np.roll(cols, 1).astype(np.int32), m.shape)", T + "test_kernels.py"),
    _m("mask3-wide-forward-pair-reads-one-row", "MASK-3", "the wide forward's two-term pass "
       "reads the first term's row twice", MKF,
       "acc[k] = (acc[k] + v0 * x0[k]) + v1 * x1[k]", "acc[k] = (acc[k] + v0 * x0[k]) + v1 * x0[k]",
       T + "test_kernels.py::test_wide_rows_kernels_are_the_loops_bit_for_bit",
       T + "test_kernels.py::test_masked_kernels_agree_with_dense_on_masked_weight"),
    _m("mask3-wide-grad-input-pair-reads-one-row", "MASK-3", "the wide input gradient's "
       "two-term pass reads the first term's row twice", MKF,
       "acc[k] = (acc[k] + v0 * g0[k]) + v1 * g1[k]", "acc[k] = (acc[k] + v0 * g0[k]) + v1 * g0[k]",
       T + "test_kernels.py::test_wide_rows_kernels_are_the_loops_bit_for_bit",
       T + "test_kernels.py::test_masked_kernels_agree_with_dense_on_masked_weight"),
    _m("mask3-wide-grad-weight-second-vector-reads-first-cotangent", "MASK-3", "the weight "
       "gradient's second vector of positions multiplies by the first vector's cotangent", MKF,
       "b0 = vec_add(b0, vec_mul(gb, vec_load(xp, s0 + q + lanes)))",
       "b0 = vec_add(b0, vec_mul(ga, vec_load(xp, s0 + q + lanes)))",
       T + "test_kernels.py::test_wide_rows_kernels_are_the_loops_bit_for_bit",
       T + "test_kernels.py::test_masked_kernels_agree_with_dense_on_masked_weight"),
    _m("mask3-wide-grad-weight-second-entry-first-offset", "MASK-3", "the weight gradient's "
       "second entry of four reads the input at the first entry's offset", MKF,
       "s1 = xoff[e + min(1, r - 1)]", "s1 = xoff[e]",
       T + "test_kernels.py::test_wide_rows_kernels_are_the_loops_bit_for_bit",
       T + "test_kernels.py::test_masked_kernels_agree_with_dense_on_masked_weight"),
    _m("mask3-wide-grad-weight-drops-a-position", "MASK-3", "the weight gradient's running sum "
       "leaves out the last position of each first vector", MKF,
       "t0 = vec_accumulate(t0, a0, length - k)", "t0 = vec_accumulate(t0, a0, length - k - 1)",
       T + "test_kernels.py::test_wide_rows_kernels_are_the_loops_bit_for_bit",
       T + "test_kernels.py::test_masked_kernels_agree_with_dense_on_masked_weight"),
    _m("mask3-fallback-fwd-dense-weight", "MASK-3", "forward fallback convolves the raw weight",
       CONV, "wd = MK.scatter(_active_values(w, p), p.mask.index)\n        y = K.conv2d_forward",
       "wd = _dense_weight(w, p)\n        y = K.conv2d_forward",
       T + "test_faults.py::test_mask3_is_enforced_identically_on_every_kernel_path"),
    _m("mask3-fallback-vjp-dense-weight", "MASK-3", "input-gradient fallback uses the raw weight",
       CONV, "wd = MK.scatter(_active_values(res.w, p), p.mask.index)",
       "wd = _dense_weight(res.w, p)",
       T + "test_faults.py::test_mask3_is_enforced_identically_on_every_kernel_path"),
    # ---- the ReLU fused into the conv (CONV-5) and the packed Ŵ (NSC-3) ----
    _m("conv5-fused-relu-grad-at-zero", "CONV-5", "fused ReLU keeps (y >= 0): ReLU'(0) = 1",
       CONV, _RELU_FWD, _RELU_FWD_NO_BITS +
       '        bits = np.packbits(y >= 0, axis=None, bitorder="little") if any(needs) else None\n',
       T + "test_fused_relu.py"),
    _m("conv5-fused-relu-bias-grad-unmasked", "CONV-5", "fused ReLU: the bias gradient sums the "
       "cotangent before the ReLU's mask", CONV, _RELU_VJP + _BIAS_GRAD, _BIAS_GRAD + _RELU_VJP,
       T + "test_fused_relu.py"),
    _m("conv5-fused-relu-bits-before-bias", "CONV-5", "fused ReLU bitmap of the conv before its "
       "bias", CONV, _RELU_FWD,
       _RELU_FWD_NO_BITS + "        pre = y if b is None else y - b.reshape(-1, 1, 1)\n"
       '        bits = np.packbits(pre > 0, axis=None, bitorder="little") if any(needs) else '
       'None\n',
       T + "test_fused_relu.py"),
    _m("nsc3-packed-what-transposed", "NSC-3", "packed Ŵ in (c, j, i) order, not index order",
       NS, "return (MK.gather(what, p.mask.index) if p.packed else what), res",
       "return (np.ascontiguousarray(what.transpose(0, 1, 3, 2)[p.mask.mask.transpose(0, 1, 3, "
       "2)]) if p.packed else what), res", T + "test_nsconv.py", T + "test_nsconv_scales.py"),
    # ---- data (§10) ----
    _m("data1-apportion-ties-high-index", "DATA-1", "apportion remainder ties to higher index",
       "refimpl/data/partitioners.py", "order = np.lexsort((np.arange(len(p)), -frac))",
       "order = np.lexsort((-np.arange(len(p)), -frac))", T + "test_data_partition.py"),
)


# ---- the runner --------------------------------------------------------------------------------
def _repo_files(root: Path) -> list[str]:
    """Tracked and untracked-but-not-ignored files (the working tree as it is, new tests
    included), plus Numba's cache files so the scratch copy does not recompile every kernel."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=root, check=True, capture_output=True).stdout.decode()
    files = [f for f in out.split("\0") if f and (root / f).is_file()]
    for pattern in ("*.nbi", "*.nbc"):
        files += [str(p.relative_to(root)) for p in root.glob(f"refimpl/**/__pycache__/{pattern}")]
    return files


def make_scratch(root: Path = ROOT) -> Path:
    scratch = Path(tempfile.mkdtemp(prefix="fedmef-mutants-"))
    for rel in _repo_files(root):
        dst = scratch / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dst)  # keeps mtimes: Numba's cache index stays valid
    return scratch


def stale_edits(m: Mutant, root: Path) -> list[str]:
    """Why the mutant no longer applies to the code under ``root`` (empty when it does)."""
    out = []
    for e in m.edits:
        path = root / e.file
        if not path.is_file():
            out.append(f"{e.file}: file not found")
            continue
        n = path.read_text(encoding="utf-8").count(e.old)
        if n != 1:
            out.append(f"{e.file}: old text found {n} times (expected exactly once): {e.old!r}")
    return out


def _env() -> dict:
    env = dict(os.environ)
    env["CI"] = "1"  # the derandomised Hypothesis profile without an example database
    env.pop("PYTHONPATH", None)
    return env


def _pytest(scratch: Path, tests, timeout: float) -> tuple[int | None, str]:
    shutil.rmtree(scratch / ".hypothesis", ignore_errors=True)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p",
           "no:xdist", "-p", "no:randomly", *tests]
    try:
        r = subprocess.run(cmd, cwd=scratch, env=_env(), capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, ""
    return r.returncode, r.stdout + r.stderr


def _first_failure(output: str) -> str:
    m = re.search(r"^FAILED (\S+)", output, flags=re.M)
    if m:
        return m.group(1).split("[")[0].replace("spec_tests/", "")
    m = re.search(r"^ERROR (\S+)", output, flags=re.M)
    return ("error: " + m.group(1)) if m else ""


def _check_imports_from(scratch: Path) -> None:
    code = "import refimpl, models, data_tools; print(refimpl.__file__, models.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=scratch, env=_env(), check=True,
                         capture_output=True, text=True).stdout
    if any(not p.startswith(str(scratch)) for p in out.split()):
        raise SystemExit(f"mutants: the scratch copy imports the library from elsewhere "
                         f"({out.strip()}); a mutant there would test nothing. Run from a "
                         f"checkout whose package is not installed over it.")


def run(mutants, timeout: float, keep: bool, log=print) -> list[tuple[Mutant, str, str, float]]:
    scratch = make_scratch()
    log(f"scratch copy: {scratch}")
    results = []
    try:
        _check_imports_from(scratch)
        union = list(dict.fromkeys(t for m in mutants for t in m.tests))
        t0 = time.monotonic()
        code, out = _pytest(scratch, union, timeout * 4)
        if code != 0:
            raise SystemExit(f"mutants: the unmutated baseline does not pass (exit {code}); "
                             f"fix the suite first.\n{out[-3000:]}")
        log(f"baseline: {len(union)} test selections pass on the unmutated copy "
            f"({time.monotonic() - t0:.0f} s)")
        for m in mutants:
            why = stale_edits(m, scratch)
            if why:
                results.append((m, "STALE", "; ".join(why), 0.0))
                log(f"  {m.id:38s} STALE  {'; '.join(why)}")
                continue
            saved = {}
            for e in m.edits:
                path = scratch / e.file
                if path not in saved:
                    st = path.stat()
                    saved[path] = (path.read_bytes(), (st.st_atime_ns, st.st_mtime_ns))
                path.write_text(path.read_text(encoding="utf-8").replace(e.old, e.new, 1),
                                encoding="utf-8")
            t0 = time.monotonic()
            try:
                code, out = _pytest(scratch, m.tests, timeout)
            finally:
                for path, (data, times) in saved.items():
                    path.write_bytes(data)
                    os.utime(path, ns=times)
            secs = time.monotonic() - t0
            if code is None:
                status, detail = "TIMEOUT", f"over {timeout:.0f} s"
            elif code == 1:
                status, detail = "caught", _first_failure(out)
            elif code == 0:
                status, detail = "NOT CAUGHT", "the tests pass on the mutated code"
            else:
                status, detail = "ERROR", f"pytest exit {code}: {_first_failure(out)}"
            results.append((m, status, detail, secs))
            log(f"  {m.id:38s} {status:10s} {secs:5.0f} s  {detail}")
    finally:
        if keep:
            log(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return results


def table(results) -> str:
    lines = ["| mutant | rule | what the edit breaks | outcome | first failing test |",
             "|---|---|---|---|---|"]
    for m, status, detail, _ in results:
        lines.append(f"| `{m.id}` | {m.rule} | {m.what} | {status} | {detail} |")
    caught = sum(1 for r in results if r[1] == "caught")
    lines.append("")
    lines.append(f"{caught} of {len(results)} mutants caught.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Apply rule-breaking edits one at a time to a "
                                 "scratch copy and report which the spec suite catches.")
    ap.add_argument("--only", nargs="+", metavar="ID", help="run only these mutants")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--check-stale", action="store_true",
                    help="only check that every edit still applies to the working tree")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy")
    ap.add_argument("--markdown", metavar="FILE", help="also write the result table here")
    args = ap.parse_args(argv)
    selected = list(MUTANTS)
    if args.only:
        known = {m.id for m in MUTANTS}
        unknown = [i for i in args.only if i not in known]
        if unknown:
            ap.error(f"unknown mutant ids {unknown}; see --list")
        selected = [m for m in MUTANTS if m.id in args.only]
    if args.list:
        for m in selected:
            print(f"{m.id:38s} {m.rule:8s} {m.what}  [{', '.join(m.tests)}]")
        return 0
    if args.check_stale:
        bad = [(m, why) for m in selected if (why := stale_edits(m, ROOT))]
        for m, why in bad:
            print(f"STALE {m.id}: {'; '.join(why)}", file=sys.stderr)
        print(f"{len(selected) - len(bad)} of {len(selected)} mutants apply")
        return 1 if bad else 0
    results = run(selected, args.timeout, args.keep)
    text = table(results)
    print()
    print(text)
    if args.markdown:
        out = Path(args.markdown)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, out)
    bad = [r for r in results if r[1] != "caught"]
    if bad:
        print(f"\n{len(bad)} mutant(s) not caught, stale or in error: "
              f"{', '.join(r[0].id for r in bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
