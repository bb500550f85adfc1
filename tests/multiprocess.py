"""Starting `python -m experiments.run` as several local processes (jax.distributed on 127.0.0.1).

Used by tests/test_multiprocess.py; each process gets its own XLA_FLAGS
(simulated CPU devices), a free coordinator port, its own log files, and is
killed with its whole process group whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

from tests.conftest import REPO, simulated_devices_env, without_compile_cache


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(devices: int, data_dir: str | None = None) -> dict:
    env = dict(simulated_devices_env(devices), PYTHONUNBUFFERED="1")
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    if data_dir:
        env["SPARK_JAX_DATA_DIR"] = data_dir
    return env


def kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Processes:
    """`num` processes of `experiments.run ARGS --num_processes=num --process_id=i` (all started now).

    logs: LOG_DIR/p<i>.out / .err. `wait(timeout)` -> [(returncode, stderr)];
    `kill()` ends every process group still running (also on leaving a `with`).
    """

    def __init__(self, args: list[str], num: int, devices: int, log_dir: pathlib.Path, data_dir=None,
                 extra: list[list[str]] | None = None, port: int | None = None, compile_cache: bool = True):
        self.port = port or free_port()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.errs = [log_dir / f"p{i}.err" for i in range(num)]
        self.procs = []
        for i in range(num):
            argv = [sys.executable, "-m", "experiments.run", *args, f"--coordinator_address=127.0.0.1:{self.port}",
                    f"--num_processes={num}", f"--process_id={i}", *(extra[i] if extra else [])]
            with open(log_dir / f"p{i}.out", "w") as out, open(self.errs[i], "w") as err:
                env = env_for(devices, data_dir)
                self.procs.append(subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=err, start_new_session=True,
                                                   env=env if compile_cache else without_compile_cache(env)))

    def wait(self, timeout: float) -> list[tuple[int, str]]:
        deadline = time.monotonic() + timeout
        try:
            for p in self.procs:
                p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"processes still running after {timeout} s; stderr: "
                                 f"{[e.read_text()[-1500:] for e in self.errs]}") from None
        return [(p.returncode, e.read_text()) for p, e in zip(self.procs, self.errs)]

    def kill(self) -> None:
        for p in self.procs:
            kill_group(p)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def error_lines(stderr: str) -> list[str]:
    """The `error: ...` lines of a process's stderr (gloo's connection notices aside)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]
