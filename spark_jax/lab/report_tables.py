"""Reports regenerated from run directories: tables over seeds and accuracy curves.

`python -m experiments.report DIR` is a thin wrapper around `write_report`.
Any directory holding config.json and metrics.jsonl below DIR is a run. A run
whose config.json, metrics.jsonl (bad lines, duplicated or missing rounds) or
summary.json does not read back is left out of every table and listed with
the file and the fault ('corrupt'); it never makes a setting of its own. Runs
are grouped into settings by their flattened configs with the seed (and
`IGNORED` keys, which say how a run ran, not what it computed) left out; a
setting's label lists the keys whose values differ between runs. Rounds and
bytes to target are recomputed from metrics.jsonl for the requested target.
Spreads are sample standard deviations over seeds (ddof=1; 0 for one seed).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import functools
import json
import pathlib
from typing import Any

import numpy as np

from spark_jax.runner.run_io import (ADDED_FIELDS, IGNORED_IN_RESUME_CHECK, CorruptFileError, RunDir, atomic_path,
                                     flatten, kw_paths, read_metrics_checked, current_layout,
                                     write_atomic)

IGNORED = ("seed",) + IGNORED_IN_RESUME_CHECK
_MISSING = "<missing>"


@dataclasses.dataclass
class Run:
    path: pathlib.Path
    config: dict[str, Any] | None  # flattened, tuples for lists; None when the run is corrupt
    records: list[dict]
    complete: bool  # summary.json present
    problem: str | None = None  # the damaged file and its fault; such a run is in no table

    @property
    def seed(self):
        return (self.config or {}).get("seed")


@dataclasses.dataclass
class Setting:
    label: str
    values: dict[str, Any]  # the differing keys and this setting's values
    runs: list[Run]


def find_run_dirs(root) -> list[pathlib.Path]:
    """Every directory under `root` (inclusive) with both metrics.jsonl and config.json, sorted."""
    root = pathlib.Path(root)
    return sorted(p.parent for p in root.rglob("metrics.jsonl") if (p.parent / "config.json").exists())


def load_run(path) -> Run:
    """The run in `path`; a damaged config.json, metrics.jsonl or summary.json sets `problem` (named)."""
    path = pathlib.Path(path)
    run_dir = RunDir(path)
    try:
        config = current_layout(flatten(run_dir.read_config()))
        records = read_metrics_checked(path)
        run_dir.read_summary()
    except (CorruptFileError, OSError) as e:
        return Run(path, None, [], False, problem=str(e))
    return Run(path, config, records, (path / "summary.json").exists())


def _relative(path: pathlib.Path, root) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _sort_key(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _spell(value) -> str:
    if isinstance(value, tuple):
        return ":".join(_spell(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def sweep_setting_names(root) -> dict[str, str]:
    """Run directory (relative to root) -> setting name, from root/sweep.json when it exists."""
    path = pathlib.Path(root) / "sweep.json"
    if not path.is_file():
        return {}
    try:
        return {r["run_dir"]: r["setting"] for r in json.loads(path.read_text()).get("runs", [])}
    except (ValueError, KeyError, TypeError):
        return {}


_kw_paths = functools.lru_cache(maxsize=None)(kw_paths)  # once per algorithm per report


def _kw_of_another(key: str, config: dict) -> bool:
    """True for an `algorithm_kw.` key that this run's algorithm does not take."""
    if not key.startswith("algorithm_kw."):
        return False
    keys = _kw_paths(config.get("algorithm"))
    return key not in (config if keys is None else keys)


def _varies(key: str, configs: list[dict]) -> bool:
    """Whether `key` differs between runs; an algorithm's keyword argument only between runs of one
    algorithm (across algorithms, `algorithm` tells them apart)."""
    groups: dict[Any, set] = {}
    for c in configs:
        if not _kw_of_another(key, c):
            groups.setdefault(c.get("algorithm") if key.startswith("algorithm_kw.") else None, set()).add(
                repr(c.get(key, _MISSING)))
    return any(len(values) > 1 for values in groups.values())


