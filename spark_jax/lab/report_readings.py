"""docs/RESULTS.md: the study of the SPARK readings, regenerated from its sweep directories.

  python -m experiments.report results/readings_cpu --readings=docs/RESULTS.md

copies the runs' records (sweep.json, config.json, metrics.jsonl, summary.json;
no checkpoints) to docs/results/<name of the source>/, draws the figures into
docs/results/, and writes RESULTS.md from the copy, so that the committed file
can be regenerated from committed data (tests/test_report_readings.py). No
number in RESULTS.md is typed by hand: tables come from `readings_stats`,
verdicts from the fixed rules of `readings_verdicts`.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import shutil

import numpy as np

from spark_jax.lab import readings_stats as rs
from spark_jax.lab import readings_verdicts as rv
from spark_jax.lab import report_tables
from spark_jax.lab.report_tables import Setting, format_bytes
from spark_jax.runner.run_io import write_atomic

RECORDS = ("config.json", "metrics.jsonl", "summary.json")
SECOND_TARGET = 0.85


def collect(src, dst) -> pathlib.Path:
    """Copies every sweep.json below `src` and its runs' records (not checkpoints) to `dst`, replacing it."""
    src, dst = pathlib.Path(src), pathlib.Path(dst)
    sweeps = sorted(src.rglob("sweep.json"))
    if not sweeps:
        raise ValueError(f"no sweep.json under {src}")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if (src / "NOTES.md").is_file():  # the study's hand-written notes (prose, no numbers)
        shutil.copy2(src / "NOTES.md", tmp / "NOTES.md")
    for sweep in sweeps:
        rel = sweep.parent.relative_to(src)
        (tmp / rel).mkdir(parents=True, exist_ok=True)
        shutil.copy2(sweep, tmp / rel / "sweep.json")
        for run_dir in {p.parent for name in RECORDS for p in sweep.parent.rglob(name)}:
            target = tmp / run_dir.relative_to(src)
            target.mkdir(parents=True, exist_ok=True)
            for name in RECORDS:
                if (run_dir / name).is_file():
                    shutil.copy2(run_dir / name, target / name)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)
    return dst


def _acc(mean_std, n) -> str:
    mean, std = mean_std
    return "–" if not math.isfinite(mean) else f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"


def _reach(x: dict) -> str:
    if not x["n"]:
        return "–"
    if not x["reached"]:
        return f"not reached (0/{x['n']})"
    spread = f" ± {x['round_std']:.1f}" if x["reached"] > 1 else ""
    return f"{x['round']:.1f}{spread} ({x['reached']}/{x['n']})"


def _seeds(cell: rs.Cell) -> str:
    text = f"{len(cell.runs)}" + (" (1 seed)" if len(cell.runs) == 1 else "")
    if cell.failed:
        text += f", {len(cell.failed)} failed"
    if cell.unfinished:
        text += f", {len(cell.unfinished)} unfinished"
    return text


