"""The method comparison view of a report: rows methods, columns settings (issue 6, "Report").

`section` is the hook `report_tables.write_report(..., sections=[...])` calls. It applies when the
runs' varying config keys include `algorithm` and at least one other key (or when forced). A *column*
is one value of the other varying keys (e.g. `alpha=0.1, regular`); a *cell* is the
`report_tables.Setting` of one method in one column, its runs the seeds. Aggregation is the
per-setting table's: sample std over seeds (ddof=1, 0 for one seed), rounds and bytes to target over
the seeds that reached it. Methods are ordered as in `sweep_presets.COMPARE_METHODS`, others after.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
import shlex
import shutil
from typing import Any

import numpy as np

from spark_jax.lab import report_tables, sweep_presets
from spark_jax.lab.report_tables import Run, Setting
from spark_jax.runner.run_io import atomic_path

METHOD_KEY = "algorithm"
HEATMAP = "label_histogram.png"  # written into every run directory by spark_jax.runner.experiment


@dataclasses.dataclass
class Comparison:
    methods: list[str]
    keys: list[str]  # the varying config keys that make a column (all but METHOD_KEY)
    columns: list[str]  # column labels, in value order
    column_values: list[dict[str, Any]]  # per column: keys -> value
    cells: dict[tuple[str, str], Setting]  # (method, column label) -> runs over seeds


def _method(setting: Setting) -> str | None:
    config = setting.runs[0].config
    return None if config is None else str(config.get(METHOD_KEY, "?"))


def applies(settings: list[Setting]) -> bool:
    """True when `algorithm` and at least one other config key vary between the runs."""
    return any(METHOD_KEY in s.values and len(s.values) > 1 for s in settings if _method(s) is not None)


def method_order(methods) -> list[str]:
    known = [m for m in sweep_presets.COMPARE_METHODS if m in methods]
    return known + sorted(set(methods) - set(known))


def short_names(keys: list[str]) -> dict[str, str]:
    """Leaf names ('partition.alpha' -> 'alpha'), the full key where two leaves would collide."""
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: leaf if leaves.count(leaf) == 1 else k for k, leaf in zip(keys, leaves)}


def column_label(values: dict[str, Any], names: dict[str, str]) -> str:
    """{'partition.alpha': 0.1, 'topology.kind': 'regular'} -> 'alpha=0.1, regular' (strings bare)."""
    parts = [v if isinstance(v, str) else f"{names[k]}={report_tables._spell(v)}" for k, v in values.items()]
    return ", ".join(parts) or "all runs"


def build(settings: list[Setting]) -> Comparison:
    """Arranges the settings (those with a readable config) into methods x columns."""
    compared = [s for s in settings if _method(s) is not None]
    keys = sorted({k for s in compared for k in s.values if k != METHOD_KEY})
    names = short_names(keys)
    columns: dict[tuple, dict[str, Any]] = {}
    placed = []
    for s in compared:
        values = {k: s.values.get(k, report_tables._MISSING) for k in keys}
        key = tuple(repr(v) for v in values.values())
        columns.setdefault(key, values)
        placed.append((_method(s), key, s))
    order = sorted(columns, key=lambda c: tuple(report_tables._sort_key(v) for v in columns[c].values()))
    labels = {c: column_label(columns[c], names) for c in order}
    return Comparison(methods=method_order({m for m, _, _ in placed}), keys=keys,
                      columns=[labels[c] for c in order], column_values=[columns[c] for c in order],
                      cells={(m, labels[c]): s for m, c, s in placed})


def cell_stats(setting: Setting, target: float) -> dict:
    """Final aggregated and mean per-node accuracy, rounds and bytes to `target`, over seeds."""
    stats = [report_tables.run_stats(r, target) for r in setting.runs]
    reached = [st for st in stats if st["rounds_to_target"] is not None]
    final_mean, final_std = report_tables._mean_std([st["final_accuracy"] for st in stats])
    node_mean, node_std = report_tables._mean_std(
        [r.records[-1].get("node_accuracy_mean", math.nan) for r in setting.runs])
    rtt_mean, rtt_std = report_tables._mean_std([st["rounds_to_target"] for st in reached])
    return {
        "n": len(setting.runs), "seeds": " ".join(str(r.seed) for r in setting.runs),
        "final_accuracy_mean": final_mean, "final_accuracy_std": final_std,
        "node_accuracy_mean": node_mean, "node_accuracy_std": node_std,
        "target": target, "reached": len(reached),
        "rounds_to_target_mean": rtt_mean if reached else None,
        "rounds_to_target_std": rtt_std if reached else None,
        "bytes_to_target_mean": report_tables._mean_std([st["bytes_to_target"] for st in reached])[0]
        if reached else None,
    }


def long_rows(comp: Comparison, target: float) -> list[dict]:
    """One row per (method, column) with runs: method, setting, the column's keys, then the numbers."""
    rows = []
    for method in comp.methods:
        for label, values in zip(comp.columns, comp.column_values):
            if (method, label) in comp.cells:
                rows.append({"method": method, "setting": label, **values,
                             **cell_stats(comp.cells[method, label], target)})
    return rows


