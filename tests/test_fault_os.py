"""Family 5 of issue 16: OS errors are one line naming the path and the cause; nothing half-written.

Real faults: a workdir under a file or under /sys, a read-only filesystem and
a full disk (small tmpfs mounts; they need root, otherwise those cases are
skipped with the reason printed). A disk that fills during the run must leave
metrics.jsonl ending with a whole line (the lines before byte-identical), no
temp files and no orbax temp directory.
"""

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from spark_jax.runner.run_io import RunDir, write_json_atomic
from tests.conftest import REPO
from tests.faults import assert_nothing_half_written, assert_one_line_error, cli_env, run_cli, snapshot


@contextlib.contextmanager
def tmpfs(path: pathlib.Path, size: str, read_only: bool = False):
    """A tmpfs of `size` at `path` for the block; skips (reason printed) where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                          text=True) if os.geteuid() == 0 else None
    if proc is None or proc.returncode != 0:
        reason = ("not root: cannot mount a tmpfs for real disk-full/read-only faults" if proc is None
                  else f"mount -t tmpfs failed: {proc.stderr.strip()}")
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: pathlib.Path) -> None:
    """Fills the filesystem of `directory` to the last byte."""
    with open(directory / "filler", "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0")


def test_workdir_under_a_file(real_data_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    proc = run_cli("run", ["--config=tiny", f"--workdir={tmp_path}/file/run"], real_data_dir)
    assert_one_line_error(proc, f"error: {tmp_path}/file/run: Not a directory")


def test_sweep_dir_under_a_file(real_data_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    proc = run_cli("sweep", ["--config=tiny", f"--workdir={tmp_path}/file/sweep"], real_data_dir)
    assert_one_line_error(proc, f"error: {tmp_path}/file/sweep: Not a directory")


def test_workdir_under_sys(real_data_dir):
    proc = run_cli("run", ["--config=tiny", "--workdir=/sys/spark_jax_test_run"], real_data_dir)
    line = assert_one_line_error(proc, "error: /sys/spark_jax_test_run: ")
    assert line.split(": ", 2)[2] in ("Operation not permitted", "Read-only file system", "Permission denied"), line


def test_read_only_filesystem(real_data_dir, tmp_path):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as mnt:
        proc = run_cli("run", ["--config=tiny", f"--workdir={mnt}/run"], real_data_dir)
        assert_one_line_error(proc, f"error: {mnt}/run: Read-only file system")


@pytest.mark.slow
def test_disk_full_before_the_first_round_leaves_nothing(real_data_dir, tmp_path):
    with tmpfs(tmp_path / "small", "16k") as mnt:  # config.json fits, label_histogram.png (19 kB) does not
        proc = run_cli("run", ["--config=tiny", f"--workdir={mnt}/run"], real_data_dir, SPARK_JAX_NO_PLOTS="0")
        assert_one_line_error(proc, f"error: {mnt}/run/label_histogram.png: No space left on device")
        assert not (mnt / "run").exists()


@pytest.mark.parametrize("checkpoint_every,named", [(0, "metrics.jsonl"), (1, None)])
@pytest.mark.slow
def test_disk_full_during_the_rounds(checkpoint_every, named, real_data_dir, tmp_path):
    """The disk fills once round 1 is written; the run stops at the next write that needs space."""
    with tmpfs(tmp_path / "disk", "4m") as mnt:
        workdir = mnt / "run"
        args = ["--config=tiny", "--config.rounds=100", f"--config.checkpoint_every={checkpoint_every}",
                f"--workdir={workdir}"]
        proc = subprocess.Popen([sys.executable, "-m", "experiments.run", *args], cwd=REPO,
                                env=cli_env(real_data_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (workdir / "metrics.jsonl").exists() or not (workdir / "metrics.jsonl").stat().st_size:
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.05)
        fill(mnt)
        written = (workdir / "metrics.jsonl").read_bytes()
        stdout, stderr = proc.communicate(timeout=240)
        proc = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        line = assert_one_line_error(proc, ": No space left on device")
        path = line[len("error: "):-len(": No space left on device")]
        assert path == str(workdir / named) if named else (
            path == str(workdir / "metrics.jsonl") or path.startswith(f"{workdir}/checkpoints/")), line
        metrics = (workdir / "metrics.jsonl").read_bytes()
        assert metrics.startswith(written[: written.rfind(b"\n") + 1]) and metrics.endswith(b"\n")
        rounds = [json.loads(l)["round"] for l in metrics.splitlines()]
        assert rounds == list(range(1, len(rounds) + 1))
        (mnt / "filler").unlink()
        assert_nothing_half_written(workdir)


def test_atomic_writes_on_a_full_disk(tmp_path):
    with tmpfs(tmp_path / "disk", "64k") as mnt:
        run = RunDir(mnt / "run")
        run.create()
        write_json_atomic(run.path / "summary.json", {"a": 1})
        run.append_metrics({"round": 1, "x": 1.0})
        before = snapshot(run.path)
        fill(mnt)
        with pytest.raises(OSError, match="No space left on device") as e:
            write_json_atomic(run.path / "summary.json", {"a": "x" * 10000})
        assert e.value.filename == str(run.path / "summary.json")
        for _ in range(20):  # the partial page left may hold a few lines; one append must fail
            try:
                run.append_metrics({"round": 2, "x": "y" * 300})
            except OSError as err:
                assert err.filename == str(run.path / "metrics.jsonl") and err.errno == 28
                break
        else:
            pytest.fail("the disk never filled")
        assert run.path.joinpath("metrics.jsonl").read_bytes().endswith(b"\n")
        assert snapshot(run.path)["summary.json"] == before["summary.json"]
        assert sorted(p.name for p in run.path.iterdir()) == ["metrics.jsonl", "summary.json"]  # no temp file
