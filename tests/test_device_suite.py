"""The GPU suite's --dry-run (all its steps at tiny sizes on CPU) and its missing-input errors."""

import json
import os
import re
import subprocess
import sys
import tarfile
import time

import pytest

from benchmarks import suite
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # minutes of subprocesses: in the full suite (CI), not in -m "not slow"


def _suite(args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "benchmarks.device_suite", *args], cwd=REPO,
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dry_run(real_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("suite") / "out"
    start = time.monotonic()
    # A budget no step hits: under a loaded machine (the suite's other worker) the default 170 s could skip
    # the last steps; that the budget skips steps is test_budget_skips_steps_that_would_not_fit's job.
    proc = _suite([str(out), "--dry-run", "--budget_s=900"], env={"SPARK_JAX_DATA_DIR": real_data_dir},
                  timeout=1000)
    return proc, out, time.monotonic() - start


def test_dry_run_runs_every_step_and_passes(dry_run):
    proc, out, seconds = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "suite.json").read_text())
    print(f"dry run: {seconds:.0f} s; " + "; ".join(f"{s['name']} {s['status']} {s['seconds']} s"
                                                     for s in summary["steps"]))
    assert [s["status"] for s in summary["steps"]] == ["ok"] * len(summary["steps"])
    assert summary["dry_run"] and len(summary["steps"]) == 7


def test_dry_run_writes_at_most_8_files_of_at_most_16_mib(dry_run):
    _, out, _ = dry_run
    files = list(out.iterdir())
    assert len(files) <= 8 and all(f.is_file() and f.stat().st_size <= 16 * 2**20 for f in files)
    assert {"suite.json", "tests.log", "benchmarks.log", "precision.json", "study.tar.gz", "report.md"} <= {
        f.name for f in files}


def test_dry_run_outputs_hold_the_measurements(dry_run):
    _, out, _ = dry_run
    tests = (out / "tests.log").read_text()
    assert re.search(r"\n(\d+) passed", tests) and "failed" not in tests
    bench = (out / "benchmarks.log").read_text()
    for phase in ("messages", "kernel", "evolution", "selection", "fused round", "peak memory"):
        assert phase in bench, phase
    assert bench.count("peak memory") == 3  # NTK-DFL, SPARK, the node_chunk variant
    precision = json.loads((out / "precision.json").read_text())
    assert set(precision["gflops"]) == {"float32", "tensorfloat32", "bfloat16", "default"}
    assert precision["relative_error"]["float32"] < 1e-5  # CPU: full float32
    with tarfile.open(out / "study.tar.gz") as tar:
        names = tar.getnames()
    runs = {n.split("/")[1] for n in names if n.endswith("summary.json") and n.count("/") == 3}
    assert runs == {"ntk_dfl", "spark", "spark_exact", "dfedavgm"}, names
    assert not any("checkpoints" in n for n in names)
    for setting in runs:
        metrics = [n for n in names if n.startswith(f"study/{setting}/") and n.endswith("metrics.jsonl")]
        assert len(metrics) == 1, (setting, names)
    assert "ntk_dfl" in (out / "report.md").read_text()


def test_missing_data_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _suite([str(tmp_path / "out"), "--dry-run", f"--data_dir={empty}"],
                  env={"SPARK_JAX_DATA_DIR": str(empty)}, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: no Fashion-MNIST IDX files")
    assert "data/fashion_mnist/" in lines[0] and not (tmp_path / "out").exists()


def test_missing_package_is_named():
    assert suite.missing_modules(("json", "no_such_module_spark_jax", "no_such_pkg.sub")) == [
        "no_such_module_spark_jax", "no_such_pkg.sub"]
    assert suite.missing_modules() == []  # this machine has everything the suite imports


def test_budget_skips_steps_that_would_not_fit(tmp_path):
    steps = [suite.Step("quick", ["json.tool", "--help"], 10, "benchmarks"),
             suite.Step("never", ["json.tool", "--help"], 50, "benchmarks")]
    suite.run_steps(steps, tmp_path, budget_s=15, env=dict(os.environ), echo=lambda m: None)
    assert [s.status for s in steps] == ["ok", "skipped (budget)"]
    assert "===== quick" in (tmp_path / "benchmarks.log").read_text()
