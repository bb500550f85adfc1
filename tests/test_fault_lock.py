"""Family 1 of issue 16: one process per run (and sweep) directory, with real processes.

A second process on a held directory gets one `error:` line naming the
holder's pid (exit 1) and touches nothing; a lock left by a process killed
with SIGKILL is stale (the kernel dropped its flock) and is taken over.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.faults import assert_nothing_half_written, assert_one_line_error, cli_env, run_cli, snapshot

HOLD = ("import sys, time\nfrom spark_jax.runner import run_lock\n"
        "with run_lock.hold(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")


def _holder(directory):
    """A real process holding the lock of `directory`; returns it once it holds the lock."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _seed_run_dir(workdir):
    """A directory that looks like an interrupted run (config.json + one metrics line)."""
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"config": {"name": "tiny"}}))
    (workdir / "metrics.jsonl").write_text('{"round": 1}\n')


# (id, module, arguments after --workdir, prepare the directory)
HELD = [
    ("run-new", "run", ["--config=tiny"], lambda d: None),
    ("run-resume", "run", ["--config=tiny", "--resume"], _seed_run_dir),
    ("sweep", "sweep", ["--config=tiny", "--sweep=config.algorithm_kw.local_epochs=1,2"], lambda d: None),
]


@pytest.mark.parametrize("module,args,prepare", [c[1:] for c in HELD], ids=[c[0] for c in HELD])
def test_second_process_on_a_held_directory_gets_one_line(module, args, prepare, real_data_dir, tmp_path):
    workdir = tmp_path / "work"
    prepare(workdir)
    holder = _holder(workdir)
    try:
        before = snapshot(workdir)
        proc = run_cli(module, [f"--workdir={workdir}", *args], real_data_dir)
        assert_one_line_error(proc, f"{workdir} is in use by another process (pid {holder.pid}, lock "
                                    f"{workdir}/.lock); wait for it to finish or pass another --workdir")
        assert snapshot(workdir) == before
    finally:
        _kill(holder)


@pytest.mark.slow
def test_stale_lock_of_a_killed_process_is_taken_over(real_data_dir, tmp_path):
    workdir = tmp_path / "run"
    holder = _holder(workdir)
    _kill(holder)  # SIGKILL: the lock file stays, with the dead pid in it
    assert (workdir / ".lock").read_text().strip() == str(holder.pid)
    proc = run_cli("run", [f"--workdir={workdir}", "--config=tiny"], real_data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"taking over the stale lock {workdir}/.lock of pid {holder.pid} (no longer running)" in proc.stderr
    assert not (workdir / ".lock").exists() and (workdir / "summary.json").exists()
    assert_nothing_half_written(workdir)


@pytest.mark.slow
def test_two_real_runs_never_interleave(real_data_dir, tmp_path):
    """A running run holds its directory: a second run (or resume) is refused, metrics stay one line a round."""
    workdir = tmp_path / "run"
    args = ["--config=tiny", "--config.rounds=500", "--config.checkpoint_every=0", f"--workdir={workdir}"]
    first = subprocess.Popen([sys.executable, "-m", "experiments.run", *args], cwd=REPO, env=cli_env(real_data_dir),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (workdir / "metrics.jsonl").exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.2)
        for extra in ([], ["--resume"]):
            proc = run_cli("run", [*args, *extra], real_data_dir)
            assert_one_line_error(proc, f"is in use by another process (pid {first.pid}, lock {workdir}/.lock)")
    finally:
        _kill(first)
    rounds = [json.loads(line)["round"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == list(range(1, len(rounds) + 1))
    assert (workdir / ".lock").read_text().strip() == str(first.pid)  # stale now: the next run takes it over
    assert os.path.exists(workdir / "config.json")
