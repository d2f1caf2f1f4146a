"""A first look: train the small CNN centrally on the bundled Fashion-MNIST subset for a few
hundred steps and show the loss falling (the foundation demo; the federated run replaces it)."""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

import models
from refimpl import functional as F
from refimpl.autodiff import value_and_grad
from refimpl.optim import SGD
from refimpl.rng import Purpose, stream


def _prepare(images: np.ndarray) -> np.ndarray:
    """uint8 NCHW -> float32 in [0, 1], then centred and scaled by the bundled set's statistics."""
    x = images.astype(np.float32) / np.float32(255.0)
    return (x - np.float32(0.2860)) / np.float32(0.3530)


def run_demo(steps: int = 300, batch: int = 64, lr: float = 0.05, seed: int = 0,
             log=print) -> dict:
    """Train ``cnn`` (no norm) with SGD (momentum 0.9) and report loss and test accuracy."""
    from data_tools import load_dataset

    ds = load_dataset("fashion-mnist-bundled")
    x_train, y_train = _prepare(ds.x_train), ds.y_train
    x_test, y_test = _prepare(ds.x_test), ds.y_test
    model = models.build("cnn", x_train.shape[1], len(ds.classes), norm="none",
                         rng=stream(seed, Purpose.MODEL_INIT))
    params = model.params
    opt = SGD(lr, momentum=0.9)

    def loss_fn(p, xb, yb):
        return F.cross_entropy(models.forward(model, p, xb), yb)

    step_fn = value_and_grad(loss_fn)
    order = stream(seed, Purpose.SHUFFLE).permutation(len(y_train))
    losses = []
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="demo: training cnn", unit="step", leave=False)
    for step in bar:
        start = (step * batch) % (len(order) - batch + 1)
        idx = order[start:start + batch]
        loss, grads = step_fn(params, x_train[idx], y_train[idx])
        opt.step(params, grads)
        losses.append(float(loss))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    bar.close()
    elapsed = time.perf_counter() - t0
    logits = np.concatenate([models.forward(model, params, x_test[i:i + 500], train=False)
                             for i in range(0, len(y_test), 500)])
    acc = float(np.mean(np.argmax(logits, axis=1) == y_test))
    window = max(1, min(20, steps // 5))
    first, last = float(np.mean(losses[:window])), float(np.mean(losses[-window:]))
    for s in range(0, steps, max(1, steps // 10)):
        log(f"step {s:4d}  loss {np.mean(losses[s:s + window]):.4f}")
    log(f"mean loss of the first {window} steps {first:.4f} -> last {window} steps {last:.4f}"
        f" ({'falling' if last < first else 'NOT falling'})")
    log(f"test accuracy {acc:.3f} on {len(y_test)} images (chance 0.100); "
        f"{steps} steps in {elapsed:.1f} s")
    return {"first_loss": first, "last_loss": last, "test_accuracy": acc, "seconds": elapsed}
