"""Quantity classes of a conformance dump: what each recorded array is, the SPEC rules it checks,
and how two implementations' values are compared (STYLE 7: tolerances in one place, each with
its reason; integer results compare exactly).

Every key of every step belongs to one class (the manifest lists ``[key, class]`` pairs and the
class table). Kinds:

- ``input``: a random draw or given datum of the scenario (RNG-1 streams, the data). Another
  implementation reads it instead of drawing it; compared exactly when it is echoed back.
- ``exact``: integers, booleans, index sets and byte buffers; equal or not.
- ``float``: compared normwise: ``max|a − b| <= atol + rtol · max|ref|`` over the whole tensor.
  The reported relative error is ``max|a − b| / max|ref|``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tolerance import EXACT_FLOAT32, FLOAT32_ATOL

__all__ = ["Quantity", "QUANTITIES", "FLOAT_TOL", "manifest_table", "KINDS"]

KINDS = ("input", "exact", "float")

#: Normwise (rtol, atol) per dtype for the ``float`` kind.
#: float64: two implementations of the same float64 computation that sum in different orders
#: drift by ~1e-16 per op; after the scenario's ~30 local steps the observed worst is ~1e-14,
#: and the issue demands <= 1e-10. atol only keeps all-zero references from failing on 1e-300
#: noise; it is far below any value of the scenario.
#: float32: derived per scenario from its reduction lengths (refimpl.conformance.tolerance,
#: docs/porting.md), given to :func:`manifest_table` as ``float32``; SAP and prune-and-grow
#: selections may still flip on a near-tie, which shows up as an exact-kind divergence.
FLOAT_TOL = {np.dtype(np.float64): (1e-10, 1e-15)}


@dataclass(frozen=True)
class Quantity:
    kind: str
    rules: tuple[str, ...]
    doc: str


Q = Quantity
QUANTITIES: dict[str, Quantity] = {
    # -- inputs: the scenario's random draws and data (RNG-1) --
    "in.data": Q("input", ("DATA-1", "LT-2"), "client k's uint8 images (n_k, C, H, W) and int64 "
                 "labels; per-channel mean and std (1, C, 1, 1) of the normalisation"),
    "in.init_param": Q("input", ("FL-1",), "initial parameters as drawn (He-normal weights "
                       "before masking, zero biases, unit gains), MODEL_INIT stream"),
    "in.init_mask": Q("input", ("ERK-3",), "initial random masks, MASK_INIT stream"),
    "in.clients": Q("input", ("FL-1",), "clients sampled in round t, ascending, SAMPLE stream"),
    "in.shuffle": Q("input", ("LT-2",), "permutation of client k's examples for epoch e of "
                    "round t, SHUFFLE stream"),
    "in.grow_order": Q("input", ("PG-5",), "permutation of client k's examples from the GROW "
                       "stream of round t; its first B entries form the growth batch"),
    # -- initialisation --
    "erk_counts": Q("exact", ("ERK-1", "ERK-2"), "nonzero count n_l per prunable layer"),
    "init_param": Q("float", ("FL-1", "MASK-3"), "initial global parameters, W ⊙ M"),
    # -- a round's plan --
    "round_lr": Q("float", ("LT-1",), "η_t"),
    "alpha": Q("float", ("PG-2",), "α_t of an adjustment round"),
    "grow_counts": Q("exact", ("PG-3",), "k_l per prunable layer"),
    "marked": Q("exact", ("BAE-1", "CONV-4"), "marked set Low_l, ascending flat indices"),
    # -- a local step --
    "batch_index": Q("exact", ("LT-2",), "positions into client k's examples of this batch"),
    "batch_x": Q("float", ("LT-2",), "normalised batch (u8/255 − mean)/std"),
    "batch_y": Q("exact", ("LT-2",), "labels of the batch"),
    "w_hat": Q("float", ("NSC-1", "NSC-3"), "standardised kernel Ŵ of an NSConv layer"),
    "act": Q("float", ("CONV-1", "CONV-5", "NSC-1", "NSC-4"), "output of top-level layer i "
             "(conv unit, ReLU, max-pool, global average pool, linear)"),
    "sap_kept": Q("exact", ("SAP-2", "CONV-4", "CONV-6"), "kept flat indices of a layer's "
                  "cached input, ascending"),
    "sap_format": Q("exact", ("CACHE-2",), "stored format: 0 dense, 1 bitmap, 2 index, 3 int32 "
                    "(compat)"),
    "sap_buffer": Q("exact", ("CACHE-1", "CACHE-3"), "encoded keep bitmap (uint8, little bit "
                    "order) or index array (narrowest unsigned type; int32 for the compat "
                    "format)"),
    "sap_values": Q("float", ("CACHE-1", "CACHE-3"), "kept values in ascending flat-index order "
                    "(dense format: x̂ itself)"),
    "sap_nbytes": Q("exact", ("CACHE-4",), "bytes of the cached input"),
    "loss": Q("float", ("LT-2",), "mean cross-entropy of the batch (penalty excluded)"),
    "marked_norm": Q("float", ("BAE-4",), "‖θ_Low‖₂ of the local weights before the step"),
    "penalty": Q("float", ("BAE-2",), "BaE penalty value before the step"),
    "lam": Q("float", ("BAE-2",), "λ of the step"),
    "lr": Q("float", ("LT-1", "BAE-4"), "step size of the step (μ_τ when extruding)"),
    "grad": Q("float", ("TAPE-1", "SAP-3", "NSC-3"), "CE gradient of a parameter (before the "
              "penalty)"),
    "penalty_grad": Q("float", ("BAE-2",), "penalty gradient on the marked positions, in the "
                      "marked set's order"),
    "param": Q("float", ("LT-1", "LT-3", "MASK-3"), "local parameter after the SGD step"),
    # -- growth scores on a client --
    "grow_index": Q("exact", ("PG-5",), "positions into client k's examples of the growth batch"),
    "grow_score": Q("float", ("PG-5", "SAP-3"), "dense CE gradient with respect to the effective "
                    "kernel (Ŵ for NSConv, W ⊙ M otherwise)"),
    "pair_index": Q("exact", ("PG-5", "CONV-4"), "uploaded flat indices (k_l largest |score| "
                    "among inactive positions), ascending"),
    "pair_value": Q("float", ("PG-5",), "uploaded scores at those indices"),
    # -- the server --
    "agg_param": Q("float", ("AGG-1", "MASK-3"), "FedAvg aggregate, θ ⊙ M, before prune-and-grow"),
    "growth_avg": Q("float", ("PG-5",), "averaged growth scores ḡ_l"),
    "prune_set": Q("exact", ("PG-3", "PG-4", "CONV-4"), "pruned flat indices P_l, ascending"),
    "grow_set": Q("exact", ("PG-6", "CONV-4"), "grown flat indices Q_l, ascending"),
    "new_mask": Q("exact", ("PG-7",), "mask after prune-and-grow"),
    "new_param": Q("float", ("PG-7", "MASK-3"), "global parameters after prune-and-grow"),
}


def manifest_table(dtype, float32=None) -> dict[str, dict]:
    """The class table as written into the manifest, with the tolerances of ``dtype``. A
    float32 table needs ``float32``, the scenario's
    :class:`~refimpl.conformance.tolerance.Derivation`: every float class gets its rtol and
    atol, the exact ones (``EXACT_FLOAT32``) 0."""
    dt = np.dtype(dtype)
    if dt == np.float32:
        if float32 is None:
            raise ValueError("manifest_table: a float32 table needs the scenario's derived "
                             "tolerance (refimpl.conformance.tolerance.float32_tolerance)")
        rtol, atol = float32.rtol, FLOAT32_ATOL
    elif dt in FLOAT_TOL:
        rtol, atol = FLOAT_TOL[dt]
    else:
        raise ValueError(f"manifest_table: dtype {dt} is not float32 or float64")
    out = {}
    for name, q in QUANTITIES.items():
        entry = {"kind": q.kind, "rules": list(q.rules), "doc": q.doc}
        if q.kind == "float":
            exact = dt == np.float32 and name in EXACT_FLOAT32
            entry.update(rtol=0.0 if exact else rtol, atol=0.0 if exact else atol)
        out[name] = entry
    return out
