"""Loss curves as PNG (matplotlib's Agg backend: no display on a cluster node)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_loss_curve"]


def write_loss_curve(history: list, path: Path, *, title: str, window: int = 50) -> None:
    """Plot ``history`` [(step, loss, metrics)] and its moving average to ``path`` (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not history:
        return
    steps = np.array([h[0] for h in history])
    losses = np.array([h[1] for h in history])
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    axis.plot(steps, losses, lw=0.7, alpha=0.5, label="loss")
    if len(losses) >= window:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        axis.plot(steps[window - 1:], smooth, lw=1.5, label=f"mean of {window}")
    axis.set_xlabel("step")
    axis.set_yscale("log" if (losses > 0).all() else "linear")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp.png")
    figure.savefig(staging)
    plt.close(figure)
    os.replace(staging, path)
