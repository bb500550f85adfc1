"""Runs a grid of experiments, resumably: configs x `--sweep` axes x presets x seeds.

  python -m experiments.sweep --config=fmnist_ring:small --workdir=results/sweep_x \
      --sweep=config.algorithm_kw.sketch.k=128,256,512 --sweep=config.algorithm_kw.distill.lambda_max=0,0.5 \
      --seeds=0,1,2
  python -m experiments.sweep --config=tiny --preset=spark_ablations --seeds=0,1 \
      --workdir=results/ablations --config.algorithm=spark --dry_run

Thin on purpose: flags -> `spark_jax.lab.sweep_grid.build_grid` -> `run_sweep`.
`--config` and fixed `--config.a.b=v` overrides work as in `experiments.run`
and apply to every run. Axis syntax (tuples: `config.algorithm_kw.taus=100:200;100:400`)
and the directory layout are described in `spark_jax/lab/sweep_grid.py`. Re-running
the same command resumes: finished runs are skipped, interrupted ones continue
from their last checkpoint (or re-run when they have none).
When it ends it writes the report (`experiments.report WORKDIR`; `--noreport`
skips it). Exits non-zero if any run failed; 130 (SIGINT) or 143 (SIGTERM) with
one line `error: sweep interrupted|terminated in run R at round r; resume with
<the same command>`. Cost: the sum of the runs' costs.
"""

from __future__ import annotations

import shlex
import sys

from absl import app, flags, logging

from experiments import config_files
from experiments.config_names import named_configs, parse_flags, rewrite_argv
from spark_jax.lab import sweep_grid, sweep_presets

_CONFIG = config_files.define_config_flag("Base config: NAME[:ARG] or path.py[:ARG].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory; runs go to WORKDIR/<setting>/seed<N>.")
_SWEEP = flags.DEFINE_multi_string("sweep", [], "An axis config.PATH=V1,V2,... (tuple fields: A:B;C:D); "
                                   "repeat for a Cartesian product.")
_SEEDS = flags.DEFINE_string("seeds", None, "Comma-separated seeds (default: config.seed).")
_PRESET = flags.DEFINE_enum("preset", None, sorted(sweep_presets.PRESETS), "Named override sets, crossed with "
                            "the --sweep axes and seeds.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the grid and exit.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory with the IDX files (overrides config.data.data_dir).")
_REPORT = flags.DEFINE_bool("report", True, "Write the report (WORKDIR/report: report.md, CSV, plots) when the "
                            "sweep ends; --noreport to skip it.")


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    if config is None:
        sys.exit(f"error: --config is required; named configs: {', '.join(named_configs())}")
    if not _WORKDIR.value and not _DRY_RUN.value:
        sys.exit("error: --workdir is required (the sweep directory; re-use it to resume)")
    if _DATA_DIR.value:
        config.data.data_dir = _DATA_DIR.value
    try:
        grid = sweep_grid.build_grid(config, _SWEEP.value, _SEEDS.value, _PRESET.value)
    except sweep_grid.SweepError as e:
        sys.exit(f"error: {e}")

    from spark_jax import algorithms, parallel  # pylint: disable=g-import-not-at-top
    from spark_jax.runner.validation import ConfigError, validate_config  # pylint: disable=g-import-not-at-top

    for spec in grid:
        try:
            parallel.split_cpu(spec.config.parallel.cpu_devices)  # once per process: runs must agree on it
            validate_config(spec.config, algorithms.available())
        except (ConfigError, ValueError) as e:
            sys.exit(f"error: run {spec.name}: {e}")
    if _DRY_RUN.value:
        print(sweep_grid.format_grid(grid, _WORKDIR.value))
        return

    meta = {"config": config.name, "preset": _PRESET.value, "sweep": list(_SWEEP.value), "argv": _ARGV}
    print(f"sweep of {len(grid)} runs in {_WORKDIR.value}", flush=True)
    from spark_jax.runner.run_io import os_error_line  # pylint: disable=g-import-not-at-top
    from spark_jax.runner.run_lock import LockedError  # pylint: disable=g-import-not-at-top

    from spark_jax.runner import run_signals  # pylint: disable=g-import-not-at-top

    try:
        with run_signals.stop_signals_raise():  # SIGTERM stops the sweep like Ctrl-C: resumable, one line
            results = sweep_grid.run_sweep(grid, _WORKDIR.value, meta=meta, log=lambda s: print(s, flush=True))
    except (run_signals.SweepInterrupted, KeyboardInterrupt) as e:
        print(run_signals.sweep_stop_line(e, shlex.join(["python", "-m", "experiments.sweep", *_ARGV])),
              file=sys.stderr)
        sys.exit(run_signals.exit_status(e))
    except (sweep_grid.SweepError, LockedError) as e:
        sys.exit(f"error: {e}")
    except OSError as e:  # the sweep directory itself: under a file, read-only, disk full
        sys.exit(f"error: {os_error_line(e)}")
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        print(f"\n--- {r.spec.name} failed ---\n{r.traceback or r.error}", file=sys.stderr)
    print(f"{len(results) - len(failed)}/{len(results)} runs finished; report: "
          f"python -m experiments.report {_WORKDIR.value}", flush=True)
    if _REPORT.value:  # spark_jax/runner/run_summary.py; a report failure is a line, never a failed sweep
        from spark_jax.lab.report_compare import write_sweep_report  # pylint: disable=g-import-not-at-top

        print(write_sweep_report(_WORKDIR.value), flush=True)
    if failed:
        sys.exit(f"error: {len(failed)} of {len(results)} runs failed: {', '.join(r.spec.name for r in failed)}")


_ARGV = sys.argv[1:]  # as typed (before a named --config is resolved to its file), for sweep.json


if __name__ == "__main__":
    sys.argv = rewrite_argv(sys.argv)
    app.run(main, flags_parser=parse_flags)
