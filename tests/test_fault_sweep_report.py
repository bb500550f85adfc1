"""Family 9 of issue 16: a damaged run directory never crashes a sweep or a report, nor joins a table.

Reports: each damaged file of one run (config.json, metrics.jsonl,
summary.json) leaves that run out of every row, names it with the file, line
and fault, and counts it; the other runs' rows are unchanged; the run
directories are not touched. Sweeps: a corrupt summary.json of a finished run
is reported as that run's failure and the sweep goes on.
"""

import json
import pathlib

import pytest

from experiments.configs import tiny
from spark_jax.lab import report_tables, sweep_grid
from tests.faults import assert_one_line_error, run_cli, snapshot
from tests.test_sweep_report import fake_runner, write_synthetic_runs

VICTIM = pathlib.Path("group1") / "seed1"


@pytest.fixture
def config():
    c = tiny.get_config()
    c.lock()
    return c


def _lines(path):
    return path.read_text().splitlines(keepends=True)


def _edit_metrics(edit):
    def damage(run):
        path = run / "metrics.jsonl"
        path.write_text("".join(edit(_lines(path))))
    return damage


def _write(name, data: bytes):
    return lambda run: (run / name).write_bytes(data)


# (id, damage to VICTIM, the fault named after the file)
DAMAGE = [
    ("config-empty-object", _write("config.json", b"{}"),
     "config.json: not a run config (expected a JSON object with a 'config' object, got keys [])"),
    ("config-list", _write("config.json", b"[1]"), "config.json: not a run config (expected a JSON object, got list)"),
    ("config-truncated", _write("config.json", b'{"config": {"seed": 1'), "config.json: not valid JSON ("),
    ("config-binary", _write("config.json", b"\x00\xff"), "config.json: not UTF-8 text"),
    ("metrics-truncated-line", _edit_metrics(lambda ls: ls[:-1] + [ls[-1][:30]]),
     "metrics.jsonl: line 6: not a JSON object (b'{\"bytes_cumulative\": 12000000,')"),
    ("metrics-duplicated-rounds", _edit_metrics(lambda ls: [l for l in ls for _ in (0, 1)]),
     "metrics.jsonl: line 2: duplicated round 1 (expected round 2)"),
    ("metrics-interleaved", _edit_metrics(lambda ls: ls[:3] + ls[:3] + ls[3:]),
     "metrics.jsonl: line 4: duplicated round 1 (expected round 4)"),
    ("metrics-missing-round", _edit_metrics(lambda ls: ls[:4] + ls[5:]),
     "metrics.jsonl: line 5: unexpected round 6 (expected round 5)"),
    ("metrics-list-line", _edit_metrics(lambda ls: ls[:2] + ["[1, 2]\n"] + ls[2:]),
     "metrics.jsonl: line 3: not a JSON object (b'[1, 2]\\n')"),
    ("metrics-no-accuracy", _edit_metrics(lambda ls: ls[:1] + ['{"round": 2, "bytes_cumulative": 5}\n'] + ls[2:]),
     "metrics.jsonl: line 2: test_accuracy missing or not a finite number"),
    ("metrics-nan-accuracy", _edit_metrics(
        lambda ls: ls[:1] + ['{"round": 2, "test_accuracy": NaN, "bytes_cumulative": 5}\n'] + ls[2:]),
     "metrics.jsonl: line 2: test_accuracy missing or not a finite number"),
    ("metrics-binary-line",
     _write("metrics.jsonl", b'{"round": 1, "test_accuracy": 0.5, "bytes_cumulative": 1}\n\xff\xfe\n'),
     "metrics.jsonl: line 2: not a JSON object"),
    ("summary-list", _write("summary.json", b"[]"),
     "summary.json: not a run summary (expected a JSON object, got list)"),
    ("summary-truncated", _write("summary.json", b'{"final_test_accuracy": '), "summary.json: not valid JSON ("),
]


