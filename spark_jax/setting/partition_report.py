"""Reports of a partition's [M, C] label histogram (`partition.label_histogram`): text and heat map.

Called by `spark_jax.runner.experiment`; run directories hold both (partition.txt, label_histogram.png).
"""

from __future__ import annotations

import pathlib

import numpy as np

__all__ = ["max_class_share", "histogram_summary", "plot_label_heatmap"]


def max_class_share(hist: np.ndarray) -> np.ndarray:
    """float64 [M]: each node's largest class count over its total (0 for empty nodes)."""
    hist = np.asarray(hist)
    totals = hist.sum(axis=1)
    return np.where(totals > 0, hist.max(axis=1) / np.maximum(totals, 1), 0.0)


def histogram_summary(hist: np.ndarray, rows: int = 5) -> str:
    """A text report of a [M, C] label histogram: sizes, skew, classes per node, first rows."""
    hist = np.asarray(hist)
    if hist.ndim != 2:
        raise ValueError(f"hist must be [M, C], got shape {hist.shape}")
    totals = hist.sum(axis=1)
    classes = (hist > 0).sum(axis=1)
    lines = [
        f"nodes: {hist.shape[0]}, classes: {hist.shape[1]}, samples: {int(totals.sum())}",
        f"samples per node: min {totals.min()} / mean {totals.mean():.1f} / max {totals.max()}",
        f"mean max-class share: {max_class_share(hist).mean():.3f}",
        f"classes per node: min {classes.min()} / mean {classes.mean():.2f} / max {classes.max()}",
        f"first {min(rows, hist.shape[0])} rows (node: counts per class):",
    ]
    lines += [f"  {u:4d}: {' '.join(f'{int(v):4d}' for v in hist[u])}" for u in range(min(rows, hist.shape[0]))]
    return "\n".join(lines)


def plot_label_heatmap(hist: np.ndarray, path) -> None:
    """Writes a PNG heat map of a [M, C] label histogram (nodes x classes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

    hist = np.asarray(hist)
    if hist.ndim != 2:
        raise ValueError(f"hist must be [M, C], got shape {hist.shape}")
    fig = Figure(figsize=(4 + 0.3 * hist.shape[1], 4 + min(hist.shape[0], 300) / 60))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(hist, aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_xlabel("class")
    ax.set_ylabel("node")
    ax.set_xticks(range(hist.shape[1]))
    ax.set_title(f"label counts ({hist.shape[0]} nodes)")
    fig.colorbar(im, ax=ax, label="samples")
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