def _best(rows: list[dict], column: str, key: str) -> float:
    means = [r[key] for r in rows if r["setting"] == column and np.isfinite(r[key])]
    return max(means) if means else math.nan


def _cell(row: dict | None, kind: str, best: float, n_full: int) -> str:
    if row is None:
        return "n/a"
    if kind in ("final_accuracy", "node_accuracy"):
        mean, std = row[f"{kind}_mean"], row[f"{kind}_std"]
        if not np.isfinite(mean):
            return "–"
        text = f"{mean:.4f} ± {std:.4f}"
        text = f"**{text}**" if mean == best else text
        return text + (f" (n={row['n']})" if row["n"] < n_full else "")
    if kind == "rounds":
        if not row["reached"]:
            return f"– (0/{row['n']})"
        return f"{row['rounds_to_target_mean']:.1f} ({row['reached']}/{row['n']})"
    return report_tables.format_bytes(row["bytes_to_target_mean"])


TABLES = (  # (kind, heading)
    ("final_accuracy", "Final aggregated test accuracy (mean ± std over seeds; best per column in bold)"),
    ("node_accuracy", "Mean per-node test accuracy, final round (mean ± std over seeds; best per column in bold)"),
    ("rounds", "Rounds to target (mean over the seeds that reached it; reached/n)"),
    ("bytes", "Bytes to target (mean over the seeds that reached it; all nodes, 1 GB = 1e9 B)"),
)


def markdown_tables(comp: Comparison, rows: list[dict]) -> dict[str, str]:
    """Heading -> markdown table (rows methods, columns settings), one per entry of TABLES."""
    by_cell = {(r["method"], r["setting"]): r for r in rows}
    n_full = max((r["n"] for r in rows), default=0)
    tables = {}
    for kind, heading in TABLES:
        best = {c: _best(rows, c, f"{kind}_mean") for c in comp.columns} if kind.endswith("accuracy") else {}
        lines = ["| method | " + " | ".join(c.replace("|", "\\|") for c in comp.columns) + " |",
                 "|" + "---|" * (len(comp.columns) + 1)]
        for m in comp.methods:
            cells = [_cell(by_cell.get((m, c)), kind, best.get(c, math.nan), n_full) for c in comp.columns]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        tables[heading] = "\n".join(lines)
    return tables


def _grid_columns(comp: Comparison) -> int:
    """Subplots per row: the last key's values when the columns form a full grid (e.g. topologies)."""
    n = len(comp.columns)
    if len(comp.keys) >= 2:
        k = len({repr(v[comp.keys[-1]]) for v in comp.column_values})
        if n % k == 0:
            return k
    return min(n, 3)


def plot_comparison(comp: Comparison, path, x_key: str, target: float | None = None) -> None:
    """One subplot per column, one line per method: accuracy vs `x_key` (mean over seeds, min-max band)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

    ncols = _grid_columns(comp)
    nrows = -(-len(comp.columns) // ncols)
    fig = Figure(figsize=(3.6 * ncols, 2.9 * nrows + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    handles = {}
    for ax, column in zip(axes, comp.columns):
        for i, method in enumerate(comp.methods):
            if (method, column) not in comp.cells:
                continue
            x, mean, lo, hi = report_tables.curves(comp.cells[method, column], x_key)
            handles[method], = ax.plot(x, mean, color=f"C{i % 10}", lw=1.4, label=method)
            ax.fill_between(x, lo, hi, color=f"C{i % 10}", alpha=0.2, lw=0)
        if target is not None:
            ax.axhline(target, color="grey", ls="--", lw=0.8)
        if x_key == "bytes_cumulative":
            ax.set_xscale("log")
        ax.set_title(column, fontsize="medium")
        ax.grid(alpha=0.3)
    for ax in axes[len(comp.columns):]:
        ax.set_visible(False)
    fig.supxlabel("bytes sent (cumulative, all nodes)" if x_key == "bytes_cumulative" else "round")
    fig.supylabel("aggregated test accuracy" + (f" (dashed: target {target:g})" if target is not None else ""))
    fig.legend([handles[m] for m in comp.methods if m in handles], [m for m in comp.methods if m in handles],
               loc="outside upper center", ncol=min(len(handles), 6), frameon=False)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def copy_partition_heatmaps(comp: Comparison, out) -> list[tuple[str, pathlib.Path, Run]]:
    """Per distinct partition (the `partition.*` config keys): the seed-0 run's label heat map (else the
    first run's that has one), copied to out/partition_<label>.png. Returns (label, copy, source run)."""
    runs = [r for m in comp.methods for c in comp.columns if (m, c) in comp.cells for r in comp.cells[m, c].runs]
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(tuple(sorted((k, repr(v)) for k, v in r.config.items() if k.startswith("partition."))),
                          []).append(r)
    keys = sorted({k for g in groups for k, _ in g})
    varying = [k for k in keys if len({dict(g).get(k) for g in groups}) > 1]
    names = short_names(varying)
    copied = []
    for members in groups.values():
        with_map = [r for r in members if (r.path / HEATMAP).is_file()]
        if not with_map:
            continue
        source = next((r for r in with_map if r.seed == 0), with_map[0])
        values = {k: source.config.get(k) for k in varying}
        label = ",".join(f"{names[k]}={report_tables._spell(v)}" for k, v in values.items()) or "all"
        copied.append((values, label, source))
    copied.sort(key=lambda c: tuple(report_tables._sort_key(v) for v in c[0].values()))
    result = []
    for _, label, source in copied:
        dest = pathlib.Path(out) / f"partition_{re.sub(r'[^A-Za-z0-9._=,-]', '_', label)}.png"
        with atomic_path(dest) as tmp:
            shutil.copyfile(source.path / HEATMAP, tmp)
        result.append((label, dest, source))
    return result


