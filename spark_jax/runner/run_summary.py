"""What a finished run or sweep prints last: a short summary and where to look next.

`summary_lines(summary, workdir)` turns a run's summary.json dict into the
closing lines of `python -m experiments.run`: final aggregated and mean
per-node accuracy, best accuracy and its round, rounds and bytes to the target
(or "not reached"), wall time, the run directory (with curves.png) and the
report command (the report a sweep writes when it ends: `report_compare.write_sweep_report`).
"""

from __future__ import annotations

import pathlib
import shlex

from spark_jax.setting.comm import human_bytes  # noqa: F401  (re-exported)


def human_seconds(s) -> str:
    """95.2 -> '1 min 35 s'; 4000 -> '1 h 6 min'."""
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def summary_lines(summary: dict, workdir, note: str = "") -> list[str]:
    """The closing lines of a run (see the module docstring); `summary` as in summary.json.

    The first line is the one-line result (`note`, e.g. ' (resumed)', after the round count); the
    others the details, the curves and the report command.
    """
    workdir = str(workdir)
    rounds = summary["rounds"]
    plural = "s" if rounds != 1 else ""
    best_round = summary.get("best_round")
    best_at = f" at round {best_round}" if best_round else ""
    hit = summary.get("rounds_to_target")
    if hit:
        reached = f"reached at round {hit}, after {human_bytes(summary['bytes_to_target'])} sent"
    else:
        reached = f"not reached in {rounds} round{plural}"
    curves = pathlib.Path(workdir) / "curves.png"
    lines = [
        f"{summary['config_name']}: final aggregated test accuracy {summary['final_test_accuracy']:.4f} after "
        f"{rounds} round{plural}{note}; run directory {workdir}",
        f"  {summary['algorithm']}, {summary['num_nodes']} nodes: per-node test accuracy (mean) "
        f"{summary['final_node_accuracy_mean']:.4f}; best aggregated {summary['best_test_accuracy']:.4f}{best_at}",
        f"  target accuracy {summary['target_accuracy']:g}: {reached}; {human_bytes(summary['bytes_total'])} "
        "sent in all",
        f"  wall time {human_seconds(summary['wall_time'])}",
    ]
    if curves.exists():
        lines.append(f"  curves: {curves}")
    lines.append(f"  report: python -m experiments.report {shlex.quote(workdir)}")
    return lines
