"""kill -9 at random moments during a sweep and during report writing (issue 16; the run's own kill -9 test
is tests/test_checkpoint.py::test_kill_and_resume_equals_uninterrupted).

After every kill the files there are whole (each JSON file parses; each report file is absent or the
complete file), and rerunning the same command (the sweep resumes; the report is written again) gives
what an uninterrupted run gives: the same metrics (timing aside) and summaries, byte-identical report
files, and no temp file left. The kill moments are random (the seed is in the assertion messages).
"""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import pytest

from experiments.configs import tiny
from spark_jax.runner import run_io
from tests.conftest import REPO, without_compile_cache
from tests.faults import assert_nothing_half_written, cli_env
from tests.test_sweep_report import write_synthetic_runs

TIMING = ("round_time", "wall_time", "seconds")
SWEEP = ["--config=tiny", "--config.rounds=3", "--config.checkpoint_every=1",
         "--sweep=config.algorithm_kw.local_epochs=1,2", "--seeds=0"]
RUNS = ["local_epochs=1/seed0", "local_epochs=2/seed0"]


def _popen(module: str, args: list[str], data_dir: str) -> subprocess.Popen:
    """A process this test SIGKILLs: without the shared compilation cache (tests/conftest.py)."""
    return subprocess.Popen([sys.executable, "-m", f"experiments.{module}", *args], cwd=REPO,
                            env=without_compile_cache(cli_env(data_dir)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _finish(module: str, args: list[str], data_dir: str) -> None:
    proc = subprocess.run([sys.executable, "-m", f"experiments.{module}", *args], cwd=REPO, env=cli_env(data_dir),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _kill_when(proc: subprocess.Popen, ready, delay: float, timeout: float = 120) -> bool:
    """SIGKILL `delay` s after ready() holds; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the process made no progress"
        time.sleep(0.01)
    time.sleep(delay)
    ended = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    return not ended


def _lines_written(sweep_dir: pathlib.Path) -> int:
    """metrics.jsonl lines of the sweep's runs so far (not rglob: orbax removes directories meanwhile)."""
    lines = 0
    for name in RUNS:
        try:
            lines += len((sweep_dir / name / "metrics.jsonl").read_bytes().splitlines())
        except FileNotFoundError:
            pass
    return lines


def _assert_json_whole(directory: pathlib.Path, note: str) -> None:
    for p in directory.rglob("*.json"):
        if p.is_file() and not p.name.startswith("."):
            json.loads(p.read_text())  # raises (with the file in the traceback) if cut short
    for p in directory.rglob("summary.json"):
        assert (p.parent / "metrics.jsonl").is_file(), (note, p)


def _results(sweep_dir: pathlib.Path) -> dict:
    out = {}
    for name in RUNS:
        run = sweep_dir / name
        out[name] = {"metrics": [{k: v for k, v in r.items() if k not in TIMING} for r in run_io.read_metrics(run)],
                     "summary": {k: v for k, v in json.loads((run / "summary.json").read_text()).items()
                                 if k not in TIMING}}
    record = json.loads((sweep_dir / "sweep.json").read_text())
    out["sweep.json"] = [(r["name"], r["final_test_accuracy"]) for r in record["runs"]]
    return out


@pytest.mark.slow  # 4 sweep processes (~40 s on 2 cores)
def test_kill_9_during_a_sweep_then_rerun_equals_uninterrupted(real_data_dir, tmp_path):
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    reference = tmp_path / "uninterrupted"
    _finish("sweep", [*SWEEP, f"--workdir={reference}"], real_data_dir)
    killed = tmp_path / "killed"
    args = [*SWEEP, f"--workdir={killed}"]
    # Two kills: the first anywhere from the sweep's start to round 2, the next one 1-2 rounds after the
    # rerun has got going again (mid-round, mid-checkpoint or mid-write, as the random delay falls).
    for kill in range(2):
        at = rng.randint(0, 2) if kill == 0 else (_lines_written(killed) + rng.randint(1, 2))
        delay = rng.uniform(0, 0.4)
        note = f"seed {seed}: kill {kill + 1} after {at} metrics lines + {delay:.2f} s"
        if not _kill_when(_popen("sweep", args, real_data_dir),
                          lambda: killed.exists() and _lines_written(killed) >= at, delay):
            break  # the sweep finished before the kill: nothing left to interrupt
        _assert_json_whole(killed, note)
    _finish("sweep", args, real_data_dir)
    assert _results(killed) == _results(reference), f"seed {seed}"
    assert_nothing_half_written(killed)
    assert not (killed / ".lock").exists()


@pytest.mark.slow  # 5 report processes (~15 s on 2 busy cores)
def test_kill_9_during_report_writing_then_rerun_writes_the_same_files(real_data_dir, tmp_path):
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    config = tiny.get_config()
    config.lock()
    root = tmp_path / "runs"
    write_synthetic_runs(root, config)
    reference, out = tmp_path / "reference", tmp_path / "out"
    start = time.monotonic()
    _finish("report", [str(root), f"--out={reference}"], real_data_dir)
    took = time.monotonic() - start
    expected = {p.name: p.read_bytes() for p in reference.iterdir()}
    assert {"report.md", "report.csv", "accuracy_vs_round.png", "accuracy_vs_bytes.png"} <= expected.keys()
    for kill in range(3):
        begun = time.time_ns()
        proc = _popen("report", [str(root), f"--out={out}"], real_data_dir)
        if kill == 0:  # anywhere, from the imports to the last file
            delay = rng.uniform(0.3, 1.0) * took
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
        else:  # while writing: once this process has changed `out` (a file created or renamed)
            delay = rng.uniform(0, 0.3)
            _kill_when(proc, lambda: out.exists() and out.stat().st_mtime_ns >= begun, delay)
        if out.exists():
            for p in out.iterdir():
                if not p.name.startswith("."):  # a temp file of the killed writer; the file itself is whole
                    assert p.read_bytes() == expected[p.name], f"seed {seed}: {p.name} after {delay:.2f} s"
    _finish("report", [str(root), f"--out={out}"], real_data_dir)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == expected, f"seed {seed}"
    assert_nothing_half_written(out)


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path):
    """kill -9 skips a writer's cleanup: its `.NAME.tmpPID.*` is removed by the next write of NAME."""
    target = tmp_path / "summary.json"
    dead = tmp_path / ".summary.json.tmp99999999.x1"  # no such pid
    live = tmp_path / f".summary.json.tmp{os.getpid()}.x2"  # a writer still at work (here: this process)
    other = tmp_path / ".metrics.jsonl.tmp99999999.x3"  # another file's: left to that file's next write
    for p in (dead, live, other):
        p.write_text("{")
    run_io.write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1} and not dead.exists() and live.exists() and other.exists()
    with pytest.raises(RuntimeError), run_io.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name, other.name])
    with run_io.atomic_path(target) as tmp:
        tmp.write_bytes(b"{}")
    assert target.read_bytes() == b"{}" and oct(target.stat().st_mode & 0o777) == oct(run_io.file_mode())