def section(root, settings: list[Setting], out, target: float, force: bool | None = None) -> dict | None:
    """The report_tables.write_report hook: writes compare.csv, compare_vs_round.png, compare_vs_bytes.png
    and partition_*.png to `out`. None when it does not apply (`force`: None = auto, True, False).

    Returns {'comparison', 'rows', 'tables', 'text' (the tables, for a terminal), 'markdown', 'files'}.
    """
    if not (applies(settings) if force is None else force):
        return None
    comp = build(settings)
    if not comp.cells:
        return None
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = long_rows(comp, target)
    tables = markdown_tables(comp, rows)
    files = {"compare_csv": out / "compare.csv", "compare_round_png": out / "compare_vs_round.png",
             "compare_bytes_png": out / "compare_vs_bytes.png"}
    report_tables.write_csv(rows, files["compare_csv"])
    plot_comparison(comp, files["compare_round_png"], "round", target)
    plot_comparison(comp, files["compare_bytes_png"], "bytes_cumulative", target)
    heatmaps = copy_partition_heatmaps(comp, out)
    files.update({f"partition_{label}": dest for label, dest, _ in heatmaps})
    text = f"Method comparison, target accuracy {target:g}\n\n" + "\n\n".join(
        f"{heading}:\n{table}" for heading, table in tables.items())
    parts = ["## Method comparison", "",
             f"Rows: methods ({METHOD_KEY}); columns: settings of {', '.join(comp.keys) or 'all runs'}; "
             f"target aggregated test accuracy {target:g}. Long format: [{files['compare_csv'].name}]"
             f"({files['compare_csv'].name}).", ""]
    for heading, table in tables.items():
        parts += [f"### {heading}", "", table, ""]
    parts += ["### Accuracy vs round and vs bytes, per setting", "",
              f"![accuracy vs round per setting]({files['compare_round_png'].name})",
              "", f"![accuracy vs bytes per setting]({files['compare_bytes_png'].name})", ""]
    if heatmaps:
        parts += ["### Label distribution of the partitions (nodes x classes)", ""]
        for label, dest, source in heatmaps:
            parts += [f"{label} (from {report_tables._relative(source.path, root)}):", "",
                      f"![partition {label}]({dest.name})", ""]
    return {"comparison": comp, "rows": rows, "tables": tables, "text": text,
            "markdown": "\n".join(parts).rstrip() + "\n", "files": files}


def write_sweep_report(workdir) -> str:
    """Writes the report of the sweep in `workdir` (report.md, CSV, plots in `workdir`/report); one line
    saying where, or why not (a report failure never fails the sweep)."""
    try:
        report = report_tables.write_report(workdir, None, None, sections=[section])
    except (ValueError, OSError) as e:
        return f"report not written: {e}; try python -m experiments.report {shlex.quote(str(workdir))}"
    skipped = len(report["skipped"]) + len(report.get("corrupt", []))
    left_out = f", {skipped} run(s) left out" if skipped else ""
    return (f"report: {report['files']['md']} ({len(report['rows'])} row(s){left_out}; "
            f"python -m experiments.report {shlex.quote(str(workdir))} for the tables and options)")
