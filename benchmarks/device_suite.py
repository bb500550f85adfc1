"""The GPU suite: one short, prepared run on one GPU that writes everything it measures to OUT_DIR.

  python -m benchmarks.device_suite OUT_DIR [--dry-run] [--budget_s=480] [--data_dir=DIR]
  scripts/gpu_suite.sh OUT_DIR        # on the offline H200: installs the carried wheels first (BUILD.md "GPU")

In priority order, each step a subprocess under one time budget (default 480
s = 8 min; `benchmarks/suite.py`): the tests marked `device` (float64
references, NTK-DFL == SPARK with parts off, no recompilation, vectorized
node batching) in float32 matmul precision; the GEMM rate and error at
float32 / TF32 / bf16 (`benchmarks.precision`); the paper-scale NTK-DFL and
SPARK rounds per phase (300 nodes, dynamic 5-regular, taus to 800, k = 512
per layer; % of the float32 GEMM rate, peak GPU memory); the study slice
(300 nodes, 40 rounds, alpha 0.1, one seed of NTK-DFL, SPARK, exact-Jacobian
SPARK, DFedAvgM: sweep preset `device_slice`) and its report; then, while the
budget lasts, the same rounds with the backend's default precision (TF32 on
recent NVIDIA GPUs) and with other `algorithm_kw.compute.node_chunk` / `algorithm_kw.compute.node_batching`.

OUT_DIR gets at most 7 files of at most 16 MiB: suite.json (steps, seconds,
status), tests.log, benchmarks.log, stderr.log, precision.json,
study.tar.gz (run directories without checkpoints, the report) and
report.md. `--dry-run`: the same steps at tiny sizes on CPU (under 2
minutes; run by tests/test_device_suite.py). Exit status 0 when every step
that ran passed, 1 otherwise, 2 (one line) when a package or the data is
missing.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import sys
import tempfile
import time

from benchmarks import suite

REPO = pathlib.Path(__file__).resolve().parent.parent


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.device_suite", description=__doc__.split("\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (< 2 min)")
    p.add_argument("--budget_s", type=float, default=None, help="time budget (default 480 s; 170 s dry run)")
    p.add_argument("--data_dir", default=None, help="Fashion-MNIST IDX folder (default: $SPARK_JAX_DATA_DIR, "
                   "data/ in the checkout, ../shared/data, the first that holds them)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    missing = suite.missing_modules()
    if missing:
        print(f"error: missing Python package(s) {', '.join(missing)}: carry their wheels in .whl/ and start "
              "through scripts/gpu_suite.sh (BUILD.md \"GPU\": scripts/prepare_gpu_carry.sh)", file=sys.stderr)
        return 2
    candidates = ([args.data_dir] if args.data_dir else
                  [os.environ.get("SPARK_JAX_DATA_DIR"), REPO / "data", REPO.parent / "shared" / "data"])
    data_dir = suite.find_data_dir(candidates)
    if data_dir is None:
        print(f"error: no Fashion-MNIST IDX files ({', '.join(suite.IDX_FILES)}) in "
              f"{', '.join(str(c) for c in candidates if c)}: copy them into data/fashion_mnist/ of the checkout "
              "(scripts/prepare_gpu_carry.sh) or pass --data_dir", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out_dir)
    budget = args.budget_s or (170.0 if args.dry_run else 480.0)
    env = dict(os.environ, SPARK_JAX_DATA_DIR=data_dir, PYTHONUNBUFFERED="1", XLA_PYTHON_CLIENT_MEM_FRACTION=".9",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    if args.dry_run:
        env["JAX_PLATFORMS"] = "cpu"
    else:  # the device tests compile with XLA's optimizations, as users' runs do (tests/conftest.py)
        env["SPARK_JAX_TEST_OPTIMIZE"] = "1"
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="device_suite_") as tmp:
        work = pathlib.Path(tmp)
        steps = suite.plan(work, args.dry_run)
        suite.run_steps(steps, work, budget, env, echo=lambda m: print(m, flush=True))
        summary = {"dry_run": args.dry_run, "budget_s": budget, "wall_s": round(time.monotonic() - start, 1),
                   "date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
                   "data_dir": data_dir, "steps": [s.record() for s in steps]}
        files = suite.collect(work, out, summary)
    ran = [s for s in steps if s.status != "skipped (budget)"]
    bad = [s.name for s in ran if s.status != "ok"]
    print(f"[suite] {len(ran)} of {len(steps)} steps ran in {summary['wall_s']} s"
          f"{'; not ok: ' + ', '.join(bad) if bad else ', all ok'}; {out}: {', '.join(files)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
