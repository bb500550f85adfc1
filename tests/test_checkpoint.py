"""Runs that survive: kill-and-resume equals uninterrupted, bit-reproducibility, the NaN guard.

The runs are SPARK on a tiny MLP (8 nodes, hidden width 8, sketch k = 16,
Euler evolution), stage 3 (Nesterov momentum) from round 3, so checkpoints
hold velocities as well as parameters. About a minute on 2 CPU cores.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spark_jax import algorithms
from spark_jax.runner import checkpoint, experiment
from spark_jax.guard import NonFiniteError
from spark_jax.runner.run_io import read_metrics
from tests.conftest import REPO, cpu_split_env, without_compile_cache

ROUNDS = 10  # the kill comes within ~10 ms of checkpoint 4, rounds 5-10 take >= 0.5 s
SPARK = ["--config=tiny", "--config.algorithm=spark", "--config.model.hidden=(8,)", "--config.algorithm_kw.taus=(10,20)",
         "--config.algorithm_kw.evolution.integrator=euler", "--config.algorithm_kw.sketch.k=16",
         "--config.algorithm_kw.stages.unit=round", "--config.algorithm_kw.stages.boundaries=(1.0,2.0)",
         f"--config.rounds={ROUNDS}", "--config.checkpoint_every=2"]
TIMING = ("round_time", "wall_time")


def _cmd(args, workdir):
    return [sys.executable, "-m", "experiments.run", *args, f"--workdir={workdir}"]


def _env(data_dir):  # the CPU split as users run it: checkpoints saved from several devices, read on one here
    return dict(cpu_split_env(os.environ), SPARK_JAX_DATA_DIR=data_dir, JAX_PLATFORMS="cpu")


def run_cli(args, workdir, data_dir):
    return subprocess.run(_cmd(args, workdir), cwd=REPO, env=_env(data_dir), capture_output=True, text=True,
                          timeout=300)


def cli_config(data_dir):
    """The config SPARK's flags give, built in-process."""
    from experiments.configs import tiny

    from spark_jax import algorithms

    c = algorithms.with_algorithm(tiny.get_config(), "spark")
    c.data.data_dir, c.model.hidden, c.rounds, c.checkpoint_every = data_dir, (8,), ROUNDS, 2
    kw = c.algorithm_kw
    kw.taus, kw.evolution.integrator, kw.sketch.k = (10, 20), "euler", 16
    kw.stages.unit, kw.stages.boundaries = "round", (1.0, 2.0)
    return c


def metrics_without_timing(workdir):
    return [{k: v for k, v in rec.items() if k not in TIMING} for rec in read_metrics(workdir)]


def final_state(workdir):
    """Leaves of the final checkpoint's state (params and velocity) as NumPy arrays, with their paths."""
    step = checkpoint.latest_step(workdir)
    assert step == ROUNDS, checkpoint.complete_steps(workdir)
    state, progress = checkpoint.restore(workdir, step)
    assert progress.round == ROUNDS
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"{k} differs"