def group_settings(runs: list[Run], root=None) -> list[Setting]:
    """Runs (with readable configs) grouped by the config keys that differ between them (seed
    excluded), in value order."""
    # a field added to the schema later reads, in an older run's config, as the value it ran under
    configs = [{**ADDED_FIELDS, **r.config} for r in runs]
    keys = sorted(set().union(*configs)) if configs else []
    varying = [k for k in keys if k not in IGNORED and _varies(k, configs)]
    groups: dict[tuple, Setting] = {}
    for run, config in zip(runs, configs):
        values = {k: config.get(k, _MISSING) for k in varying if not _kw_of_another(k, config)}
        key = tuple((k, repr(v)) for k, v in values.items())
        label = (",".join(f"{k.removeprefix('algorithm_kw.')}={_spell(v)}" for k, v in values.items())  # as run names
                 or str(run.config.get("name", "all runs")))
        groups.setdefault(key, Setting(label, values, [])).runs.append(run)
    names = sweep_setting_names(root) if root else {}
    for setting in groups.values():
        found = {names.get(_relative(r.path, root)) for r in setting.runs}
        if len(found) == 1 and None not in found:  # a sweep's own name for the setting (e.g. 'no_sketch')
            setting.label = found.pop()
    settings = list(groups.values())
    settings.sort(key=lambda s: (tuple(_sort_key(v) for v in s.values.values()), s.label))
    return settings


def run_stats(run: Run, target: float) -> dict:
    """Final/best aggregated accuracy, rounds and bytes to `target`, bytes sent (one run)."""
    accs = [r["test_accuracy"] for r in run.records]
    hit = next((r for r in run.records if r["test_accuracy"] >= target), None)
    return {
        "final_accuracy": accs[-1] if accs else float("nan"),
        "best_accuracy": max(accs) if accs else float("nan"),
        "rounds_to_target": hit["round"] if hit else None,
        "bytes_to_target": hit["bytes_cumulative"] if hit else None,
        "jacobian_bytes": sum(r.get("jacobian_bytes", 0) for r in run.records),
        "bytes_total": run.records[-1]["bytes_cumulative"] if run.records else 0,
    }


def _mean_std(xs) -> tuple[float, float]:
    a = np.asarray(xs, dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def summarize(settings: list[Setting], target: float) -> list[dict]:
    """One row per setting with raw numbers (the CSV); `markdown_table` formats them."""
    rows = []
    for s in settings:
        stats = [run_stats(r, target) for r in s.runs]
        reached = [st for st in stats if st["rounds_to_target"] is not None]
        final_mean, final_std = _mean_std([st["final_accuracy"] for st in stats])
        rtt_mean, rtt_std = _mean_std([st["rounds_to_target"] for st in reached])
        rows.append({
            "setting": s.label, "n": len(s.runs), "seeds": " ".join(str(r.seed) for r in s.runs),
            "final_accuracy_mean": final_mean, "final_accuracy_std": final_std,
            "best_accuracy_mean": _mean_std([st["best_accuracy"] for st in stats])[0],
            "target": target, "reached": len(reached),
            "rounds_to_target_mean": rtt_mean if reached else None,
            "rounds_to_target_std": rtt_std if reached else None,
            "bytes_to_target_mean": _mean_std([st["bytes_to_target"] for st in reached])[0] if reached else None,
            "jacobian_bytes_mean": _mean_std([st["jacobian_bytes"] for st in stats])[0],
            "bytes_total_mean": _mean_std([st["bytes_total"] for st in stats])[0],
        })
    return rows


def format_bytes(n) -> str:
    """Decimal units: 1.23 GB, 45.6 MB, 7.8 kB, 12 B."""
    if n is None:
        return "–"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def markdown_table(rows: list[dict]) -> str:
    head = ["setting", "seeds (n)", "final acc", "best acc", "rounds to target (reached/n)", "bytes to target",
            "Jacobian bytes", "total bytes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["reached"]:
            rtt = f"{r['rounds_to_target_mean']:.1f} ± {r['rounds_to_target_std']:.1f} ({r['reached']}/{r['n']})"
        else:
            rtt = f"not reached (0/{r['n']})"
        cells = [r["setting"].replace("|", "\\|"), f"{r['seeds']} ({r['n']})",
                 f"{r['final_accuracy_mean']:.4f} ± {r['final_accuracy_std']:.4f}", f"{r['best_accuracy_mean']:.4f}",
                 rtt, format_bytes(r["bytes_to_target_mean"]), format_bytes(r["jacobian_bytes_mean"]),
                 format_bytes(r["bytes_total_mean"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict], path) -> None:
    """`rows` as CSV, written atomically (run_io.write_atomic)."""
    f = io.StringIO(newline="")
    writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["setting"])
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if v is None else v for k, v in r.items()})
    write_atomic(path, f.getvalue())


