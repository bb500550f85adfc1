"""`curves.png` of one run: accuracy vs round and vs cumulative bytes sent.

Written into every finished run directory by `spark_jax.runner.experiment`; the
source is the run's metrics (one record per round, as in metrics.jsonl).
Left panel: aggregated-model test accuracy and the mean and minimum per-node
accuracy against the round; right panel: the same against the cumulative
bytes sent (log scale). For SPARK, dashed lines mark where stages 2 and 3
begin. Plotting uses matplotlib's Agg canvas directly (no pyplot state, no
display needed).

`$SPARK_JAX_NO_PLOTS=1` leaves the run's PNGs out (curves.png and label_histogram.png; `plots_enabled`):
matplotlib's import and first figure are ~0.9 s of a 5 s tiny run (many-run sweeps, the test suite).
"""

from __future__ import annotations

import pathlib
from typing import Sequence

from spark_jax.checks import env_switch
from spark_jax.runner.run_io import atomic_path

NO_PLOTS_ENV = "SPARK_JAX_NO_PLOTS"

SERIES = (("test_accuracy", "aggregated model", "-"), ("node_accuracy_mean", "per-node mean", "--"),
          ("node_accuracy_min", "per-node min", ":"))


def plots_enabled() -> bool:
    """False when the switch $SPARK_JAX_NO_PLOTS is on (`checks.env_switch`)."""
    return not env_switch(NO_PLOTS_ENV)


def stage_starts(config) -> tuple[int, ...]:
    """The 1-based rounds where SPARK's stages 2 and 3 begin (empty for other algorithms or stages at 0)."""
    if config.algorithm != "spark":
        return ()
    from spark_jax.algorithms.schedules import stage_boundaries  # pylint: disable=g-import-not-at-top

    stages = config.algorithm_kw.stages
    b2, b3 = stage_boundaries(tuple(stages.boundaries), stages.unit, config.rounds)
    return tuple(b + 1 for b in dict.fromkeys((b2, b3)) if 0 < b < config.rounds)


def plot_curves(history: Sequence[dict], path, title: str = "", stages: Sequence[int] = ()) -> pathlib.Path:
    """Writes the two-panel figure of `history` (metrics records) to `path` (PNG); returns the path.

    `stages`: 1-based first rounds of later stages, drawn as dashed lines
    (on the bytes panel at the bytes sent before that round).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
    from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top

    path = pathlib.Path(path)
    rounds = [h["round"] for h in history]
    sent = [h.get("bytes_cumulative", 0) for h in history]
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    ax_r, ax_b = fig.subplots(1, 2, sharey=True)
    marker = "o" if len(history) <= 30 else None
    for key, label, style in SERIES:
        ys = [h.get(key) for h in history]
        if any(y is None for y in ys):
            continue
        ax_r.plot(rounds, ys, style, marker=marker, markersize=3, label=label)
        ax_b.plot(sent, ys, style, marker=marker, markersize=3, label=label)
    by_round = dict(zip(rounds, sent))
    for i, start in enumerate(stages):
        ax_r.axvline(start - 0.5, color="grey", linestyle="--", linewidth=0.8)
        ax_r.text(start - 0.5, 0.98, f" stage {i + 2}", color="grey", fontsize=8, va="top",
                  transform=ax_r.get_xaxis_transform())
        if start - 1 in by_round and by_round[start - 1] > 0:
            ax_b.axvline(by_round[start - 1], color="grey", linestyle="--", linewidth=0.8)
    ax_r.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_r.set_xlim(0.5, max(rounds, default=1) + 0.5)
    ax_r.set_xlabel("round")
    ax_r.set_ylabel("test accuracy")
    ax_b.set_xlabel("cumulative bytes sent (all nodes)")
    if any(s > 0 for s in sent):
        ax_b.set_xscale("log")
    for ax in (ax_r, ax_b):
        ax.grid(True, alpha=0.3)
    ax_r.legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # a killed or failed save never leaves a truncated png
        fig.savefig(tmp, format="png", dpi=100)
    return path
