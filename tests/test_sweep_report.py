"""Sweeps (grid, typing, presets, naming, resuming) and reports, with a fake runner and synthetic runs."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import tiny
from spark_jax import algorithms
from spark_jax.lab import report_tables, sweep_grid, sweep_presets
from spark_jax.runner.run_io import RunDir
from spark_jax.lab.sweep_grid import SweepError
from tests.conftest import REPO


@pytest.fixture
def config():
    """tiny as a SPARK run (whose keyword arguments the axes below sweep)."""
    c = algorithms.with_algorithm(tiny.get_config(), "spark")
    c.lock()
    return c


@pytest.fixture
def dfedavg_config():
    """tiny as it is: a DFedAvg run (local_epochs, lr)."""
    c = tiny.get_config()
    c.lock()
    return c


def grid_of(config, *specs, seeds=None, preset=None):
    return sweep_grid.build_grid(config, list(specs), seeds, preset)


# ---------------------------------------------------------------- grid and typing


@pytest.mark.parametrize("spec,path,values", [
    ("config.algorithm_kw.sketch.k=128,512,2048", "algorithm_kw.sketch.k", (128, 512, 2048)),
    ("config.algorithm_kw.distill.lambda_max=0,0.5", "algorithm_kw.distill.lambda_max", (0.0, 0.5)),
    ("config.algorithm_kw.sketch.enabled=true,False,0", "algorithm_kw.sketch.enabled", (True, False)),
    ("config.topology.kind=ring,er", "topology.kind", ("ring", "er")),
    ("config.algorithm_kw.taus=100:200;100:200:400", "algorithm_kw.taus", ((100, 200), (100, 200, 400))),
    ("config.model.hidden=64;64:64", "model.hidden", ((64,), (64, 64))),
    ("config.algorithm_kw.stages.boundaries=0.25:0.5;0.5:0.75", "algorithm_kw.stages.boundaries", ((0.25, 0.5), (0.5, 0.75))),
    ("topology.kind=ring;er", "topology.kind", ("ring", "er")),  # prefix optional; ';' also separates
])
def test_axis_values_are_typed_like_the_field(config, spec, path, values):
    if spec.startswith("config.algorithm_kw.sketch.enabled"):
        with pytest.raises(SweepError, match="repeated"):  # 'False' and '0' are the same value
            sweep_grid.parse_axis(spec, config)
        spec = "config.algorithm_kw.sketch.enabled=true,False"
    axis = sweep_grid.parse_axis(spec, config)
    assert axis.path == path and axis.values == values
    assert [type(v) for v in axis.values] == [type(v) for v in values]
    for v, spec_ in zip(values, sweep_grid.expand_grid(config, [axis], [0])):
        assert sweep_grid.get_field(spec_.config, path) == v


@pytest.mark.parametrize("spec,message", [
    ("config.algorithm_kw.sketch.kk=1,2", "sketch has no 'kk'"),
    ("config.nope.k=1", "config has no 'nope'"),
    ("config.algorithm_kw.sketch=1", "section"),
    ("config.sketch.k=1,2", r"config.sketch.k is now config.algorithm_kw.sketch.k"),  # the layout before 2026-12-01
    ("config.algorithm_kw.sketch.k=1.5", "cannot read '1.5' as int"),
    ("config.algorithm_kw.sketch.enabled=maybe", "as bool"),
    ("config.model.hidden=100,200", "separate values with ';'"),
    ("config.seed=0,1", "--seeds"),
    ("config.algorithm_kw.sketch.k", "expected config.PATH"),
    ("config.algorithm_kw.sketch.k=1,1", "repeated"),
])
def test_bad_axes_fail_before_anything_runs(config, spec, message):
    with pytest.raises(SweepError, match=message):
        grid_of(config, spec)


def test_grid_is_the_product_of_axes_and_seeds(config):
    grid = grid_of(config, "config.algorithm_kw.sketch.k=128,512,2048", "config.algorithm_kw.distill.lambda_max=0,0.5", seeds="0,1,2")
    assert len(grid) == 3 * 2 * 3
    assert len({s.name for s in grid}) == len(grid)
    assert [s.seed for s in grid] == [0] * 6 + [1] * 6 + [2] * 6  # seed-major
    for s in grid:
        assert s.config.seed == s.seed
        assert (s.config.algorithm_kw.sketch.k, s.config.algorithm_kw.distill.lambda_max) == tuple(
            v for _, v in s.overrides)
        assert s.config.rounds == config.rounds  # everything else as given
    assert config.seed == 0 and config.algorithm_kw.sketch.k == 512  # the base config is untouched
    assert grid_of(config, seeds=None)[0].name == "default/seed0"


def test_seeds_parsing(config):
    assert sweep_grid.parse_seeds("3,1", 0) == [3, 1]
    assert sweep_grid.parse_seeds(None, 7) == [7]
    for bad in ("0,0", "a", "-1"):
        with pytest.raises(SweepError):
            sweep_grid.parse_seeds(bad, 0)


def test_run_names_are_deterministic_and_readable(config):
    specs = ["config.algorithm_kw.sketch.k=128,512", "config.algorithm_kw.distill.lambda_max=0,0.5",
             "config.algorithm_kw.taus=100:200;400"]
    names = [s.name for s in grid_of(config, *specs, seeds="0,1")]
    assert names == [s.name for s in grid_of(config, *specs, seeds="0,1")]
    assert names[0] == "sketch.k=128,distill.lambda_max=0.0,taus=100:200/seed0"  # without 'algorithm_kw.'
    assert names[-1] == "sketch.k=512,distill.lambda_max=0.5,taus=400/seed1"
    assert sweep_grid.format_value("a b/c") == "a_b_c" and sweep_grid.format_value(1e-5) == "1e-05"


def test_a_presets_algorithm_types_the_axes_and_a_switch_to_the_same_algorithm_keeps_the_config(dfedavg_config):
    """tiny runs DFedAvg; spark_ablations switches every setting to SPARK, so its axes address SPARK's keyword
    arguments; switching DFedAvg to DFedAvg keeps tiny's own values (local_epochs 1, batch_size 10)."""
    grid = grid_of(dfedavg_config, "config.algorithm_kw.sketch.k=16,32", preset="spark_ablations")
    assert {(s.config.algorithm, s.config.algorithm_kw.sketch.k) for s in grid} == {("spark", 16), ("spark", 32)}
    same = grid_of(dfedavg_config, "config.algorithm=dfedavg,dfedavgm")
    assert [(s.config.algorithm, s.config.algorithm_kw.local_epochs) for s in same] == [("dfedavg", 1),
                                                                                        ("dfedavgm", 20)]


