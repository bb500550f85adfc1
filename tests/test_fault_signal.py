"""Family 7 of issue 16 (SIGINT part): Ctrl-C in the rounds is one line saying how to resume, not a traceback.

A real process gets SIGINT once it has written a round; it must exit 130
with `error: interrupted at round r; resume with ... --resume`, leave
metrics.jsonl ending with a whole line, and the printed command must finish
the run from its last checkpoint.
"""

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

from spark_jax import checkpoint
from tests.conftest import REPO
from tests.faults import assert_nothing_half_written, assert_one_line_error, cli_env


def test_sigint_during_the_rounds_says_how_to_resume(real_data_dir, tmp_path):
    workdir = tmp_path / "run"
    args = ["--config=tiny", "--config.rounds=40", "--config.checkpoint_every=2", f"--workdir={workdir}"]
    proc = subprocess.Popen([sys.executable, "-m", "experiments.run", *args], cwd=REPO, env=cli_env(real_data_dir),
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
    assert rounds == list(range(1, 41)) and (workdir / "summary.json").exists()


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
