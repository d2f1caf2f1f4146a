"""An optional observer of the federated engine: what a round computes, step by step.

The engine (:func:`refimpl.fl.engine.run_round`, :func:`refimpl.fl.client.local_train`,
:func:`refimpl.fl.client.growth_scores`) takes ``observer=None``. With an :class:`Observer` it
calls the hooks below at fixed points of a round and hands over the values it computed there;
nothing else changes (same arithmetic, same RNG-1 draws, same results bit for bit:
``spec_tests/test_conformance_export.py::test_observer_does_not_change_the_run``). The
conformance kit (:mod:`refimpl.conformance.recorder`) records golden vectors this way, so they
are produced by the engine itself rather than by a second copy of the loop.

Arrays handed to a hook may be the engine's live buffers (the local parameters, the gradient
dicts): a hook must copy what it keeps and must not modify anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Observer", "LocalStep"]


@dataclass(frozen=True)
class LocalStep:
    """One local SGD iteration τ of a client (LT-1..LT-3, BAE-2..BAE-4).

    ``batch``: positions into the client's examples (int64, the epoch's SHUFFLE permutation
    sliced, LT-2); ``x``, ``y``: the normalised batch and its labels; ``loss``: mean CE
    (penalty excluded); ``lr``: the step size used (μ_τ in an extrusion round, else η_t);
    ``grads``: the tape's CE gradient of every parameter, before the penalty was added;
    ``penalty_grads``: per prunable layer the BAE-2 penalty gradient on the marked positions
    (in the marked set's order), or None outside extrusion rounds; ``lam``: λ_τ; ``penalty``:
    the BAE-2 penalty value and ``marked_norm`` ‖θ_Low‖₂, both of the weights before the step
    (None outside extrusion rounds); ``params``: the local parameters after the step (live).
    """

    tau: int
    epoch: int
    batch: np.ndarray
    x: np.ndarray
    y: np.ndarray
    loss: float
    lr: float
    grads: dict
    penalty_grads: list | None
    lam: float | None
    penalty: float | None
    marked_norm: float | None
    params: dict


class Observer:
    """Hooks of one federated run; every method is a no-op here. Subclass and override."""

    def round_start(self, t: int, clients: np.ndarray, plan, alpha: float | None) -> None:
        """Round t begins: the sampled clients (ascending, FL-1) and the RoundPlan (η_t, the
        BAE-1 marked set of an extrusion round, the PG-3 counts of an adjustment round);
        ``alpha`` is α_t (PG-2) in an adjustment round, else None."""

    def local_forward(self, t: int, client: int, tau: int, model, params: dict, x: np.ndarray,
                      options, tape) -> None:
        """Client ``client`` ran the forward pass and the cross-entropy of iteration τ; the
        tape still holds every residual (the SAP caches, SAP-1..2). ``model`` is the client's
        local model, ``params`` its parameters before the step, ``options`` the RunOptions."""

    def local_step(self, t: int, client: int, step: LocalStep) -> None:
        """Client ``client`` finished local iteration ``step.tau`` (after the SGD step)."""

    def growth(self, t: int, client: int, order: np.ndarray, scores: dict, pairs: list) -> None:
        """PG-5 on a client: ``order`` the GROW-stream permutation of its examples (the first
        B form the batch), ``scores`` the dense gradient with respect to each prunable layer's
        effective kernel, ``pairs`` per layer the uploaded (flat indices, values)."""

    def aggregated(self, t: int, params: dict, buffers: dict) -> None:
        """AGG-1 result of round t (after θ ← θ ⊙ M, before any prune-and-grow)."""

    def adjusted(self, t: int, scores: list, report, params: dict, masks: dict) -> None:
        """PG-5..PG-7 of an adjustment round: the averaged growth scores ḡ_l, the
        AdjustReport (counts, pruned and grown flat indices per layer) and the new global
        parameters and masks."""
