"""Learning-curve PNGs (the ``plot_every`` loop flag: the seed drew them every epoch)."""

from __future__ import annotations

import io
import os
from pathlib import Path

from harness.records.files import save_figure

__all__ = ["plot_learning_curves", "warm_up"]


def plot_learning_curves(history: list[dict], path: str | os.PathLike | None, title: str
                         ) -> Path | None:
    """Loss (train, eval) and top-1/top-5 against epoch, rendered to PNG: written atomically
    to ``path``, or (None) rendered in memory only, the work the seed's loop did."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    ax1.plot(ep, [h["train_loss"] for h in history], marker="o", label="train")
    ax1.plot(ep, [h["eval_loss"] for h in history], marker="o", label="eval")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax1.legend()
    ax2.plot(ep, [h["top1"] for h in history], marker="o", label="top-1")
    ax2.plot(ep, [h["top5"] for h in history], marker="o", label="top-5")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="eval accuracy")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    if path is None:
        fig.savefig(io.BytesIO(), format="png", dpi=90)
        plt.close(fig)
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return save_figure(fig, path, dpi=90)
    finally:
        plt.close(fig)


def warm_up() -> None:
    """Import matplotlib and render one figure, so that its one-time costs (imports, font
    cache) fall on no run: a process runs a whole block, and the first run to plot would
    pay them otherwise."""
    plot_learning_curves([{"epoch": 1, "train_loss": 1.0, "eval_loss": 1.0, "top1": 0.0,
                           "top5": 0.0}], None, "warm-up")
