"""The float32 tolerance of a conformance dump, derived from the scenario's reduction lengths
(docs/porting.md, "The float32 tolerance"), not chosen.

Two float32 implementations of the same formulas (the same elementwise operations, each
correctly rounded) differ only where they may legitimately differ: the order in which a
reduction of n terms is summed (NumPy's pairwise sums, BLAS blocking with fused multiply-adds,
a port's loops), and the last bit of a libm function (exp, log: faithful, within 1 ulp). To
first order in u = 2^-24, a sum or dot product of n terms evaluated in two orders differs by at
most 2·n·u·Σ|terms| (each evaluation's error is at most γ_n Σ|terms|, γ_n = n·u/(1 − n·u);
Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1 and §4.2), and two faithful libm
results by at most 2 ulps. Normwise, relative to the largest entry of the result, this is
2·n·u·κ with κ = Σ|terms| / max|result|; the derivation takes κ = 1 (the reductions of this
network are not cancellation-dominated; the measured errors in docs/porting.md confirm the
margin) and sensitivity 1 for every operation a quantity depends on, so relative differences
add along a dependency chain:

    per step   ε_step = 2·u·L,  L = Σ n over the reductions (and libm calls) on the longest chain
               of one training step: the whole forward pass and the loss, then the input
               gradients from the loss down to a layer, then that layer's weight gradient and its
               NSConv vjp (the maximum over layers);
    chained    a client's S steps (its T local steps and its growth pass) each start from the
               parameters the previous one produced, so their differences add: rtol = S·ε_step.

``batch_x`` is exact: x = (u8/255 − mean)/std is three correctly rounded float32 operations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..models.graph import Conv, GlobalAvgPool, Linear, MaxPool, ReLU, ResidualBlock

__all__ = ["U32", "Derivation", "float32_tolerance", "FLOAT32_ATOL", "EXACT_FLOAT32"]

#: Unit roundoff of float32.
U32 = 2.0 ** -24
#: atol keeps an all-zero reference from failing on noise; far below every nonzero quantity of
#: the scenario (the smallest max|ref| of a float quantity there is about 1e-6).
FLOAT32_ATOL = 1e-12
#: float classes computed without any reduction from the inputs: exact in float32.
EXACT_FLOAT32 = ("batch_x",)


@dataclass
class Derivation:
    """The reductions of one training step and the tolerance they give (module docstring).

    ``rows``: (layer, what, n) for every reduction and libm call counted; ``forward``: L of the
    forward pass and loss; ``backward``: of the longest backward tail; ``chain`` = forward +
    backward; ``steps``: S; ``rtol`` = S·2·u·chain."""

    forward: int
    backward: int
    steps: int
    rows: list = field(default_factory=list)

    @property
    def chain(self) -> int:
        return self.forward + self.backward

    @property
    def per_step(self) -> float:
        return 2 * U32 * self.chain

    @property
    def rtol(self) -> float:
        return self.steps * self.per_step

    def to_dict(self) -> dict:
        return {"u": U32, "forward": self.forward, "backward": self.backward,
                "chain": self.chain, "steps": self.steps, "per_step": self.per_step,
                "rtol": self.rtol, "atol": FLOAT32_ATOL,
                "rows": [list(r) for r in self.rows]}


def _walk(layers, shape, batch, rows, tails):
    """Append the forward reductions of ``layers`` (input ``shape`` (C, H, W) or (F,)) to
    ``rows`` and, per prunable layer, its own backward reductions (weight gradient, NSConv vjp)
    to ``tails``. Returns (output shape, list of (layer, input-gradient length) in execution
    order)."""
    dx_lengths = []
    for layer in layers:
        if isinstance(layer, Conv):
            c, h, w = shape
            oh = (h + 2 * layer.padding - layer.kernel) // layer.stride + 1
            ow = (w + 2 * layer.padding - layer.kernel) // layer.stride + 1
            fan_in = layer.in_ch // layer.groups * layer.kernel ** 2
            own = [(layer.name, "weight gradient sum over N·OH·OW", batch * oh * ow)]
            if layer.norm == "nsconv":
                rows += [(layer.name, "NSConv mean", fan_in), (layer.name, "NSConv Σc²", fan_in)]
                own += [(layer.name, "NSConv vjp Σ G·c", fan_in),
                        (layer.name, "NSConv vjp Σ dc", fan_in)]
            rows.append((layer.name, "conv dot product", fan_in))
            if layer.norm == "bn":
                rows += [(layer.name, "BatchNorm mean", batch * oh * ow),
                         (layer.name, "BatchNorm variance", batch * oh * ow)]
                own += [(layer.name, "BatchNorm vjp sums", 2 * batch * oh * ow)]
            tails.append((layer.name, own))
            dx_lengths.append((layer.name, layer.out_ch // layer.groups * layer.kernel ** 2))
            shape = (layer.out_ch, oh, ow)
        elif isinstance(layer, Linear):
            rows.append((layer.name, "linear dot product", layer.in_features))
            tails.append((layer.name, [(layer.name, "weight gradient sum over N", batch)]))
            dx_lengths.append((layer.name, layer.out_features))
            shape = (layer.out_features,)
        elif isinstance(layer, MaxPool):
            c, h, w = shape
            shape = (c, (h - layer.kernel) // layer.stride + 1, (w - layer.kernel) // layer.stride
                     + 1)
        elif isinstance(layer, GlobalAvgPool):
            c, h, w = shape
            rows.append(("avgpool", "global average", h * w))
            shape = (c,)
        elif isinstance(layer, ResidualBlock):
            out, body = _walk(layer.body, shape, batch, rows, tails)
            _, short = _walk(layer.shortcut, shape, batch, rows, tails)
            dx_lengths += body + short
            shape = out
        elif not isinstance(layer, ReLU):  # pragma: no cover - the zoo has no other layers
            raise TypeError(f"tolerance: unsupported layer {layer!r}")
    return shape, dx_lengths


def float32_tolerance(model, input_shape, batch: int, steps: int) -> Derivation:
    """The derivation for ``model`` on inputs of ``input_shape`` (C, H, W) in batches of
    ``batch``, with ``steps`` chained steps per client (module docstring)."""
    rows, tails = [], []
    shape, dx = _walk(model.layers, tuple(input_shape), int(batch), rows, tails)
    classes = shape[0]
    rows += [("loss", "softmax Σ exp", classes), ("loss", "exp, log (libm)", 2),
             ("loss", "mean over the batch", int(batch))]
    forward = sum(n for _, _, n in rows)
    names = [name for name, _ in dx]
    best, best_rows = 0, []
    for name, own in tails:  # loss -> input gradients of every later layer -> this layer's own
        later = dx[names.index(name) + 1:]
        tail = [(n, "input gradient sum", k) for n, k in later] + own
        length = sum(k for _, _, k in tail)
        if length > best:
            best, best_rows = length, tail
    return Derivation(forward, best, int(steps), rows + best_rows)
