"""A PyTorch twin of the conformance scenario (test-only code).

Written from SPEC.md and docs/conformance.md, independently of refimpl: it imports neither
``refimpl`` nor ``models``. It reads only the *inputs* of a dump (the ``inputs`` step: data,
initial draws, masks, sampled clients, shuffle and growth permutations) and the scenario's
configuration and architecture from ``manifest.json``, recomputes every other quantity in
float64 with PyTorch, and writes a dump in the same layout, which
``refimpl.conformance.check`` then compares with the golden one.

What it implements (SPEC rule ids):
- ERK-1, ERK-2 layer counts with exact rationals;
- NSC-1 (and NSC-2) weight standardisation, differentiated by autograd (NSC-3);
- SAP-2 selection (stable sort on |x|, ties by index), CACHE-1/2 encodings, and SAP-3 as custom
  autograd functions for conv2d and linear: exact forward and input gradient, weight gradient
  from the pruned input x̂;
- LT-1..LT-3 local SGD with masks; BAE-1 marked set, BAE-2 penalty (and the compat variant
  ``authors``), BAE-4 budget-aware learning rate;
- PG-2..PG-7 growth scores, averaging, prune and grow; AGG-1 FedAvg.

``bug`` plants a known defect (tests of the tester): ``"sap_full_input"`` computes weight
gradients from the full input x instead of x̂ (violates SAP-3).
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np

BUGS = (None, "sap_full_input")
AUTHORS_RAMP = 1e-4  # the public code's λ increment per local iteration (docs/DEVIATIONS.md)


# ---- ERK (ERK-1, ERK-2) ---------------------------------------------------------------------
def erk_counts(shapes, density, kind="erk"):
    """Integer nonzero counts per layer: RigL's ERK with the dense-layer cap, exact rationals."""
    d = Fraction(str(density))
    sizes = [math.prod(s) for s in shapes]
    if kind == "uniform":
        dens, dense = [d] * len(shapes), set()
    else:
        scores = [Fraction(s[0] + s[1], math.prod(s)) if kind == "er" and len(s) == 4
                  else Fraction(sum(s), math.prod(s)) for s in shapes]
        dense = set()
        while True:
            free = [i for i in range(len(shapes)) if i not in dense]
            eps = (d * sum(sizes) - sum(sizes[i] for i in dense)) / sum(scores[i] * sizes[i]
                                                                         for i in free)
            over = [i for i in free if eps * scores[i] > 1]
            if not over:
                break
            best = max(scores[i] for i in over)
            dense.add(min(i for i in over if scores[i] == best))
        dens = [Fraction(1) if i in dense else eps * scores[i] for i in range(len(shapes))]
    exact = [dl * n for dl, n in zip(dens, sizes)]
    counts = [math.floor(e) for e in exact]
    target = math.floor(d * sum(sizes) + Fraction(1, 2))
    order = sorted((i for i in range(len(shapes)) if i not in dense and counts[i] < sizes[i]),
                   key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:target - sum(counts)]:
        counts[i] += 1
    return counts


# ---- selections (CONV-4) --------------------------------------------------------------------
def k_smallest(candidates, scores, k):
    """k candidates of smallest score, ties by ascending index; returned ascending."""
    pairs = sorted(zip(scores.tolist(), candidates.tolist()))
    return np.array(sorted(i for _, i in pairs[:k]), dtype=np.int64)


def k_largest(candidates, scores, k):
    pairs = sorted(zip((-scores).tolist(), candidates.tolist()))
    return np.array(sorted(i for _, i in pairs[:k]), dtype=np.int64)


# ---- SAP (SAP-2, CACHE-1, CACHE-2) ----------------------------------------------------------
def keep_count(numel, gamma):
    g = Fraction(str(gamma))
    return numel - math.floor(g * numel)


def sap_select(torch, x, gamma):
    """Kept flat indices (ascending) of the n_keep largest |x|, ties by lowest index."""
    a = x.detach().abs().reshape(-1)
    n_keep = keep_count(a.numel(), gamma)
    order = torch.sort(a, descending=True, stable=True).indices[:n_keep]
    return torch.sort(order).values


