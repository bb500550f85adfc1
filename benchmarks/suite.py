"""The GPU suite's steps (full and dry-run sizes) and how they run: subprocesses under one time budget.

`plan(work, dry_run)` lists the steps in priority order; `run_steps` runs
them one after the other, each a subprocess with the time it may take
(min(its cap, what is left of the budget); a step that would get under
MIN_STEP_S is skipped and recorded as such), and keeps their output.
`collect` turns the work folder into at most 8 files of at most 16 MiB in
OUT_DIR. This module imports no JAX: the steps, not the orchestrator, take
the GPU's memory.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import time

MIN_STEP_S = 20
MAX_FILE_BYTES = 16 * 2**20
REQUIRED_MODULES = ("jax", "flax", "optax", "chex", "orbax.checkpoint", "absl", "ml_collections", "yaml", "numpy",
                    "scipy", "matplotlib", "tqdm", "pytest")
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")
# Tiny sizes for --dry-run (CPU): an MLP with 8 hidden units, 8 nodes of 40 samples, 1 round, Euler steps
# (the dry run checks the suite's plumbing; compiling the default 'imex' integrator in every step took
# 79 s instead of 55 s with a cold compilation cache). The NTK algorithms' keyword arguments follow
# `--config.algorithm` (applied first, whatever the order).
TINY = ["--config=tiny", "--config.model.hidden=(8,)", "--config.topology.kind=regular", "--config.topology.degree=3"]
TINY_NTK = ["--config.algorithm_kw.taus=(10,20)", "--config.algorithm_kw.compute.node_chunk=4",
            "--config.algorithm_kw.evolution.integrator=euler"]


@dataclasses.dataclass
class Step:
    """One subprocess: `argv` (after `python -m`), at most `cap_s` seconds, its stdout kept in `log`."""

    name: str
    argv: list[str]
    cap_s: float
    log: str  # which output file its stdout goes to: 'tests', 'benchmarks' or 'study'
    seconds: float = 0.0
    returncode: int | None = None
    status: str = "not run"  # 'ok' | 'failed' | 'timed out' | 'skipped (budget)'

    def record(self) -> dict:
        return {"name": self.name, "command": "python -m " + " ".join(self.argv), "cap_s": self.cap_s,
                "seconds": round(self.seconds, 1), "returncode": self.returncode, "status": self.status}


def plan(work: pathlib.Path, dry_run: bool) -> list[Step]:
    """The suite's steps, most important first (Part A of issue 14)."""
    study = str(work / "study")
    if dry_run:
        spark = [*TINY, "--config.algorithm=spark", *TINY_NTK, "--config.algorithm_kw.sketch.k=16"]
        ntk, slice_ = [*TINY, "--config.algorithm=ntk_dfl", *TINY_NTK], [*spark, "--config.rounds=1"]
        tests = ["pytest", "-o", "addopts=", "-m", "device", "-q", "-ra", "-p", "no:cacheprovider",  # one test:
                 "-k", "test_vmap_over_nodes_equals_loop", "tests/test_ntk_vmap.py"]  # the step's plumbing
        repeats, gemm, caps = "--repeats=0", "--n=256", dict(tests=60, bench=60, study=90, report=30, extra=40)
        yardstick = ["--gemm_n=256"]  # at these sizes 2048^3 GEMMs around every phase took most of the time
        extras = [("ntk_dfl node_chunk=2", "benchmarks.round",
                   [*ntk, "--config.algorithm_kw.compute.node_chunk=2", "--nofused"])]
    else:
        ntk, spark = ["--config=fmnist_ntk_dfl"], ["--config=fmnist_regular"]
        slice_ = ["--config=fmnist_regular", "--config.rounds=40"]
        tests = ["pytest", "-o", "addopts=", "-m", "device", "-q", "-ra", "-p", "no:cacheprovider"]
        yardstick = []
        repeats, gemm, caps = "--repeats=2", "--n=8192", dict(tests=150, bench=120, study=300, report=60, extra=90)
        nr, sr = "benchmarks.round", "benchmarks.spark_round"
        precision = "--config.algorithm_kw.compute.matmul_precision=default"
        extras = [("ntk_dfl matmul_precision=default", nr, [*ntk, precision]),
                  ("spark matmul_precision=default", sr, [*spark, precision]),
                  *[(f"ntk_dfl node_chunk={c}", nr, [*ntk, f"--config.algorithm_kw.compute.node_chunk={c}",
                                                       "--nofused"])
                    for c in (32, 100)],
                  ("ntk_dfl node_batching=sequential", nr,
                   [*ntk, "--config.algorithm_kw.compute.node_batching=sequential", "--nofused"])]
    steps = [
        Step("device tests", tests, caps["tests"], "tests"),
        Step("GEMM precision", ["benchmarks.precision", gemm, f"--out={work / 'precision.json'}"], 60, "benchmarks"),
        Step("NTK-DFL round", ["benchmarks.round", *ntk, repeats, *yardstick], caps["bench"], "benchmarks"),
        Step("SPARK round", ["benchmarks.spark_round", *spark, repeats, *yardstick], caps["bench"], "benchmarks"),
        Step("study slice", ["experiments.sweep", *slice_, "--preset=device_slice", "--seeds=0",
                             f"--workdir={study}"], caps["study"], "study"),
        Step("study report", ["experiments.report", study], caps["report"], "study"),
    ]
    # The sweep (precision cost, node_chunk, batching): one timed run each, while the budget lasts.
    steps += [Step(name, [module, *argv, *yardstick, "--repeats=0" if dry_run else "--repeats=1"], caps["extra"],
                   "benchmarks")
              for name, module, argv in extras]
    return steps


