"""The runner end to end (real data, tiny config) and its bad-input errors."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, cpu_split_env
from tests.test_run_summary import read_events


def run_cli(args, data_dir, tmp_path, plots=False):
    env = dict(cpu_split_env(os.environ), SPARK_JAX_DATA_DIR=data_dir, JAX_PLATFORMS="cpu",  # the default split
               SPARK_JAX_NO_PLOTS="0" if plots else "1")
    return subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_tiny_run_writes_its_files(real_data_dir, tmp_path):
    workdir = tmp_path / "run"
    proc = run_cli(["--config=tiny", f"--workdir={workdir}", "--config.rounds=3", "--config.log.tensorboard=True"],
                   real_data_dir, tmp_path, plots=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {"config.json", "metrics.jsonl", "summary.json", "partition.txt", "label_histogram.png", "curves.png",
            "tensorboard"} <= {p.name for p in workdir.iterdir()}
    out = proc.stdout.splitlines()  # the closing summary (spark_jax/runner/run_summary.py)
    assert out[-6].startswith("tiny: final aggregated test accuracy ") and out[-6].endswith(f"run directory {workdir}")
    assert out[-2:] == [f"  curves: {workdir / 'curves.png'}", f"  report: python -m experiments.report {workdir}"]
    (events,) = (workdir / "tensorboard").glob("events.out.tfevents.*")
    assert [e["step"] for e in read_events(events)] == [0, 1, 2, 3]
    config = json.loads((workdir / "config.json").read_text())
    assert config["config"]["rounds"] == 3 and config["environment"]["jax"]
    from spark_jax.parallel import cpu_device_count  # pylint: disable=g-import-not-at-top
    assert len(config["environment"]["devices"]) == cpu_device_count(0)  # the CPU split, one device per core
    lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [l["round"] for l in lines] == [1, 2, 3]
    for l in lines:
        for key in ("test_accuracy", "node_accuracy_mean", "node_accuracy_std", "node_accuracy_min",
                    "train_loss", "bytes_round", "wall_time"):
            assert key in l, key
        assert 0.0 <= l["test_accuracy"] <= 1.0
    # 8 nodes on a ring: 16 directed edges, each carrying d float32 weights.
    assert lines[0]["bytes_round"] == 16 * 79_510 * 4
    assert lines[-1]["bytes_cumulative"] == 3 * 16 * 79_510 * 4
    assert lines[-1]["test_accuracy"] > 0.2  # chance is 0.1
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["final_test_accuracy"] == lines[-1]["test_accuracy"]
    assert summary["rounds"] == 3


BAD_INPUTS = [
    (["--config=no_such_config"], "unknown config 'no_such_config'"),
    (["--config=tiny", "--config.partition.no_such_key=1"], "no_such_key"),
    (["--config=tiny", "--config.rounds=abc"], "--config.rounds=abc"),
    (["--config=tiny", "--config.partition.alpha=0.0"], "alpha"),
    (["--config=tiny", "--config.partition.alpha=-1.0"], "alpha"),
    (["--config=tiny", "--config.rounds=0"], "rounds"),
    (["--config=tiny", "--config.parallel.cpu_devices=-1"], "error: parallel.cpu_devices=-1 must be an integer >= 0"),
    (["--config=tiny", "--config.partition.num_nodes=7", "--config.topology.kind=regular",
      "--config.topology.degree=3"], "even"),
    (["--config=tiny", "--config.topology.kind=regular", "--config.topology.degree=8"], "degree"),
    (["--config=tiny", "--config.partition.kind=iid", "--config.partition.num_nodes=70000"], "samples"),
    (["--config=tiny", "--config.topology.kind=star"], "topology.kind"),
    (["--config=tiny", "--config.algorithm=nope"], "algorithm"),
    (["--config=tiny", "--data_dir=/nonexistent/spark_jax_data"], "apt-get install dataset-fashion-mnist"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[" ".join(a[1:]) or a[0] for a, _ in BAD_INPUTS])
def test_bad_input_fails_cleanly(args, message, real_data_dir, tmp_path):
    workdir = tmp_path / "run"
    proc = run_cli([*args, f"--workdir={workdir}"], real_data_dir, tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not workdir.exists()


def test_runs_started_before_a_field_was_added_still_resume():
    from spark_jax.runner.run_io import config_differences  # pylint: disable=g-import-not-at-top
    old = {"algorithm": "ntk_dfl", "algorithm_kw": {"eta0": 0.01}}

    def new(eta0=0.01, precision="float32"):
        return {"algorithm": "ntk_dfl", "algorithm_kw": {"eta0": eta0, "compute": {"matmul_precision": precision}}}

    assert config_differences(old, new()) == []
    assert config_differences(old, new(precision="highest")) == ["algorithm_kw.compute.matmul_precision"]
    assert config_differences(old, new(eta0=0.02)) == ["algorithm_kw.eta0"]
    # the layout before 2026-12-01: one section per part of the method, the ones NTK-DFL does not read dropped
    older = {"algorithm": "ntk_dfl", "ntk": {"eta0": 0.01}, "sketch": {"k": 3}, "dfedavg": {"lr": 0.5}}
    assert config_differences(older, new()) == []
    assert config_differences(older, new(eta0=0.02)) == ["algorithm_kw.eta0"]


def test_a_committed_run_record_of_the_old_layout_still_resumes():
    """docs/results' run records predate `config.algorithm_kw` (and the `dispfl` section): they hold one
    section per part of the NTK methods and one per baseline. Read in today's layout
    (`run_io.current_layout`), their algorithm's values move under `algorithm_kw.` and the sections it does
    not read drop out, so they compare equal to today's config; the run's own fields still count."""
    from experiments.configs import fmnist_regular  # pylint: disable=g-import-not-at-top
    from spark_jax import algorithms  # pylint: disable=g-import-not-at-top
    from spark_jax.runner.run_io import config_differences  # pylint: disable=g-import-not-at-top
    record = REPO / "docs" / "results" / "readings_cpu" / "core" / "spark_v1,alpha=0.1" / "seed0" / "config.json"
    old = json.loads(record.read_text())["config"]
    assert "dispfl" not in old and "algorithm_kw" not in old and old["sketch"]["k"] == 512
    config = fmnist_regular.get_config("study")
    new = json.loads(config.to_json())
    assert config_differences(old, new) == []
    new["algorithm_kw"]["sketch"]["k"] += 1
    assert config_differences(old, new) == ["algorithm_kw.sketch.k"]
    dfedavg_run = {**old, "algorithm": "dfedavg"}  # a run of dfedavg reads its own section, as algorithm_kw
    dfedavg_now = json.loads(algorithms.with_algorithm(config, "dfedavg").to_json())
    assert config_differences(dfedavg_run, dfedavg_now) == []
    dfedavg_now["algorithm_kw"]["lr"] += 0.1
    assert config_differences(dfedavg_run, dfedavg_now) == ["algorithm_kw.lr"]
