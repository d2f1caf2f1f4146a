"""Stochastic gradient descent (SPEC LT-1, MASK-3)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["SGD"]


class SGD:
    """SGD with optional momentum and weight decay, PyTorch's update rule:

        d = g + weight_decay * p
        buf = d                      (first step)      buf = momentum * buf + d   (later steps)
        p = p - lr * (buf if momentum else d)

    With ``masks`` (name -> 0/1 array of the parameter's shape) the step keeps MASK-3: the
    gradient, the decay term and the momentum buffer are zero on masked positions, and the
    weights are re-masked after the update, so ``p == p * mask`` holds exactly afterwards.
    Parameters are updated in place. State: one momentum buffer per parameter (dtype of the
    parameter), created on first use.
    """

    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        if not lr > 0:
            raise ValueError(f"SGD: lr must be > 0, received {lr}")
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: momentum and weight_decay must be >= 0, received "
                             f"{momentum}, {weight_decay}")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.state: dict[str, np.ndarray] = {}

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
             masks: Mapping[str, np.ndarray] | None = None, lr: float | None = None) -> None:
        lr = self.lr if lr is None else float(lr)
        masks = masks or {}
        for name, p in params.items():
            g = grads.get(name)
            if g is None:
                continue
            if g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(f"SGD: gradient of {name!r} has shape {g.shape} dtype {g.dtype}, "
                                 f"expected {p.shape} {p.dtype}")
            m = masks.get(name)
            d = g + p.dtype.type(self.weight_decay) * p if self.weight_decay else g.copy()
            if m is not None:
                d *= m
            if self.momentum:
                buf = self.state.get(name)
                if buf is None:
                    buf = self.state[name] = d.copy()
                else:
                    buf *= p.dtype.type(self.momentum)
                    buf += d
                    if m is not None:
                        buf *= m  # a position pruned since the last step drops its history
                d = buf
            p -= p.dtype.type(lr) * d
            if m is not None:
                p *= m

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.state.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.state = {k: np.array(v) for k, v in state.items()}
