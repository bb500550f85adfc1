"""Family 7 of issue 16: SIGINT and SIGTERM are one line saying how to resume, never a traceback.

A real process gets SIGINT once it has written a round; it must exit 130
with `error: interrupted at round r; resume with ... --resume`, leave
metrics.jsonl ending with a whole line, and the printed command must finish
the run from its last checkpoint. SIGTERM does the same with exit status 143
(`spark_jax.runner.run_signals`); in the first round it removes the new run
directory so that a plain rerun works; in a sweep it stops the sweep, which
the same command resumes.
"""

import gc
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from spark_jax.runner import checkpoint
from tests.conftest import REPO, without_compile_cache
from tests.faults import assert_nothing_half_written, assert_one_line_error, cli_env, run_cli


@pytest.mark.slow
def test_sigint_during_the_rounds_says_how_to_resume(real_data_dir, tmp_path):
    workdir = tmp_path / "run"
    args = ["--config=tiny", "--config.rounds=12", "--config.checkpoint_every=2", f"--workdir={workdir}"]
    proc = subprocess.Popen([sys.executable, "-m", "experiments.run", *args], cwd=REPO,
                            env=without_compile_cache(cli_env(real_data_dir)),  # signalled (tests/conftest.py)
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (workdir / "metrics.jsonl").exists() or not (workdir / "metrics.jsonl").stat().st_size:
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    line = assert_one_line_error(done, "error: interrupted at round ", status=130)
    rounds = [json.loads(l)["round"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == list(range(1, len(rounds) + 1)) and int(line.split()[4].rstrip(";")) == len(rounds) + 1
    command = line.split("resume with ", 1)[1]
    assert command.startswith("python -m experiments.run ") and command.endswith(f"--workdir={workdir} --resume")
    assert_nothing_half_written(workdir)
    resumed = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=REPO, env=cli_env(real_data_dir),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rounds = [json.loads(l)["round"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == list(range(1, 13)) and (workdir / "summary.json").exists()


def test_sigint_during_a_checkpoint_save_is_delivered_after_it(tmp_path):
    """Ctrl-C while orbax writes a step: the step completes (no temp directory), then KeyboardInterrupt."""
    state = {"params": jnp.arange(6.0).reshape(2, 3)}
    with checkpoint.open_manager(tmp_path) as manager:
        save = manager.save

        def interrupted_save(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the step is being written
            time.sleep(0.01)
            return save(*args, **kwargs)

        manager.save = interrupted_save
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save(manager, state, checkpoint.Progress(round=1, history=[{"round": 1}]))
    assert checkpoint.complete_steps(tmp_path) == [1]
    assert_nothing_half_written(tmp_path)
    restored, progress = checkpoint.restore(tmp_path, 1, like=state)
    np.testing.assert_array_equal(restored["params"], state["params"])
    assert progress.round == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ---------------------------------------------------------------- SIGTERM (run_signals)


def _start(module: str, args: list[str], data_dir: str) -> subprocess.Popen:
    """A process this test signals: without the shared compilation cache (tests/conftest.py)."""
    return subprocess.Popen([sys.executable, "-m", f"experiments.{module}", *args], cwd=REPO,
                            env=without_compile_cache(cli_env(data_dir)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _signal_when(proc: subprocess.Popen, ready, signum: int, timeout: float = 120):
    """Sends `signum` once ready() holds; returns the finished CompletedProcess."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, ("not ready", proc.communicate()[1][-3000:])
        time.sleep(0.02)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _rounds(workdir) -> list[int]:
    return [json.loads(l)["round"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sigterm_before_the_first_round_leaves_nothing_then_during_the_rounds_says_how_to_resume(real_data_dir,
                                                                                                 tmp_path):
    workdir = tmp_path / "run"
    args = ["--config=tiny", "--config.rounds=8", "--config.checkpoint_every=2", f"--workdir={workdir}"]
    # In round 1 (config.json written, the round compiling): the new directory is removed, exit 143.
    done = _signal_when(_start("run", args, real_data_dir), (workdir / "config.json").exists, signal.SIGTERM)
    assert_one_line_error(done, "error: terminated before the first round completed; nothing was kept "
                          "(rerun the same command)", status=143)
    assert not workdir.exists()
    # The plain rerun works; SIGTERM once it has written rounds: one line with the command that resumes it.
    metrics = workdir / "metrics.jsonl"
    done = _signal_when(_start("run", args, real_data_dir),
                        lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, signal.SIGTERM)
    line = assert_one_line_error(done, "error: terminated at round ", status=143)
    rounds = _rounds(workdir)
    assert rounds == list(range(1, len(rounds) + 1)) and int(line.split()[4].rstrip(";")) == len(rounds) + 1
    assert len(rounds) < 8 and not (workdir / "summary.json").exists()
    assert_nothing_half_written(workdir)
    command = line.split("resume with ", 1)[1]
    assert command.endswith(f"--workdir={workdir} --resume")
    resumed = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=REPO, env=cli_env(real_data_dir),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _rounds(workdir) == list(range(1, 9)) and (workdir / "summary.json").exists()


@pytest.mark.slow  # two sweep processes (~20 s); test_sweep_stops_on_an_interrupted_run_and_records_it is the fast check
def test_sigterm_stops_a_sweep_resumably(real_data_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["--config=tiny", "--config.rounds=3", "--config.checkpoint_every=1", "--seeds=0,1",
            f"--workdir={sweep_dir}"]
    first = sweep_dir / "default" / "seed0" / "metrics.jsonl"
    done = _signal_when(_start("sweep", args, real_data_dir), lambda: first.exists() and first.stat().st_size,
                        signal.SIGTERM)
    line = assert_one_line_error(done, "error: sweep terminated in run default/seed0", status=143)
    assert line.endswith("; resume with python -m experiments.sweep " + " ".join(args))
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert [r["status"] for r in record["runs"]] in (["interrupted", "new"], ["ran", "new"])
    assert_nothing_half_written(sweep_dir)
    again = run_cli("sweep", args, real_data_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2/2 runs finished" in again.stdout
    for seed in (0, 1):
        assert _rounds(sweep_dir / "default" / f"seed{seed}") == [1, 2, 3]


def test_a_signal_swallowed_in_a_gc_callback_is_raised_at_the_next_check():
    """Python ignores an exception raised in a gc callback: the handler only records it there."""
    from spark_jax.runner import run_signals

    raised = []

    def callback(phase, info):
        if phase == "start" and not raised:
            try:
                run_signals._raise(signal.SIGTERM, sys._getframe())  # as if SIGTERM arrived here
                raised.append(False)
            except KeyboardInterrupt:
                raised.append(True)

    with run_signals.stop_signals_raise():
        gc.callbacks.append(callback)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(callback)
        assert raised == [False]
        with pytest.raises(run_signals.Terminated):
            run_signals.raise_pending()
    run_signals.raise_pending()  # cleared on leaving the block
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sweep_stops_on_an_interrupted_run_and_records_it(tmp_path):
    from experiments.configs import tiny
    from spark_jax.lab import sweep_grid
    from spark_jax.runner import run_signals

    config = tiny.get_config()
    grid = sweep_grid.build_grid(config, ["config.algorithm_kw.local_epochs=1,2"], "0")
    calls = []

    def runner(cfg, workdir, resume=False):
        calls.append(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text("{}")
        raise run_signals.Interrupted(2, workdir, signal.SIGTERM)

    with pytest.raises(run_signals.SweepInterrupted) as e:
        sweep_grid.run_sweep(grid, tmp_path, runner, log=lambda s: None)
    assert e.value.run_name == grid[0].name and e.value.signum == signal.SIGTERM and len(calls) == 1
    assert run_signals.exit_status(e.value) == 143
    assert run_signals.sweep_stop_line(e.value, "CMD") == (
        f"error: sweep terminated in run {grid[0].name} at round 2; resume with CMD")
    record = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["status"] for r in record["runs"]] == ["interrupted", "new"]
    assert not (tmp_path / ".lock").exists()


def test_sigint_during_a_metrics_append_keeps_the_whole_line(tmp_path, monkeypatch):
    """Ctrl-C while a round's line is fsynced: the line stays (the round ran), then KeyboardInterrupt."""
    from spark_jax.runner.run_io import RunDir  # pylint: disable=g-import-not-at-top

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.append_metrics({"round": 1})
    fsync = os.fsync

    def interrupted_fsync(fd):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        run.append_metrics({"round": 2})
    assert [json.loads(l)["round"] for l in (run.path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_nested_deferred_blocks_deliver_the_signal_once_after_the_outer_one():
    """A round's commit (outer block) around the metrics append (inner block): Ctrl-C inside the inner block
    arrives once, after the outer block, so the round is counted where its line is written."""
    from spark_jax.runner import run_signals  # pylint: disable=g-import-not-at-top

    done = []
    with pytest.raises(KeyboardInterrupt):
        with run_signals.deferred():
            with run_signals.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)
                done.append("line")
            time.sleep(0.01)
            done.append("progress")
    assert done == ["line", "progress"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