def test_preset_spark_ablations_crossed_with_axes_and_seeds(config):
    grid = grid_of(config, "config.algorithm_kw.sketch.k=128,512", seeds="0,1", preset="spark_ablations")
    assert len(grid) == 5 * 2 * 2
    by_name = {s.name: s.config for s in grid}
    spark, no_sketch = by_name["spark,sketch.k=128/seed0"], by_name["no_sketch,sketch.k=512/seed1"]
    spark, no_sketch = spark.algorithm_kw, no_sketch.algorithm_kw
    assert (spark.sketch.enabled, spark.distill.lambda_max, spark.momentum.beta) == (True, 0.5, 0.9)
    assert (no_sketch.sketch.enabled, no_sketch.sketch.k, by_name["no_sketch,sketch.k=512/seed1"].seed) == (
        False, 512, 1)
    assert by_name["no_distill,sketch.k=128/seed0"].algorithm_kw.distill.lambda_max == 0.0
    assert by_name["no_momentum,sketch.k=128/seed0"].algorithm_kw.momentum.beta == 0.0
    ntk = by_name["ntk_dfl,sketch.k=128/seed1"].algorithm_kw
    assert (ntk.sketch.enabled, ntk.distill.lambda_max, ntk.momentum.beta) == (False, 0.0, 0.0)
    with pytest.raises(SweepError, match="already sets"):
        grid_of(config, "config.algorithm_kw.sketch.enabled=true,false", preset="spark_ablations")
    with pytest.raises(SweepError, match="unknown preset"):
        grid_of(config, preset="nope")


def test_every_preset_applies_to_the_base_config(config):
    for name in sweep_presets.PRESETS:
        assert len(grid_of(config, preset=name)) == len(sweep_presets.PRESETS[name].settings)


def test_compare_preset_covers_methods_alphas_topologies(dfedavg_config):
    from spark_jax import algorithms
    from spark_jax.runner.validation import validate_config

    grid = grid_of(dfedavg_config, preset="compare_fmnist")
    assert len(grid) == 7 * 3 * 2  # methods (SPARK, NTK-DFL and the five baselines) x alphas x topologies
    seen = {(r.config.algorithm, r.config.partition.alpha, r.config.topology.kind) for r in grid}
    assert seen == {(m, a, t) for m in sweep_presets.COMPARE_METHODS for a in (0.1, 0.3, 0.5)
                    for t in ("regular", "ring")}
    for r in grid:
        validate_config(r.config, algorithms.available())


