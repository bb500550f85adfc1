"""Helpers of the failure tables (issue 16): the CLI in a subprocess, one-line errors, file snapshots."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from tests.conftest import REPO


def cli_env(data_dir: str, **extra) -> dict:
    return dict(os.environ, SPARK_JAX_DATA_DIR=data_dir, JAX_PLATFORMS="cpu", **extra)


def run_cli(module: str, args: list[str], data_dir: str, timeout: float = 300, **extra_env):
    """`python -m experiments.<module> ARGS` in a subprocess; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", f"experiments.{module}", *args], cwd=REPO,
                          env=cli_env(data_dir, **extra_env), capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, message: str, status: int = 1) -> str:
    """Exactly one `error:` line, containing `message`; exit `status`; no traceback. Returns the line."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == status, (proc.returncode, proc.stderr[-3000:])
    assert len(errors) == 1 and message in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


def snapshot(directory) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `directory` but the lock ({} if it does not exist)."""
    directory = pathlib.Path(directory)
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def assert_nothing_half_written(directory) -> None:
    """No temp files (ours: `.NAME.*`; orbax's: `*.orbax-checkpoint-tmp-*`) and no empty files."""
    directory = pathlib.Path(directory)
    for p in directory.rglob("*"):
        assert "orbax-checkpoint-tmp" not in p.name, p
        if p.is_file():
            assert not (p.name.startswith(".") and p.name != ".lock"), f"temp file left: {p}"
            assert p.stat().st_size > 0 or p.name == "commit_success.txt", f"empty file left: {p}"