def missing_modules(names=REQUIRED_MODULES) -> list[str]:
    """The importable names among `names` that this Python cannot find."""
    out = []
    for name in names:
        try:
            if importlib.util.find_spec(name) is None:
                out.append(name)
        except ModuleNotFoundError:  # a parent package is missing
            out.append(name)
    return out


def find_data_dir(candidates) -> str | None:
    """The first candidate holding the four Fashion-MNIST IDX files (itself or its fashion_mnist/)."""
    for c in candidates:
        if not c:
            continue
        for d in (pathlib.Path(c), pathlib.Path(c) / "fashion_mnist"):
            if all((d / f).exists() for f in IDX_FILES):
                return str(c)
    return None


def run_steps(steps: list[Step], work: pathlib.Path, budget_s: float, env: dict, echo=print) -> None:
    """Runs `steps` in order within `budget_s` seconds; stdout to WORK/<log>.log, stderr to WORK/stderr.log."""
    start = time.monotonic()
    for step in steps:
        left = budget_s - (time.monotonic() - start)
        timeout = min(step.cap_s, left)
        if timeout < min(MIN_STEP_S, step.cap_s):
            step.status = "skipped (budget)"
            echo(f"[suite] {step.name}: skipped, {left:.0f} s of the budget left")
            continue
        header = f"\n===== {step.name}: python -m {' '.join(step.argv)} (at most {timeout:.0f} s)\n"
        with open(work / f"{step.log}.log", "a") as out, open(work / "stderr.log", "a") as err:
            out.write(header)
            err.write(header)
            out.flush()
            err.flush()
            t0 = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", *step.argv], stdout=out, stderr=err, env=env,
                                    start_new_session=True)
            try:
                step.returncode = proc.wait(timeout=timeout)
                step.status = "ok" if step.returncode == 0 else "failed"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                step.status = "timed out"
            step.seconds = time.monotonic() - t0
        echo(f"[suite] {step.name}: {step.status} in {step.seconds:.1f} s")


def _tail_copy(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Copies src to dst, keeping only its last MAX_FILE_BYTES."""
    data = src.read_bytes() if src.exists() else b""
    dst.write_bytes(data[-MAX_FILE_BYTES:])


def collect(work: pathlib.Path, out: pathlib.Path, summary: dict) -> list[str]:
    """Writes OUT/{suite.json, tests.log, benchmarks.log, stderr.log, precision.json, study.tar.gz,
    report.md} (at most 7 files, each cut to 16 MiB); returns their names."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tests.log", "benchmarks.log", "stderr.log"):
        _tail_copy(work / name, out / name)
    if (work / "precision.json").exists():
        _tail_copy(work / "precision.json", out / "precision.json")
    study = work / "study"
    if study.is_dir():
        with tarfile.open(out / "study.tar.gz", "w:gz") as tar:
            for p in sorted(study.rglob("*")):
                if p.is_file() and "checkpoints" not in p.relative_to(study).parts:
                    tar.add(p, arcname=str(p.relative_to(work)))
        if (out / "study.tar.gz").stat().st_size > MAX_FILE_BYTES:
            (out / "study.tar.gz").unlink()  # never over the limit: the metrics are in the report
        reports = sorted(study.rglob("*.md"))
        if reports:
            (out / "report.md").write_text("\n\n".join(f"<!-- {p.relative_to(work)} -->\n{p.read_text()}"
                                                       for p in reports)[-MAX_FILE_BYTES:])
    (out / "suite.json").write_text(json.dumps(summary, indent=2) + "\n")
    return sorted(p.name for p in out.iterdir())