def main_table(cells, stats, reach, reach85, target) -> str:
    head = ["reading", "seeds", "final acc (aggregated)", "mean per-node acc", "best acc",
            f"rounds to {target:g}", f"total bytes to {target:g}", f"Jacobian bytes to {target:g}",
            f"rounds to {SECOND_TARGET:g}", f"total bytes to {SECOND_TARGET:g}", "bytes per round",
            "s per round (first)", "wall time, all seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        if not c.runs:
            lines.append("| " + " | ".join([c.reading, _seeds(c)] + ["–"] * (len(head) - 2)) + " |")
            continue
        k, s = (c.reading, c.alpha), stats[c.reading, c.alpha]
        x, y = reach[k], reach85[k]
        lines.append("| " + " | ".join([
            c.reading, _seeds(c), _acc(s["final"], s["n"]), _acc(s["node"], s["n"]), f"{s['best'][0]:.4f}",
            _reach(x), format_bytes(x["bytes"]), format_bytes(x["jacobian_bytes"]), _reach(y),
            format_bytes(y["bytes"]), format_bytes(s["bytes_per_round"]),
            f"{s['seconds_per_round']:.1f} ({s['first_round_seconds']:.1f})", f"{s['wall_seconds'] / 60:.1f} min",
        ]) + " |")
    return "\n".join(lines)


def stage_table(cells, stats) -> str:
    ntk = next((stats[c.reading, c.alpha] for c in cells if c.reading == "ntk_dfl"), None)
    head = ["reading", "end of stage 1", "end of stage 2", "end of stage 3", "stage-2 gain", "stage-3 gain",
            "vs ntk_dfl at the stage ends (points)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        e = stats[c.reading, c.alpha]["stages"]
        vs = " / ".join(f"{100 * (a - b):+.1f}" for a, b in zip(e, ntk["stages"])) if ntk else "–"
        lines.append(f"| {c.reading} | {e[0]:.4f} | {e[1]:.4f} | {e[2]:.4f} | {100 * (e[1] - e[0]):+.1f} | "
                     f"{100 * (e[2] - e[1]):+.1f} | {vs} |")
    return "\n".join(lines)


def effect_table(cells) -> str:
    """What each part of SPARK changes: paired differences (same seeds) at the three stage ends."""
    by = {c.reading: c for c in cells if c.runs}
    lines = ["| reading − against | isolates | seeds | end of stage 1 | end of stage 2 | end of stage 3 (points) |",
             "|---|---|---|---|---|---|"]
    for a, b, what in rs.EFFECTS:
        if a in by and b in by and (effect := rs.paired_effect(by[a], by[b])) is not None:
            diffs, seeds = effect
            lines.append(f"| {a} − {b} | {what} | {' '.join(map(str, seeds))} | "
                         + " | ".join(f"{100 * d:+.1f}" for d in diffs) + " |")
    return "\n".join(lines)


def scorecard_table(rows) -> str:
    lines = ["| reading | final acc | Jacobian traffic cut vs ntk_dfl | rounds speed-up vs fastest baseline | "
             "total bytes to target, cut vs ntk_dfl | final acc vs best baseline (points) | claims met |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        def pct(v):
            return "–" if not math.isfinite(v) else f"{100 * v:.1f}%"
        speed = "–" if not math.isfinite(r["speedup"]) else f"{r['speedup']:.2f}x"
        lines.append(f"| {r['reading']} | {r['final']:.4f} | {pct(r['jacobian_cut'])} | {speed} | "
                     f"{pct(r['bytes_cut'])} | {100 * r['gap']:+.1f} | {r['met']}/4 |")
    return "\n".join(lines)


def plot(cells, path, x_key, target) -> None:
    settings = [Setting(c.reading, {}, c.runs) for c in cells if c.runs]
    report_tables.plot_accuracy(settings, path, x_key, target)


def _setting_line(run) -> str:
    c = run.config or {}
    return (f"`{c.get('name')}`: the first {c.get('partition.num_nodes')} nodes of the NTK-DFL partition "
            f"files, {c.get('rounds')} rounds, dynamic {c.get('topology.degree')}-regular graph, taus "
            f"{', '.join(str(t) for t in c.get('algorithm_kw.taus', ()))}, integrator "
            f"`{c.get('algorithm_kw.evolution.integrator')}`, "
            f"per-node accuracy on a {c.get('eval.per_node_test_subset')}-image test subset")


def _commands(root) -> list[str]:
    out, workdirs = [], []
    for sweep in sorted(pathlib.Path(root).rglob("sweep.json")):
        argv = json.loads(sweep.read_text()).get("argv", [])
        # named configs as typed (older sweeps recorded the resolved path of experiments/configs/NAME.py)
        argv = [re.sub(r"^--config=\S*experiments/configs/(\w+)\.py", r"--config=\1", a) for a in argv]
        out.append("python -m experiments.sweep " + " ".join(argv))
        workdirs += [a.split("=", 1)[1] for a in argv if a.startswith("--workdir=")]
    parent = os.path.commonpath(workdirs) if len(workdirs) > 1 else (workdirs or ["DIR"])[0]
    return out + [f"python -m experiments.report {parent} --readings=docs/RESULTS.md"]


def figure_path(data_name: str, alpha: float, kind: str) -> str:
    """A figure's path relative to RESULTS.md; kind 'round' or 'bytes'."""
    return f"results/{data_name}_alpha{alpha:g}_{kind}.png"


def paper_scale(cells, stats, nodes=300, rounds=40, seeds=3) -> str:
    """The paper-scale study's CPU time, extrapolated from the measured seconds per round.

    A node's neighbourhood has the same size at every scale (its degree and its partition share do not
    change), so a round costs about nodes / study-nodes times the study's round.
    """
    run = next(c.runs[0] for c in cells if c.runs)
    scale = nodes / int(run.config.get("partition.num_nodes", nodes))
    per_reading = {}
    for (reading, _), s in stats.items():
        per_reading.setdefault(reading, []).append(s["seconds_per_round"])
    hours = sum(np.mean(v) for v in per_reading.values()) * 2 * seeds * rounds * scale / 3600
    return (f"The paper-scale study is one preset: `python -m experiments.sweep --config=fmnist_regular "
            f"--preset=spark_readings --seeds=0,1,2 --workdir=results/readings_paper` ({len(per_reading)} rows x "
            f"alpha 0.1 and 0.5 x {seeds} seeds, {nodes} nodes, {rounds} rounds). On the machine that ran this "
            f"study it would take about {hours:.0f} hours: each row's measured seconds per round x {scale:g} "
            f"(a {nodes}-node round does {scale:g}x the work of a {run.config.get('partition.num_nodes')}-node "
            f"round: every neighbourhood keeps its size) x {rounds} rounds x 2 alphas x {seeds} seeds. It runs "
            "unchanged on a GPU machine; its GPU time is measured by the device suite (BUILD.md).")


def markdown(root) -> str:
    """RESULTS.md's text from the run records under `root` (the collected copy)."""
    cells = rs.load_cells(root)
    figures = {(a, k): figure_path(pathlib.Path(root).name, a, k) for a in {c.alpha for c in cells}
               for k in ("round", "bytes")}
    stats = {(c.reading, c.alpha): rs.cell_stats(c) for c in cells if c.runs}
    alphas = sorted({c.alpha for c in cells})
    targets = {a: rs.common_target([c for c in cells if c.alpha == a]) for a in alphas}
    reach = {(c.reading, c.alpha): rs.to_target(c, targets[c.alpha]) for c in cells}
    reach85 = {(c.reading, c.alpha): rs.to_target(c, SECOND_TARGET) for c in cells}
    first = next(c.runs[0] for c in cells if c.runs)
    rounds = int(first.config.get("rounds", len(first.records)))
    low = alphas[0]
    verdicts = [rv.claim_a(stats, low), rv.claim_b(stats, reach, low, rounds), rv.claim_c(stats, reach, low),
                rv.claim_d(stats, alphas)]
    score = rv.scorecard(stats, reach, low, rounds)
    parts = ["# Which SPARK reproduces the claims? The study of the readings", "",
             "Generated by `python -m experiments.report … --readings=docs/RESULTS.md` from the run records in "
             f"`docs/results/{pathlib.Path(root).name}/` (no number here is typed by hand). Setting: "
             + _setting_line(first) + ". Every row uses the same data, partitions, graph stream and "
             "evaluation; rows are the presets of `spark_jax/lab/sweep_presets.py` (`READINGS`). Accuracy is mean "
             "± sample std over seeds; rounds and bytes to a target are means over the seeds that reached it; "
             "bytes count weights and messages of all nodes (float32; 1 GB = 1e9 B). Seconds are wall time on "
             "the machine that ran the study (each run's config.json records it); round 1 includes compilation.",
             "", "## Commands", "", "```bash", *_commands(root), "```", "",
             "## Verdicts", "", "| claim | verdict | the numbers that decide it |", "|---|---|---|"]
    parts += [f"| {v.claim} | **{v.verdict}** | {v.evidence} |" for v in verdicts]
    closest = score[0]["reading"] if score else "–"
    parts += ["", f"Closest reading to the paper (most claims met at alpha {low:g}, then final accuracy): "
              f"**{closest}**.", "", f"### Each SPARK reading against the claims (alpha {low:g})", "",
              scorecard_table(score), ""]
    winners = rv.clear_winners(stats, low)
    if winners:
        parts += [f"Readings that clearly beat the SPEC default spark_v1 (by more than {100 * rs.TOLERANCE:.0f} "
                  "point and two standard errors): " + "; ".join(
                      f"{r} {100 * g:+.1f} points at {b:.2f}x its bytes per round" for r, g, b in winners) + ".", ""]
    else:
        parts += ["No reading beats the SPEC default spark_v1 by more than "
                  f"{100 * rs.TOLERANCE:.0f} point and two standard errors.", ""]
    for a in alphas:
        sub = [c for c in cells if c.alpha == a]
        parts += [f"## alpha = {a:g}", "", f"Common target {targets[a]:g}: the highest accuracy (in steps of "
                  "0.01) that every seed of at least three quarters of the rows reached.", "",
                  main_table(sub, stats, reach, reach85, targets[a]), ""]
        parts += [f"![accuracy vs round, alpha {a:g}]({figures[a, 'round']})", "",
                  f"![accuracy vs cumulative bytes, alpha {a:g}]({figures[a, 'bytes']})", "",
                  f"### Per stage (alpha {a:g}; distillation acts from stage 2, momentum in stage 3)", "",
                  stage_table([c for c in sub if c.runs], stats), "",
                  "What each part changes (paired by seed; stage 1 has no distillation or momentum, so "
                  "differences there come from the sketch or from chance):", "", effect_table(sub), ""]
    parts += ["## Paper scale", "", paper_scale(cells, stats), ""]
    notes = pathlib.Path(root) / "NOTES.md"
    if notes.is_file():
        parts += ["## Notes", "", notes.read_text().strip(), ""]
    bad = [(c, s, e) for c in cells for s, e in c.failed]
    open_ = [(c, s) for c in cells for s in c.unfinished]
    parts += ["## Failed and unfinished runs", ""]
    parts += [f"- {c.reading}, alpha {c.alpha:g}, seed {s}: failed: `{e}`" for c, s, e in bad]
    parts += [f"- {c.reading}, alpha {c.alpha:g}, seed {s}: not finished" for c, s in open_]
    parts += ["None: every run of the grids finished." if not bad and not open_ else "", ""]
    return "\n".join(parts).rstrip() + "\n"


def write_results(src, out_md) -> dict:
    """Collects `src`'s records next to `out_md`, draws the figures, writes `out_md`; returns the paths."""
    out_md = pathlib.Path(out_md)
    results = out_md.parent / "results"
    data = collect(src, results / pathlib.Path(src).resolve().name)
    cells = rs.load_cells(data)
    figures = []
    for a in sorted({c.alpha for c in cells}):
        sub = [c for c in cells if c.alpha == a]
        for kind, key in (("round", "round"), ("bytes", "bytes_cumulative")):
            figures.append(out_md.parent / figure_path(data.name, a, kind))
            plot(sub, figures[-1], key, rs.common_target(sub))
    write_atomic(out_md, markdown(data))
    return {"markdown": out_md, "data": data, "figures": figures}