# ---------------------------------------------------------------- running, resuming, failures


def fake_runner(calls, fail=()):
    """Writes a minimal run directory like spark_jax.runner.experiment.run; raises for settings in `fail`."""

    def run(cfg, workdir):
        calls.append(str(workdir))
        if any(f in str(workdir) for f in fail):
            raise RuntimeError("boom")
        rd = RunDir(workdir)
        rd.create()
        rd.write_config(cfg.to_dict())
        acc = 0.1 * cfg.algorithm_kw.local_epochs + 0.01 * cfg.seed
        rd.append_metrics({"round": 1, "test_accuracy": acc, "bytes_cumulative": 10})
        rd.write_summary({"final_test_accuracy": acc})
        return {"final_test_accuracy": acc}

    return run


def test_run_sweep_skips_done_and_redoes_interrupted(dfedavg_config, tmp_path):
    grid = grid_of(dfedavg_config, "config.algorithm_kw.local_epochs=1,2", seeds="0,1")
    calls, lines = [], []
    results = sweep_grid.run_sweep(grid, tmp_path, fake_runner(calls), log=lines.append)
    assert [r.status for r in results] == ["ran"] * 4 and len(calls) == 4 and len(lines) == 4
    assert lines[0].startswith("[1/4] local_epochs=1/seed0  ran  final accuracy 0.1000")
    # Interrupt one run: summary gone, a stray file left behind.
    interrupted = tmp_path / grid[1].name
    (interrupted / "summary.json").unlink()
    (interrupted / "partial.txt").write_text("x")
    calls.clear()
    results = sweep_grid.run_sweep(grid, tmp_path, fake_runner(calls), log=lines.append)
    assert [r.status for r in results] == ["done", "redone", "done", "done"]
    assert calls == [str(interrupted)] and not (interrupted / "partial.txt").exists()
    assert results[0].final_test_accuracy == pytest.approx(0.1)
    record = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["run_dir"] for r in record["runs"]] == [s.name for s in grid]
    assert record["settings"] == {"local_epochs=1": {"algorithm_kw.local_epochs": 1},
                                  "local_epochs=2": {"algorithm_kw.local_epochs": 2}}
    assert record["seeds"] == [0, 1] and {r["status"] for r in record["runs"]} == {"done", "redone"}


def test_run_sweep_resumes_an_interrupted_run_from_its_checkpoint(dfedavg_config, tmp_path):
    from spark_jax.runner import checkpoint

    grid = grid_of(dfedavg_config, "config.algorithm_kw.local_epochs=1,2")
    sweep_grid.run_sweep(grid, tmp_path, fake_runner([]), log=lambda s: None)
    interrupted = tmp_path / grid[0].name
    (interrupted / "summary.json").unlink()
    with checkpoint.open_manager(interrupted) as manager:
        checkpoint.save(manager, {"w": np.zeros((2, 3), np.float32)}, checkpoint.Progress(round=1))
    calls = []

    def runner(cfg, workdir, resume=False):
        calls.append((str(workdir), resume))
        assert (workdir / "config.json").exists()  # resumed in place, not removed
        RunDir(workdir).write_summary({"final_test_accuracy": 0.5})
        return {"final_test_accuracy": 0.5}

    results = sweep_grid.run_sweep(grid, tmp_path, runner, log=lambda s: None)
    assert [r.status for r in results] == ["resumed", "done"] and calls == [(str(interrupted), True)]
    assert "resumed" in sweep_grid.progress_line(0, 2, results[0])


def test_run_sweep_refuses_a_directory_of_another_config(dfedavg_config, tmp_path):
    grid = grid_of(dfedavg_config, "config.algorithm_kw.local_epochs=1,2")
    sweep_grid.run_sweep(grid, tmp_path, fake_runner([]), log=lambda s: None)
    other = grid_of(dfedavg_config, "config.algorithm_kw.local_epochs=1,2", "config.algorithm_kw.lr=0.1")
    assert sweep_grid.run_sweep(other, tmp_path, fake_runner([]), log=lambda s: None)  # new names: fine
    changed = dfedavg_config.copy_and_resolve_references()
    changed.rounds = 7
    with pytest.raises(SweepError, match="differs in rounds"):
        sweep_grid.run_sweep(grid_of(changed, "config.algorithm_kw.local_epochs=1,2"), tmp_path, fake_runner([]))


