"""Numbers of the study of the SPARK readings (docs/RESULTS.md): cells, targets, stages, claims.

A *cell* is one reading (a row of `sweep_presets.READINGS`) at one Dirichlet
alpha: the runs of the sweep setting '<reading>,alpha=<alpha>' over seeds, plus
the seeds that failed (with their error line) or have not finished. Every
number is recomputed from the runs' metrics.jsonl; spreads are sample standard
deviations over seeds (ddof=1; 0 for one seed). Record `round` r is the state
after r rounds, so a stage that starts at 0-based round b ends at record b.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import numpy as np

from spark_jax.algorithms import schedules
from spark_jax.lab import report_tables, sweep_presets
from spark_jax.lab.report_tables import Run

BASELINES = ("ntk_dfl", "dfedavg", "dfedavgm")  # the "existing approaches" of claims (b)-(d)
TOLERANCE = 0.01  # accuracies within one percentage point count as equal (claims a, d; "clearly beats")


@dataclasses.dataclass
class Cell:
    reading: str
    alpha: float
    runs: list[Run]  # finished (summary.json), sorted by seed
    failed: list[tuple[int, str]]  # (seed, error line) of runs the sweep recorded as failed
    unfinished: list[int]  # seeds in a sweep's grid without a finished or failed run

    @property
    def is_spark(self) -> bool:
        return self.reading.startswith("spark_")


def parse_setting(name: str) -> tuple[str, float] | None:
    """'spark_v1,alpha=0.1' -> ('spark_v1', 0.1); None for other names."""
    reading, _, alpha = name.partition(",alpha=")
    try:
        return (reading, float(alpha)) if reading in sweep_presets.READINGS else None
    except ValueError:
        return None


def load_cells(root) -> list[Cell]:
    """Cells from every sweep.json below `root`, in READINGS order, then alpha; ValueError if none."""
    root = pathlib.Path(root)
    cells: dict[tuple[str, float], Cell] = {}
    for sweep_file in sorted(root.rglob("sweep.json")):
        try:
            entries = json.loads(sweep_file.read_text())["runs"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{sweep_file}: not a sweep record ({type(e).__name__}: {e})") from e
        for entry in entries:
            key = parse_setting(entry["setting"])
            if key is None:
                continue
            cell = cells.setdefault(key, Cell(*key, runs=[], failed=[], unfinished=[]))
            run_dir = sweep_file.parent / entry["run_dir"]
            if (run_dir / "summary.json").is_file():
                run = report_tables.load_run(run_dir)
                if run.problem:  # damaged records: reported as failed, never averaged in
                    cell.failed.append((entry["seed"], f"damaged run records: {run.problem}"))
                else:
                    cell.runs.append(run)
            elif entry.get("status") == "failed":
                cell.failed.append((entry["seed"], str(entry.get("error") or "unknown error").splitlines()[0]))
            else:
                cell.unfinished.append(entry["seed"])
    if not cells:
        raise ValueError(f"no runs of the SPARK-readings presets (sweep.json settings '<reading>,alpha=<a>') "
                         f"under {root}")
    order = list(sweep_presets.READINGS)
    for cell in cells.values():
        cell.runs.sort(key=lambda r: r.seed)
    return sorted(cells.values(), key=lambda c: (c.alpha, order.index(c.reading)))


def mean_std(xs) -> tuple[float, float]:
    return report_tables._mean_std(xs)  # pylint: disable=protected-access


def hit(run: Run, target: float) -> dict | None:
    """The first round whose aggregated accuracy reaches `target`: round, total and Jacobian bytes so far."""
    jacobian = 0
    for rec in run.records:
        jacobian += rec.get("jacobian_bytes", 0)
        if rec["test_accuracy"] >= target:
            return {"round": rec["round"], "bytes": rec["bytes_cumulative"], "jacobian_bytes": jacobian}
    return None


def to_target(cell: Cell, target: float) -> dict:
    """Rounds, total bytes and Jacobian bytes to `target`: means over the seeds that reached it."""
    hits = [h for h in (hit(r, target) for r in cell.runs) if h is not None]
    out = {"reached": len(hits), "n": len(cell.runs)}
    for key in ("round", "bytes", "jacobian_bytes"):
        mean, std = mean_std([h[key] for h in hits])
        out[key] = mean if hits else None
        out[key + "_std"] = std if hits else None
    return out


def stage_ends(run: Run) -> tuple[int, int, int]:
    """Records ending stages 1, 2, 3 (the rounds the stage-2 and stage-3 starts, and the last round)."""
    c = run.config or {}
    rounds = int(c.get("rounds", len(run.records)))
    b2, b3 = schedules.stage_boundaries(c.get("algorithm_kw.stages.boundaries", (1 / 3, 2 / 3)),
                                        c.get("algorithm_kw.stages.unit", "fraction"), rounds)
    return b2, b3, rounds


def accuracy_at(run: Run, record_round: int) -> float:
    return next((r["test_accuracy"] for r in run.records if r["round"] == record_round), math.nan)


def cell_stats(cell: Cell) -> dict:
    """Accuracy (final, mean per-node, best), per-stage accuracy, seconds and bytes of one cell."""
    runs = cell.runs
    final = mean_std([r.records[-1]["test_accuracy"] for r in runs])
    node = mean_std([r.records[-1].get("node_accuracy_mean", math.nan) for r in runs])
    best = mean_std([max(x["test_accuracy"] for x in r.records) for r in runs])
    stages = [mean_std([accuracy_at(r, stage_ends(r)[i]) for r in runs])[0] for i in range(3)]
    steady = [np.mean([x["round_time"] for x in r.records[1:]]) for r in runs if len(r.records) > 1]
    return {
        "n": len(runs), "seeds": [r.seed for r in runs],
        "final": final, "node": node, "best": best, "stages": stages,
        "seconds_per_round": float(np.mean(steady)) if steady else math.nan,
        "first_round_seconds": float(np.mean([r.records[0]["round_time"] for r in runs])) if runs else math.nan,
        "wall_seconds": float(sum(r.records[-1]["wall_time"] for r in runs)),
        "bytes_per_round": float(np.mean([r.records[-1]["bytes_cumulative"] / len(r.records) for r in runs]))
        if runs else math.nan,
        "jacobian_bytes": float(np.mean([sum(x.get("jacobian_bytes", 0) for x in r.records) for r in runs]))
        if runs else math.nan,
        "best_min": min((max(x["test_accuracy"] for x in r.records) for r in runs), default=math.nan),
    }


def common_target(cells: list[Cell], share: float = 0.75) -> float:
    """The highest accuracy (a multiple of 0.01) that every seed of at least `share` of the cells reached."""
    bests = sorted((cell_stats(c)["best_min"] for c in cells if c.runs), reverse=True)
    if not bests:
        return math.nan
    k = max(1, math.ceil(share * len(bests)))
    return math.floor(bests[k - 1] * 100 + 1e-9) / 100


# (reading, against, what the difference isolates)
EFFECTS = (
    ("spark_v2_no_distill", "ntk_dfl", "momentum alone (exact Jacobians)"),
    ("spark_v2_no_momentum", "ntk_dfl", "distillation alone (exact Jacobians)"),
    ("spark_v2", "spark_v2_no_distill", "distillation, with momentum"),
    ("spark_v2", "spark_v2_no_momentum", "momentum, with distillation"),
    ("spark_v1", "spark_v2", "the sketch (k = 512 per layer, back-projection)"),
    ("spark_v1_own_exact", "spark_v1", "node i's own rows exact instead of back-projected"),
    ("spark_v1_roundtrip", "spark_v1", "exact update by a round trip instead of back-projection"),
    ("spark_v1_fixed_P", "spark_v1", "one P for the run instead of a new P each round"),
    ("spark_v1_k128", "spark_v1", "k = 128 instead of 512 per layer"),
    ("spark_v1_k2048_global", "spark_v1", "one global k = 2,048 instead of 512 per layer"),
    ("spark_v1_teacher_neighbors", "spark_v1", "neighbours' own models as teachers"),
    ("spark_v1_velocity_mixed", "spark_v1", "velocity mixed like the weights"),
)


def paired_effect(a: Cell, b: Cell) -> tuple[list[float], list[int]] | None:
    """Mean accuracy difference a - b at the three stage ends over the seeds both have, and those seeds."""
    seeds = sorted({r.seed for r in a.runs} & {r.seed for r in b.runs})
    if not seeds:
        return None
    ra, rb = ({r.seed: r for r in c.runs} for c in (a, b))
    diffs = [[accuracy_at(ra[s], e) - accuracy_at(rb[s], e) for e in stage_ends(ra[s])] for s in seeds]
    return [float(x) for x in np.mean(diffs, axis=0)], seeds
