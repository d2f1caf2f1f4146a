"""PNG plots of a run's metrics (only when matplotlib is installed): test accuracy, train/test
loss and per-round memory (activation cache) and communication, one file each."""

from __future__ import annotations

from pathlib import Path

__all__ = ["save_plots"]


def save_plots(records: list[dict], directory) -> list[Path]:
    """Write accuracy.png, loss.png and memory.png into ``directory``; returns the paths
    written (none without matplotlib or without records)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    if not records:
        return []
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    rounds = [r["round"] for r in records]
    evals = [r for r in records if r["test_accuracy"] is not None]
    adjust = [r["round"] for r in records if r["adjustment"]]
    paths = []

    def finish(fig, ax, name, ylabel):
        for t in adjust:
            ax.axvline(t, color="0.85", lw=0.8, zorder=0)
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.tight_layout()
        p = d / name
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["round"] for r in evals], [r["test_accuracy"] for r in evals], "o-", ms=3,
            label="test accuracy")
    ax.set_title("test accuracy (grey lines: mask adjustments)")
    finish(fig, ax, "accuracy.png", "accuracy")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rounds, [r["train_loss"] for r in records], label="train loss (clients)")
    ax.plot([r["round"] for r in evals], [r["test_loss"] for r in evals], "o-", ms=3,
            label="test loss")
    ax.set_title("cross-entropy")
    finish(fig, ax, "loss.png", "loss")

    fig, ax = plt.subplots(figsize=(6, 4))
    kib = 1024.0
    ax.plot(rounds, [r["activation_bytes"] / kib for r in records], label="activation cache")
    ax.plot(rounds, [r["bytes_up"] / kib / len(r["clients"]) for r in records],
            label="upload per client")
    ax.plot(rounds, [r["bytes_down"] / kib / len(r["clients"]) for r in records],
            label="download per client")
    ax.set_title("memory and communication per round")
    finish(fig, ax, "memory.png", "KiB")
    return paths