def test_failing_run_is_reported_and_the_sweep_continues(dfedavg_config, tmp_path):
    grid = grid_of(dfedavg_config, "config.algorithm_kw.local_epochs=1,2,3")
    calls, lines = [], []
    results = sweep_grid.run_sweep(grid, tmp_path, fake_runner(calls, fail=["=2"]), log=lines.append)
    assert [r.status for r in results] == ["ran", "failed", "ran"] and len(calls) == 3
    assert "failed  RuntimeError: boom" in lines[1] and "boom" in results[1].traceback
    record = json.loads((tmp_path / "sweep.json").read_text())
    assert record["runs"][1]["status"] == "failed" and record["runs"][1]["error"] == "RuntimeError: boom"
    calls.clear()  # a re-run retries only the failed one
    results = sweep_grid.run_sweep(grid, tmp_path, fake_runner(calls), log=lines.append)
    assert [r.status for r in results] == ["done", "ran", "done"]


def test_dry_run_listing(config, tmp_path):
    text = sweep_grid.format_grid(grid_of(config, "config.algorithm_kw.sketch.k=1,2", seeds="0,1"), tmp_path)
    assert text.splitlines()[0] == "4 runs (2 settings x 2 seeds)"
    assert "[1/4] sketch.k=1/seed0  [new]  algorithm_kw.sketch.k=1, seed=0" in text


# ---------------------------------------------------------------- reports on synthetic runs

ROUNDS = 6
BYTES_PER_ROUND = {1: 2_000_000, 2: 500_000_000}  # by local_epochs


def accuracy_curve(epochs, seed):
    return np.round(np.linspace(0.3, 0.6 + 0.15 * epochs, ROUNDS) + 0.02 * seed, 6)


def write_synthetic_runs(root, dfedavg_config):
    for epochs in (1, 2):
        for seed in (0, 1, 2):
            cfg = dfedavg_config.copy_and_resolve_references()
            cfg.algorithm_kw.local_epochs, cfg.seed = epochs, seed
            cfg.data.data_dir = f"/somewhere/{seed}"  # ignored key
            rd = RunDir(root / f"group{epochs}" / f"seed{seed}")
            rd.create()
            rd.write_config(cfg.to_dict())
            for r, acc in enumerate(accuracy_curve(epochs, seed)):
                rd.append_metrics({"round": r + 1, "test_accuracy": float(acc), "jacobian_bytes": 7 * epochs,
                                   "bytes_cumulative": (r + 1) * BYTES_PER_ROUND[epochs]})
            rd.write_summary({"final_test_accuracy": float(acc)})
    unfinished = RunDir(root / "unfinished")
    unfinished.create()
    unfinished.write_config(dfedavg_config.to_dict())
    unfinished.append_metrics({"round": 1, "test_accuracy": 0.9, "bytes_cumulative": 1})