def curves(setting: Setting, x_key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x (mean over seeds), accuracy mean, min, max per round, over the rounds all seeds have."""
    length = min(len(r.records) for r in setting.runs)
    x = np.array([[rec[x_key] for rec in r.records[:length]] for r in setting.runs], dtype=np.float64)
    y = np.array([[rec["test_accuracy"] for rec in r.records[:length]] for r in setting.runs], dtype=np.float64)
    return x.mean(axis=0), y.mean(axis=0), y.min(axis=0), y.max(axis=0)


def plot_accuracy(settings: list[Setting], path, x_key: str, target: float | None = None) -> None:
    """Accuracy vs `x_key` ('round' or 'bytes_cumulative', log x): mean over seeds, min-max band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

    fig = Figure(figsize=(7, 4.5 + 0.25 * len(settings)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for s in settings:
        x, mean, lo, hi = curves(s, x_key)
        (line,) = ax.plot(x, mean, label=f"{s.label} (n={len(s.runs)})", lw=1.5)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=0.8, label=f"target {target:g}")
    if x_key == "bytes_cumulative":
        ax.set_xscale("log")
        ax.set_xlabel("bytes sent (cumulative, all nodes)")
    else:
        ax.set_xlabel("round")
    ax.set_ylabel("aggregated test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=1, frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def default_target(runs: list[Run], fallback: float = 0.85) -> float:
    """The runs' common eval.target_accuracy, else `fallback`."""
    targets = {r.config.get("eval.target_accuracy") for r in runs if r.config}
    targets.discard(None)
    return targets.pop() if len(targets) == 1 else fallback


def write_report(root, out=None, target: float | None = None, sections=()) -> dict:
    """Writes report.md, report.csv, accuracy_vs_round.png, accuracy_vs_bytes.png to `out`.

    `sections`: callables (root, settings, out, target) -> None or a dict whose 'markdown' goes into
    report.md before the per-setting table and whose 'files' it wrote (e.g. report_compare.section).
    Returns {'rows', 'settings', 'skipped', 'target', 'files', 'sections'}; ValueError if no finished run.
    """
    root = pathlib.Path(root)
    out = pathlib.Path(out) if out else root / "report"
    all_runs = [load_run(p) for p in find_run_dirs(root)]
    corrupt = [r for r in all_runs if r.problem]
    runs = [r for r in all_runs if r.complete and r.records and not r.problem]
    skipped = [r for r in all_runs if not (r.complete and r.records) and not r.problem]
    if not runs:
        listed = f" ({len(corrupt)} corrupt: {'; '.join(r.problem for r in corrupt)})" if corrupt else ""
        raise ValueError(f"no finished run directories (config.json + metrics.jsonl + summary.json) under "
                         f"{root}{listed}")
    target = default_target(runs) if target is None else target
    settings = group_settings(runs, root)
    rows = summarize(settings, target)
    out.mkdir(parents=True, exist_ok=True)
    files = {"md": out / "report.md", "csv": out / "report.csv",
             "round_png": out / "accuracy_vs_round.png", "bytes_png": out / "accuracy_vs_bytes.png"}
    write_csv(rows, files["csv"])
    plot_accuracy(settings, files["round_png"], "round", target)
    plot_accuracy(settings, files["bytes_png"], "bytes_cumulative", target)
    extra = [x for x in (section(root, settings, out, target) for section in sections) if x is not None]
    for x in extra:
        files.update(x["files"])
    write_atomic(files["md"], markdown_report(root, settings, rows, target, skipped, files,
                                              [x["markdown"] for x in extra], corrupt))
    return {"rows": rows, "settings": settings, "skipped": skipped, "corrupt": corrupt, "target": target,
            "files": files, "sections": extra}


def markdown_report(root, settings, rows, target, skipped, files, sections=(), corrupt=()) -> str:
    runs = sum(len(s.runs) for s in settings)
    parts = [f"# Report: {root}", "",
             f"{runs} finished runs in {len(settings)} settings; target aggregated test accuracy {target:g}. "
             "Accuracy mean ± sample std over seeds; rounds to target over the seeds that reached it; "
             "bytes are means over seeds (1 GB = 1e9 B).", ""]
    for text in sections:
        parts += [text.rstrip(), ""]
    parts += ["## Per setting", ""] if sections else []
    parts += [markdown_table(rows), "",
              f"![accuracy vs round]({files['round_png'].name})", "",
              f"![accuracy vs bytes]({files['bytes_png'].name})", "", "## Runs", ""]
    for s in settings:
        dirs = ", ".join(_relative(r.path, root) for r in s.runs)
        parts.append(f"- {s.label}: {dirs}")
    if skipped:
        parts += ["", f"Skipped {len(skipped)} unfinished run(s) (no summary.json): "
                  + ", ".join(_relative(r.path, root) for r in skipped)]
    if corrupt:
        parts += ["", f"Skipped {len(corrupt)} corrupt run(s):", ""] + [f"- {r.problem}" for r in corrupt]
    return "\n".join(parts) + "\n"