def sap_record(x_flat: np.ndarray, kept: np.ndarray, shape, policy: str) -> dict:
    """The cache a layer stores (CACHE-1) under ``policy`` (CACHE-2: auto = smallest, ties
    dense > bitmap > index; ``int32``: the public code's int32 indices, docs/DEVIATIONS.md), as
    dump arrays."""
    numel, k, s = x_flat.size, kept.size, x_flat.itemsize
    w = 1 if numel - 1 <= 0xFF else 2 if numel - 1 <= 0xFFFF else 4
    sizes = {"dense": numel * s, "bitmap": (numel + 7) // 8 + k * s, "index": k * (w + s),
             "int32": k * (4 + s)}
    fmt = policy if policy != "auto" else min(("dense", "bitmap", "index"),
                                              key=lambda f: (sizes[f], ("dense", "bitmap",
                                                                        "index").index(f)))
    keep = np.zeros(numel, dtype=bool)
    keep[kept] = True
    rec = {"kept": kept.astype(np.int64),
           "format": np.uint8({"dense": 0, "bitmap": 1, "index": 2, "int32": 3}[fmt])}
    if fmt == "bitmap":
        rec["bits"] = np.packbits(keep, bitorder="little")
        rec["values"] = x_flat[kept]
    elif fmt in ("index", "int32"):
        rec["index"] = kept.astype(np.int32 if fmt == "int32" else
                                   {1: np.uint8, 2: np.uint16, 4: np.uint32}[w])
        rec["values"] = x_flat[kept]
    else:
        rec["values"] = np.where(keep, x_flat, 0.0).reshape(shape)
    rec["nbytes"] = np.int64(sizes[fmt])
    return rec


def sap_functions(torch):
    """conv2d and linear with the SAP residual policy as custom autograd functions (SAP-3)."""
    grad = torch.nn.grad

    class SapConv2d(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b, conf):
            stride, padding, groups, x_saved = conf["stride"], conf["padding"], conf["groups"], \
                conf["x_saved"]
            ctx.save_for_backward(x_saved, w)
            ctx.geom = (tuple(x.shape), stride, padding, groups, b is not None)
            return torch.nn.functional.conv2d(x, w, b, stride, padding, 1, groups)

        @staticmethod
        def backward(ctx, g):
            x_saved, w = ctx.saved_tensors
            x_shape, stride, padding, groups, has_b = ctx.geom
            dx = dw = db = None
            if ctx.needs_input_grad[0]:  # exact: needs only w and g
                dx = grad.conv2d_input(x_shape, w, g, stride, padding, 1, groups)
            if ctx.needs_input_grad[1]:  # from the cached (pruned) input
                dw = grad.conv2d_weight(x_saved, w.shape, g, stride, padding, 1, groups)
            if has_b and ctx.needs_input_grad[2]:
                db = g.sum((0, 2, 3))
            return dx, dw, db, None

    class SapLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b, conf):
            ctx.save_for_backward(conf["x_saved"], w)
            ctx.has_b = b is not None
            y = x @ w.T
            return y + b if b is not None else y

        @staticmethod
        def backward(ctx, g):
            x_saved, w = ctx.saved_tensors
            dx = g @ w if ctx.needs_input_grad[0] else None
            dw = g.T @ x_saved if ctx.needs_input_grad[1] else None
            db = g.sum(0) if ctx.has_b and ctx.needs_input_grad[2] else None
            return dx, dw, db, None

    return SapConv2d.apply, SapLinear.apply