def test_report_on_synthetic_runs(dfedavg_config, tmp_path):
    write_synthetic_runs(tmp_path, dfedavg_config)
    target = 0.7
    report = report_tables.write_report(tmp_path, target=target)
    rows = report["rows"]
    assert [r["setting"] for r in rows] == ["local_epochs=1", "local_epochs=2"]
    assert len(report["skipped"]) == 1
    for row, epochs in zip(rows, (1, 2)):
        curves = np.array([accuracy_curve(epochs, s) for s in (0, 1, 2)])
        assert row["n"] == 3 and row["seeds"] == "0 1 2"
        np.testing.assert_allclose(row["final_accuracy_mean"], curves[:, -1].mean())
        np.testing.assert_allclose(row["final_accuracy_std"], curves[:, -1].std(ddof=1))
        np.testing.assert_allclose(row["best_accuracy_mean"], curves.max(axis=1).mean())
        hits = [int(np.argmax(c >= target)) + 1 for c in curves if (c >= target).any()]
        assert row["reached"] == len(hits)
        np.testing.assert_allclose(row["rounds_to_target_mean"], np.mean(hits))
        np.testing.assert_allclose(row["rounds_to_target_std"], np.std(hits, ddof=1) if len(hits) > 1 else 0.0)
        np.testing.assert_allclose(row["bytes_to_target_mean"], np.mean(hits) * BYTES_PER_ROUND[epochs])
        assert row["jacobian_bytes_mean"] == 7 * epochs * ROUNDS
        assert row["bytes_total_mean"] == ROUNDS * BYTES_PER_ROUND[epochs]
    # Known values: epochs=1 curves (0.3 ... 0.75) + 0.02 * seed first reach 0.7 at rounds 6, 6, 5.
    assert rows[0]["rounds_to_target_mean"] == pytest.approx(17 / 3)
    out = tmp_path / "report"
    assert {p.name for p in out.iterdir()} == {"report.md", "report.csv", "accuracy_vs_round.png",
                                               "accuracy_vs_bytes.png"}
    for png in ("accuracy_vs_round.png", "accuracy_vs_bytes.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "| local_epochs=1 | 0 1 2 (3) |" in md and "(3/3)" in md and "3.00 GB" in md
    with open(out / "report.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 and float(table[1]["bytes_total_mean"]) == ROUNDS * BYTES_PER_ROUND[2]
    # A different target is read from metrics.jsonl, not summary.json.
    high = report_tables.write_report(tmp_path, out=tmp_path / "r2", target=0.91)["rows"]
    assert [r["reached"] for r in high] == [0, 2]  # epochs=2 ends at 0.90, 0.92, 0.94
    assert high[1]["rounds_to_target_mean"] == 6
    md = (tmp_path / "r2/report.md").read_text()
    assert "not reached (0/3)" in md and "6.0 ± 0.0 (2/3)" in md


def test_report_labels_and_fallbacks(dfedavg_config, tmp_path):
    write_synthetic_runs(tmp_path, dfedavg_config)
    (tmp_path / "group2" / "seed0" / "config.json").write_text("{}")  # corrupt: left out, named (issue 16)
    runs = [r for r in map(report_tables.load_run, report_tables.find_run_dirs(tmp_path)) if r.complete]
    labels = sorted(s.label for s in report_tables.group_settings(runs, tmp_path))
    assert labels == ["local_epochs=1", "local_epochs=2"]
    assert report_tables.load_run(tmp_path / "group2" / "seed0").problem.endswith(
        "config.json: not a run config (expected a JSON object with a 'config' object, got keys [])")
    assert report_tables.format_bytes(1.5e9) == "1.50 GB" and report_tables.format_bytes(2.5e6) == "2.50 MB"
    assert report_tables.default_target(runs) == dfedavg_config.eval.target_accuracy


def test_report_uses_the_sweeps_setting_names(dfedavg_config, tmp_path):
    write_synthetic_runs(tmp_path, dfedavg_config)
    runs_json = [{"run_dir": f"group{e}/seed{s}", "setting": name} for e, name in ((1, "short"), (2, "long"))
                 for s in (0, 1, 2)]
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": runs_json}))
    runs = [r for r in map(report_tables.load_run, report_tables.find_run_dirs(tmp_path)) if r.complete]
    assert [s.label for s in report_tables.group_settings(runs, tmp_path)] == ["short", "long"]


# ---------------------------------------------------------------- end to end (real data, real training)


@pytest.mark.slow
def test_sweep_and_report_end_to_end(real_data_dir, tmp_path):
    env = dict(os.environ, SPARK_JAX_DATA_DIR=real_data_dir, JAX_PLATFORMS="cpu")
    work = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "experiments.sweep", "--config=tiny", "--sweep=config.algorithm_kw.local_epochs=1,2",
           "--seeds=0", f"--workdir={work}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[2/2] local_epochs=2/seed0  ran  final accuracy" in proc.stdout
    for name in ("local_epochs=1/seed0", "local_epochs=2/seed0"):
        assert (work / name / "summary.json").exists()
    out = work / "report"  # written by the sweep itself (--report, the default); the CLI: test_fault_sweep_report
    assert proc.stdout.splitlines()[-1].startswith(f"report: {out / 'report.md'} (2 row(s); ")
    for f in ("report.md", "report.csv", "accuracy_vs_round.png", "accuracy_vs_bytes.png"):
        assert (out / f).stat().st_size > 0, f
    with open(out / "report.csv") as f:
        assert [r["setting"] for r in csv.DictReader(f)] == ["local_epochs=1", "local_epochs=2"]


def test_sweep_cli_rejects_unknown_fields_without_running(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.sweep", "--config=tiny", "--sweep=config.algorithm_kw.kk=1",
                           f"--workdir={tmp_path / 'w'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "algorithm_kw has no 'kk'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()