@pytest.fixture(scope="module")
def uninterrupted(real_data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ckpt") / "uninterrupted"
    proc = run_cli(SPARK, workdir, real_data_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return workdir


@pytest.mark.slow
def test_a_run_under_no_plots_draws_no_png(uninterrupted):
    """The suite runs with SPARK_JAX_NO_PLOTS=1 (tests/conftest.py): everything else is written."""
    assert os.environ["SPARK_JAX_NO_PLOTS"] == "1"
    assert not list(uninterrupted.glob("*.png"))
    written = {p.name for p in uninterrupted.iterdir()}
    assert {"config.json", "metrics.jsonl", "summary.json", "partition.txt"} <= written


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(uninterrupted, real_data_dir, tmp_path):
    workdir = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(SPARK, workdir), cwd=REPO, env=without_compile_cache(_env(real_data_dir)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while checkpoint.latest_step(workdir) is None or checkpoint.latest_step(workdir) < 4:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (workdir / "summary.json").exists(), "killed too late: the run had finished"
    killed_at = checkpoint.latest_step(workdir)
    assert 4 <= killed_at < ROUNDS
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) >= killed_at

    # Re-running without --resume refuses (and names --resume; CLI: test_validation_table); with it, it continues.
    with pytest.raises(FileExistsError, match="pass --resume"):
        experiment.run(cli_config(real_data_dir), workdir)
    proc = run_cli([*SPARK, "--resume"], workdir, real_data_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]

    resumed = metrics_without_timing(workdir)
    assert [r["round"] for r in resumed] == list(range(1, ROUNDS + 1))
    assert resumed == metrics_without_timing(uninterrupted)
    assert resumed[-1]["beta"] > 0  # the checkpoints held a non-zero velocity
    a, b = final_state(workdir), final_state(uninterrupted)
    assert_same_state(a, b)
    assert any("velocity" in k and np.any(v != 0) for k, v in a.items())
    assert checkpoint.complete_steps(workdir) == [ROUNDS]  # a finished run keeps its final state only
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["final_test_accuracy"] == resumed[-1]["test_accuracy"]

    # A finished run re-run with --resume only says so (before loading any data), and changes nothing.
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
    assert experiment.run(cli_config(real_data_dir), workdir, resume=True)["run_status"] == "already finished"
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


@pytest.mark.slow
def test_same_seed_identical_other_seed_different(uninterrupted, real_data_dir, tmp_path):
    proc = run_cli(SPARK, tmp_path / "again", real_data_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert metrics_without_timing(tmp_path / "again") == metrics_without_timing(uninterrupted)
    assert_same_state(final_state(tmp_path / "again"), final_state(uninterrupted))
    proc = run_cli([*SPARK, "--config.seed=1"], tmp_path / "seed1", real_data_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    other = metrics_without_timing(tmp_path / "seed1")
    base = metrics_without_timing(uninterrupted)
    assert [r["test_accuracy"] for r in other] != [r["test_accuracy"] for r in base]
    assert [r["consensus_distance"] for r in other] != [r["consensus_distance"] for r in base]


@pytest.mark.slow
def test_config_records_versions_and_flags(uninterrupted):
    env = json.loads((uninterrupted / "config.json").read_text())["environment"]
    assert env["jax"] == jax.__version__ and env["jaxlib"] and env["device_kind"]
    assert "XLA_FLAGS" in env and env["jax_flags"]["jax_enable_x64"] is False
    assert {"jax_default_matmul_precision", "jax_threefry_partitionable"} <= env["jax_flags"].keys()


@pytest.mark.slow
def test_nan_guard_cli_stops_at_the_first_bad_round(real_data_dir, tmp_path):
    # eta0 = 1e30: round 1's parameters stay finite but its train loss and consensus distance do not
    # (issue 16: every value a round writes is checked), so nothing is committed.
    workdir = tmp_path / "nan"
    proc = run_cli([*SPARK, "--config.algorithm_kw.eta0=1e30", "--config.checkpoint_every=1"], workdir, real_data_dir)
    assert proc.returncode == 1
    assert ("error: round 1: non-finite metrics (consensus_distance=inf, neighbourhood_loss=nan, train_loss=nan); "
            "no round completed") in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not workdir.exists()


def _nan_at(round_fn, round_index: int, node: int):
    """`round_fn` whose committed params get a NaN at `node` in round `round_index` (0-based)."""

    def wrapped(state, node_data, inputs):
        state, out = round_fn(state, node_data, inputs)
        hit = (inputs.round_index == round_index) & (jnp.arange(state.params["Dense_0"]["bias"].shape[0]) == node)
        bias = state.params["Dense_0"]["bias"]
        params = {**state.params, "Dense_0": {**state.params["Dense_0"],
                                              "bias": jnp.where(hit[:, None], jnp.nan, bias)}}
        return state.replace(params=params), out

    return wrapped


@pytest.mark.slow
def test_nan_guard_names_the_node_and_the_previous_checkpoint_loads(real_data_dir, tmp_path, monkeypatch):
    from experiments.configs import tiny

    config = tiny.get_config()
    config.data.data_dir = real_data_dir
    config.rounds, config.checkpoint_every = 4, 1
    make = algorithms.make_algorithm

    def make_with_nan(*args, **kwargs):
        alg = make(*args, **kwargs)
        return alg._replace(round=_nan_at(alg.round, 2, 5))

    monkeypatch.setattr(algorithms, "make_algorithm", make_with_nan)
    with pytest.raises(NonFiniteError, match=r"round 3: non-finite parameters/state at node\(s\) 5 \(1 of 8"):
        experiment.run(config, tmp_path / "run")
    assert [r["round"] for r in read_metrics(tmp_path / "run")] == [1, 2]
    assert checkpoint.latest_step(tmp_path / "run") == 2
    state, progress = checkpoint.restore(tmp_path / "run", 2)
    assert progress.round == 2 and [r["round"] for r in progress.history] == [1, 2]
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))


def test_temp_dirs_of_a_failed_save_are_removed_while_a_writer_recreates_them(tmp_path):
    """A writer thread that keeps re-creating its file's directory for 0.4 s after the save raised: the
    cleanup outlasts it and leaves nothing; the next step's and other files are untouched."""
    import threading  # pylint: disable=g-import-not-at-top

    step_dir = tmp_path / "3"
    tmp = tmp_path / "3.orbax-checkpoint-tmp-123" / "state"
    keep = [tmp_path / "2", tmp_path / "4.orbax-checkpoint-tmp-9"]
    for p in keep + [tmp]:
        p.mkdir(parents=True)
    stop = time.monotonic() + 0.4
    recreated = []

    def writer():
        while time.monotonic() < stop:
            if not tmp.exists():
                tmp.mkdir(parents=True, exist_ok=True)
                (tmp / "chunk").write_bytes(b"x")
                recreated.append(1)
            time.sleep(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert checkpoint._remove_temp_dirs(step_dir, quiet_s=0.2, limit_s=5.0)
    finally:
        thread.join()
    assert recreated, "the writer never re-created the directory: the test did not exercise the race"
    assert not list(tmp_path.glob("3.orbax-checkpoint-tmp*"))
    assert all(p.exists() for p in keep)


def test_a_temp_dir_that_cannot_be_removed_ends_the_cleanup_at_once(tmp_path, monkeypatch):
    import errno  # pylint: disable=g-import-not-at-top

    (tmp_path / "5.orbax-checkpoint-tmp").mkdir()
    def refuse(path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(checkpoint.shutil, "rmtree", refuse)
    t0 = time.monotonic()
    assert not checkpoint._remove_temp_dirs(tmp_path / "5", quiet_s=0.2, limit_s=5.0)
    assert time.monotonic() - t0 < 1.0