@pytest.mark.parametrize("damage,fault", [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_report_skips_and_names_a_damaged_run(damage, fault, config, tmp_path):
    root = tmp_path / "runs"
    write_synthetic_runs(root, config)
    clean = report_tables.write_report(root, out=tmp_path / "clean", target=0.7)
    damage(root / VICTIM)
    before = snapshot(root)
    report = report_tables.write_report(root, out=tmp_path / "report", target=0.7)
    problems = [r.problem for r in report["corrupt"]]
    assert len(problems) == 1 and problems[0].startswith(f"{root / VICTIM}/{fault}"), problems
    rows = report["rows"]
    assert [r["setting"] for r in rows] == [r["setting"] for r in clean["rows"]]  # no bogus setting
    assert [(r["n"], r["seeds"]) for r in rows] == [(2, "0 2"), (3, "0 1 2")]
    assert rows[1] == clean["rows"][1]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Skipped 1 corrupt run(s):" in md and f"- {report['corrupt'][0].problem}" in md
    assert snapshot(root) == before  # the report changes no run file


@pytest.mark.slow  # 5-15 s (2026-12-02): in the full suite, not the fast loop
def test_report_cli_names_the_damaged_run(config, tmp_path):
    root = tmp_path / "runs"
    write_synthetic_runs(root, config)
    _edit_metrics(lambda ls: [l for l in ls for _ in (0, 1)])(root / VICTIM)
    proc = run_cli("report", [str(root), "--target=0.7"], "")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (f"skipped 1 corrupt run(s):\n  {root / VICTIM}/metrics.jsonl: line 2: duplicated round 1 (expected "
            "round 2)\n") in proc.stdout


def test_report_of_only_damaged_runs_is_one_line(config, tmp_path):
    root = tmp_path / "runs"
    (root / "a").mkdir(parents=True)
    (root / "a" / "config.json").write_text("[]")
    (root / "a" / "metrics.jsonl").write_text("")
    proc = run_cli("report", [str(root)], "")
    assert_one_line_error(proc, f"no finished run directories (config.json + metrics.jsonl + summary.json) under "
                                f"{root} (1 corrupt: {root}/a/config.json: not a run config (expected a JSON "
                                "object, got list))")
    assert not (root / "report").exists()


# ---------------------------------------------------------------- sweeps

SWEEP_DAMAGE = [
    ("summary-list", b"[]", "summary.json: not a run summary (expected a JSON object, got list)"),
    ("summary-truncated", b'{"final_test_accuracy": 0.', "summary.json: not valid JSON ("),
    ("summary-empty", b"", "summary.json: not valid JSON (Expecting value at line 1 column 1)"),
]


@pytest.mark.parametrize("data,fault", [d[1:] for d in SWEEP_DAMAGE], ids=[d[0] for d in SWEEP_DAMAGE])
def test_sweep_reports_a_corrupt_summary_and_goes_on(data, fault, config, tmp_path):
    grid = sweep_grid.build_grid(config, ["config.algorithm_kw.local_epochs=1,2,3"])
    sweep_grid.run_sweep(grid, tmp_path, fake_runner([]), log=lambda s: None)
    victim = tmp_path / grid[1].name / "summary.json"
    victim.write_bytes(data)
    before = snapshot(tmp_path / grid[1].name)
    lines = []
    results = sweep_grid.run_sweep(grid, tmp_path, fake_runner([]), log=lines.append)
    assert [r.status for r in results] == ["done", "failed", "done"]
    assert results[1].error.startswith(f"CorruptFileError: {victim}: {fault.split(': ', 1)[1]}"), results[1].error
    assert f"failed  CorruptFileError: {victim}" in lines[1]
    assert json.loads((tmp_path / "sweep.json").read_text())["runs"][1]["status"] == "failed"
    assert snapshot(tmp_path / grid[1].name) == before


def test_sweep_redoes_a_run_whose_config_json_has_the_wrong_shape(config, tmp_path):
    grid = sweep_grid.build_grid(config, ["config.algorithm_kw.local_epochs=1,2"])
    bad = tmp_path / grid[0].name
    bad.mkdir(parents=True)
    (bad / "config.json").write_text("[]")  # was: TypeError, the whole sweep aborted
    calls = []
    results = sweep_grid.run_sweep(grid, tmp_path, fake_runner(calls), log=lambda s: None)
    assert [r.status for r in results] == ["redone", "ran"] and calls == [str(bad), str(tmp_path / grid[1].name)]


@pytest.mark.slow  # 5-15 s (2026-12-02): in the full suite, not the fast loop
def test_sweep_cli_with_a_corrupt_summary_is_one_line(config, tmp_path):
    workdir = tmp_path / "sweep"
    grid = sweep_grid.build_grid(config, ["config.algorithm_kw.local_epochs=1,2"])
    sweep_grid.run_sweep(grid, workdir, fake_runner([]), log=lambda s: None)
    (workdir / grid[0].name / "summary.json").write_text("[]")
    proc = run_cli("sweep", ["--config=tiny", "--sweep=config.algorithm_kw.local_epochs=1,2", f"--workdir={workdir}"], "")
    assert_one_line_error(proc, f"1 of 2 runs failed: {grid[0].name}")
    assert f"failed  CorruptFileError: {workdir / grid[0].name}/summary.json: not a run summary" in proc.stdout