# ---- the scenario ---------------------------------------------------------------------------
class Twin:
    """Runs the scenario of a dump's manifest from its inputs; see the module docstring."""

    def __init__(self, torch, dump_dir, bug=None):
        if bug not in BUGS:
            raise ValueError(f"unknown planted bug {bug!r}; valid: {BUGS}")
        self.torch, self.bug = torch, bug
        root = Path(dump_dir)
        self.manifest = json.loads((root / "manifest.json").read_text("utf-8"))
        first = self.manifest["steps"][0]
        if first["name"] != "inputs":
            raise ValueError("the first step of a dump must be 'inputs'")
        with np.load(root / first["file"], allow_pickle=False) as z:
            self.inputs = {k: z[k] for k in z.files}
        sc = self.manifest["scenario"]
        self.cfg, self.arch = sc["config"], sc["architecture"]
        self.prunable, self.rounds_run = sc["prunable"], sc["rounds_run"]
        self.param_names = list(sc["params"])
        self.eps = sc["nsconv_eps"]
        if self.cfg["bae"]["rounds"] != 0 or self.cfg["model"]["name"] != "cnn":
            raise ValueError("the twin implements bae.rounds = 0 on plain layer chains")
        self.conv_fn, self.linear_fn = sap_functions(torch)
        self.steps: list[tuple[str, dict]] = []

    # -- helpers --------------------------------------------------------------------------
    def t(self, a):
        return self.torch.from_numpy(np.array(a))

    @staticmethod
    def n(x):
        return x.detach().numpy().copy()

    def layer(self, name):
        return name.rsplit(".", 1)[0]

    def client_data(self, k):
        return self.inputs[f"data/c{k}/x_u8"], self.inputs[f"data/c{k}/y"]

    def normalise(self, u8):
        mean, std = self.t(self.inputs["data/mean"]), self.t(self.inputs["data/std"])
        return (self.t(u8).double() / 255.0 - mean) / std

    def standardize(self, w, gain, mask):
        """NSC-1 (stats dense) / NSC-2 (masked) per output channel."""
        o = w.shape[0]
        w2, m2 = w.reshape(o, -1), mask.reshape(o, -1).to(w.dtype)
        if self.cfg["model"]["nsconv_stats"] == "dense":
            a = self.torch.ones_like(m2)
        else:
            a = m2
        count = a.sum(1)
        mu = (w2 * a).sum(1) / count.clamp_min(1)
        c = (w2 - mu[:, None]) * a
        s2 = (c * c).sum(1) / (count - 1).clamp_min(1)
        r = self.torch.sqrt(self.torch.clamp_min(s2 * count, self.eps))
        return (gain[:, None] * c / r[:, None] * m2).reshape(w.shape)

    # -- forward (CONV-1, CONV-5, NSC-1, SAP-1..3) ----------------------------------------
    def forward(self, params, masks, x, effective=None):
        """Logits and, for recording, Ŵ per NSConv layer, each layer's output and each
        prunable layer's SAP cache. ``effective``: leaf tensors replacing the effective kernel
        of every prunable layer (growth scores, PG-5): plain convs, no masks."""
        gamma, policy = self.cfg["sap"]["gamma"], self.cfg["sap"]["cache_policy"]
        w_hat, acts, caches = {}, [], []
        h = x
        for i, L in enumerate(self.arch):
            kind = L["kind"]
            if kind in ("conv", "linear"):
                name = L["name"]
                w, b = params[f"{name}.weight"], params.get(f"{name}.bias")
                m = masks[f"{name}.weight"]
                if effective is not None:
                    w_used = effective[f"{name}.weight"]
                elif kind == "conv" and L["norm"] == "nsconv":
                    w_used = self.standardize(w, params[f"{name}.gain"], m)
                    w_hat[name] = self.n(w_used)
                elif kind == "conv":
                    w_used = w * m.to(w.dtype)  # masked conv: zero weight gradient off the mask
                else:
                    w_used = w
                kept = sap_select(self.torch, h, gamma)
                x_flat = self.n(h).reshape(-1)
                caches.append((name, sap_record(x_flat, self.n(kept), tuple(h.shape), policy)))
                keep = self.torch.zeros(h.numel(), dtype=self.torch.bool)
                keep[kept] = True
                x_saved = h.detach() if self.bug == "sap_full_input" else \
                    self.torch.where(keep.reshape(h.shape), h.detach(), self.torch.zeros(()))
                conf = {"x_saved": x_saved}
                if kind == "conv":
                    conf.update(stride=L["stride"], padding=L["padding"], groups=L["groups"])
                    h = self.conv_fn(h, w_used, b, conf)
                else:
                    h = self.linear_fn(h, w_used, b, conf)
            elif kind == "relu":
                h = self.torch.relu(h)
            elif kind == "maxpool":
                h = self.torch.nn.functional.max_pool2d(h, L["kernel"], L["stride"])
            elif kind == "gap":
                h = h.mean((2, 3))
            else:
                raise ValueError(f"twin: unknown layer kind {kind!r}")
            acts.append((f"{i:02d}_{kind}", self.n(h)))
        return h, w_hat, acts, caches

    # -- schedule (LT-1, PG-1..PG-3) ------------------------------------------------------
    def round_lr(self, t):
        tr, R = self.cfg["train"], self.cfg["run"]["rounds"]
        if tr["lr_schedule"] == "constant":
            return tr["lr"]
        return tr["lr"] * (tr["lr_min"] / tr["lr"]) ** ((t - 1) / R)

    def t_end(self):
        return self.cfg["sparse"]["t_end"] or self.cfg["run"]["rounds"]

    def adjusting(self, t):
        return t % self.cfg["sparse"]["delta_t"] == 0 and t <= self.t_end()

    def alpha(self, t):
        return self.cfg["sparse"]["alpha"] / 2.0 * (1.0 + math.cos(math.pi * t / self.t_end()))

    def counts(self, masks, alpha_t):
        out = []
        for name in self.prunable:
            m = masks[name]
            nnz = int(m.sum())
            out.append(min(math.ceil(alpha_t * nnz), nnz, m.numel() - nnz))
        return out

    # -- BaE (BAE-2, BAE-4) ---------------------------------------------------------------
    def penalty_terms(self, params, marked, lam):
        """Penalty value and its gradient on each layer's marked entries (autograd)."""
        variant = self.cfg["bae"]["variant"]
        total, grads = 0.0, []
        for name, idx in zip(self.prunable, marked, strict=True):
            theta = params[name].detach().reshape(-1)[self.t(idx)].clone().requires_grad_(True)
            ss = (theta * theta).sum()
            if theta.numel() == 0 or (variant != "l2sq" and float(ss.detach()) == 0.0):
                grads.append(np.zeros(theta.numel()))
                continue
            term = lam * ss if variant == "l2sq" else lam * self.torch.sqrt(ss)
            (g,) = self.torch.autograd.grad(term, theta)
            total += float(term.detach())
            grads.append(self.n(g))
        return total, grads

    def step_lr(self, lr_t, norm, tau, T):
        if not self.cfg["bae"]["budget_lr"]:
            return lr_t
        p = (2 * T - 2 * tau) / (2 * T - tau)
        factor = 1.0 if self.cfg["bae"]["variant"] == "authors" else \
            2.0 / (1.0 + math.exp(-norm)) - 1.0
        return max(lr_t, p * factor * self.cfg["train"]["lr"])

    # -- a client's round (LT-1..LT-3, BAE-2..4, PG-5) ------------------------------------
    def local_train(self, t, k, glob, masks, lr_t, marked, grow_counts):
        torch, tr = self.torch, self.cfg["train"]
        x_u8, y_all = self.client_data(k)
        n, B, E = len(y_all), tr["batch_size"], tr["local_epochs"]
        per_epoch = math.ceil(n / B)
        params = {nm: v.clone() for nm, v in glob.items()}
        lam0 = self.cfg["bae"]["lambda"]
        for tau in range(E * per_epoch):
            e, b = divmod(tau, per_epoch)
            pos = self.inputs[f"r{t}/c{k}/shuffle/e{e}"][b * B:(b + 1) * B]
            x, y = self.normalise(x_u8[pos]), self.t(y_all[pos])
            leaves = {nm: v.clone().requires_grad_(True) for nm, v in params.items()}
            logits, w_hat, acts, caches = self.forward(leaves, masks, x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()),
                                                         allow_unused=True)))
            rec = {"batch_index": pos.astype(np.int64), "x": self.n(x), "y": y_all[pos]}
            rec.update({f"w_hat/{nm}": w for nm, w in w_hat.items()})
            rec.update({f"act/{nm}": a for nm, a in acts})
            for layer, c in caches:
                rec.update({f"sap/{layer}/{key}": v for key, v in c.items()})
            rec["loss"] = np.float64(float(loss.detach()))
            lr = lr_t
            total = {nm: (g if g is not None else torch.zeros_like(params[nm])).detach().clone()
                     for nm, g in grads.items()}
            pen_grads = None
            if marked is not None:
                lam = lam0 + AUTHORS_RAMP * (tau + 1) if self.cfg["bae"]["variant"] == \
                    "authors" else lam0
                norm = math.sqrt(sum(float((params[nm].reshape(-1)[self.t(i)] ** 2).sum())
                                     for nm, i in zip(self.prunable, marked)))
                pen, pen_grads = self.penalty_terms(params, marked, lam)
                lr = self.step_lr(lr_t, norm, tau, E * per_epoch)
                rec.update(marked_norm=np.float64(norm), lam=np.float64(lam),
                           penalty=np.float64(pen))
            rec["lr"] = np.float64(lr)
            rec.update({f"grad/{nm}": self.n(g) for nm, g in total.items()})
            if pen_grads is not None:
                for nm, idx, pg in zip(self.prunable, marked, pen_grads, strict=True):
                    rec[f"penalty_grad/{self.layer(nm)}"] = pg
                    total[nm].reshape(-1)[self.t(idx)] += self.t(pg)
            with torch.no_grad():  # SGD, W ← W ⊙ M after the step (LT-3, MASK-3)
                for nm in params:
                    g = total[nm]
                    if nm in masks:
                        m = masks[nm].to(g.dtype)
                        params[nm] = (params[nm] - lr * (g * m)) * m
                    else:
                        params[nm] = params[nm] - lr * g
            rec.update({f"param/{nm}": self.n(v) for nm, v in params.items()})
            self.steps.append((f"r{t}_c{k}_s{tau}", rec))
        growth = None
        if grow_counts is not None:
            growth = self.growth_scores(t, k, params, masks, grow_counts)
        return params, n, growth

    def growth_scores(self, t, k, params, masks, grow_counts):
        """PG-5: dense CE gradient w.r.t. the effective kernels on the first GROW batch."""
        torch = self.torch
        x_u8, y_all = self.client_data(k)
        pos = self.inputs[f"r{t}/c{k}/grow_order"][:self.cfg["train"]["batch_size"]]
        eff = {}
        for L in self.arch:
            if L["kind"] in ("conv", "linear"):
                nm = f"{L['name']}.weight"
                if L["kind"] == "conv" and L["norm"] == "nsconv":
                    w = self.standardize(params[nm], params[f"{L['name']}.gain"], masks[nm])
                else:
                    w = params[nm] * masks[nm].to(params[nm].dtype)
                eff[nm] = w.detach().clone().requires_grad_(True)
        logits, _, _, _ = self.forward(params, masks, self.normalise(x_u8[pos]), effective=eff)
        loss = torch.nn.functional.cross_entropy(logits, self.t(y_all[pos]))
        scores = dict(zip(eff, torch.autograd.grad(loss, list(eff.values()))))
        rec, pairs = {"grow_index": pos.astype(np.int64)}, []
        for nm in self.prunable:
            rec[f"score/{self.layer(nm)}"] = self.n(scores[nm])
        for nm, kl in zip(self.prunable, grow_counts, strict=True):
            s = self.n(scores[nm]).reshape(-1)
            inactive = np.flatnonzero(~self.n(masks[nm]).reshape(-1))
            top = k_largest(inactive, np.abs(s[inactive]), kl)
            rec[f"pair_index/{self.layer(nm)}"] = top
            rec[f"pair_value/{self.layer(nm)}"] = s[top]
            pairs.append((top, s[top]))
        self.steps.append((f"r{t}_c{k}_grow", rec))
        return pairs

    # -- the run ----------------------------------------------------------------------------
    def run(self):
        self.steps.append(("inputs", dict(self.inputs)))
        masks = {nm: self.t(self.inputs[f"init/mask/{self.layer(nm)}"]) for nm in self.prunable}
        counts = erk_counts([tuple(self.manifest["scenario"]["params"][nm]["shape"])
                             for nm in self.prunable], self.cfg["sparse"]["density"],
                            self.cfg["sparse"]["density_kind"])
        glob = {}
        for nm in self.param_names:
            v = self.t(self.inputs[f"init/param/{nm}"])
            glob[nm] = v * masks[nm].to(v.dtype) if nm in masks else v
        init = {"erk_counts": np.array(counts, dtype=np.int64)}
        init.update({f"param/{nm}": self.n(v) for nm, v in glob.items()})
        self.steps.append(("init", init))
        for t in range(1, self.rounds_run + 1):
            glob, masks = self.round(t, glob, masks)
        return self.steps

    def round(self, t, glob, masks):
        torch = self.torch
        lr_t = self.round_lr(t)
        start = {"lr": np.float64(lr_t)}
        adjusting = self.adjusting(t)
        grow_counts = marked = None
        if adjusting:
            a = self.alpha(t)
            grow_counts = self.counts(masks, a)
            start["alpha"] = np.float64(a)
            start["grow_counts"] = np.array(grow_counts, dtype=np.int64)
            if self.cfg["bae"]["enabled"]:  # BAE-1 from the received global model
                marked = []
                for nm, kl in zip(self.prunable, grow_counts, strict=True):
                    active = np.flatnonzero(self.n(masks[nm]).reshape(-1))
                    w = self.n(glob[nm]).reshape(-1)
                    marked.append(k_smallest(active, np.abs(w[active]), kl))
                    start[f"marked/{self.layer(nm)}"] = marked[-1]
        self.steps.append((f"r{t}_start", start))
        updates = []
        for k in self.inputs[f"r{t}/clients"].tolist():
            updates.append((k, *self.local_train(t, k, glob, masks, lr_t, marked, grow_counts)))
        updates.sort(key=lambda u: u[0])
        total = float(sum(u[2] for u in updates))
        server = {}
        new = {}
        for nm in self.param_names:  # AGG-1, float64, ascending client id
            acc = torch.zeros_like(glob[nm])
            for _, p, nk, _ in updates:
                acc = acc + (nk / total) * p[nm]
            new[nm] = acc * masks[nm].to(acc.dtype) if nm in masks else acc
            server[f"agg/{nm}"] = self.n(new[nm])
        if adjusting:
            new, masks = self.prune_and_grow(new, masks, updates, total, grow_counts, marked,
                                             server)
        self.steps.append((f"r{t}_server", server))
        return new, masks

    def prune_and_grow(self, params, masks, updates, total, counts, marked, server):
        """PG-4..PG-7 with the averaged growth scores (PG-5); ``sparse.prune = marked`` prunes
        the BaE marked set."""
        new_params, new_masks = dict(params), dict(masks)
        avgs = []
        for li, nm in enumerate(self.prunable):
            g = np.zeros(masks[nm].numel())
            for _, _, nk, pairs in updates:
                idx, val = pairs[li]
                g[idx] += (nk / total) * val
            avgs.append(g)
            server[f"growth_avg/{self.layer(nm)}"] = g.reshape(tuple(masks[nm].shape))
        for li, nm in enumerate(self.prunable):
            m = self.n(masks[nm]).reshape(-1)
            w = self.n(params[nm]).reshape(-1)
            active, inactive = np.flatnonzero(m), np.flatnonzero(~m)
            if self.cfg["sparse"]["prune"] == "marked":
                p = marked[li]
            else:
                p = k_smallest(active, np.abs(w[active]), counts[li])
            q = k_largest(inactive, np.abs(avgs[li][inactive]), counts[li])
            mm = m.copy()
            mm[p], mm[q] = False, True
            w[q] = 0.0
            w = w * mm
            server[f"prune/{self.layer(nm)}"] = p
            server[f"grow/{self.layer(nm)}"] = q
            shape = tuple(masks[nm].shape)
            new_masks[nm] = self.t(mm.reshape(shape))
            new_params[nm] = self.t(w.reshape(shape))
        for nm in self.prunable:
            server[f"mask/{self.layer(nm)}"] = self.n(new_masks[nm])
        server.update({f"param/{nm}": self.n(v) for nm, v in new_params.items()})
        return new_params, new_masks

    def write(self, out_dir):
        """The steps as ``steps/NNN_<name>.npz`` (docs/conformance.md naming)."""
        out = Path(out_dir) / "steps"
        out.mkdir(parents=True, exist_ok=True)
        for i, (name, arrays) in enumerate(self.steps):
            np.savez(out / f"{i:03d}_{name}.npz", **arrays)
        return Path(out_dir)


def run_twin(torch, dump_dir, out_dir, bug=None) -> Path:
    """Run the twin on the inputs of ``dump_dir`` and write its dump to ``out_dir``."""
    twin = Twin(torch, dump_dir, bug)
    twin.run()
    return twin.write(out_dir)
