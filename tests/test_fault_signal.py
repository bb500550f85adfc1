"""Family 7 of issue 16 (SIGINT part): Ctrl-C in the rounds is one line saying how to resume, not a traceback.

A real process gets SIGINT once it has written a round; it must exit 130
with `error: interrupted at round r; resume with ... --resume`, leave
metrics.jsonl ending with a whole line, and the printed command must finish
the run from its last checkpoint.
"""

import json
import shlex
import signal
import subprocess
import sys
import time

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
