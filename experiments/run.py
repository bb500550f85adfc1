"""Runs one experiment: `python -m experiments.run --config=fmnist_ring[:small]`.

Thin on purpose: flags -> config -> `spark_jax.runner.experiment.run`. NAME resolves
to `experiments/configs/NAME.py` (a file path works too); `--config.a.b=v`
overrides are type-checked by ml_collections; `--workdir` defaults to
`results/<name>_<timestamp>`. `--resume` continues the run in `--workdir` from
its last checkpoint (same command, same config):

  python -m experiments.run --config=fmnist_ring:small --workdir=results/a --resume

Several processes (hosts), each started with the same command plus its
place in the run (or the environment variables JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID; `--distributed` alone under Slurm / Open
MPI): the node axis spans every process's devices, process 0 writes the run
directory (on a filesystem all of them share, for the checkpoints):

  python -m experiments.run --config=tiny --workdir=results/t \
      --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0   # and =1 on the other host

The data is downloaded (checksummed) on first use when no source has it
(`spark_jax/setting/download.py`; `--config.data.download=False` or
SPARK_JAX_NO_DOWNLOAD=1 turns that off). A finished run prints a short summary
(`spark_jax/runner/run_summary.py`) and leaves `curves.png` in its directory
(SPARK_JAX_NO_PLOTS=1 leaves out its PNGs, curves.png and label_histogram.png: ~0.9 s of a 5 s tiny run).

Exit status: 0 done (or already finished), 1 with one `error: ...` line on bad
input, a config that differs from the resumed run's, or a NaN/Inf (the round,
nodes and phase named; checkpoints and metrics of the good rounds are kept);
130 (SIGINT) or 143 (SIGTERM) with `error: interrupted|terminated at round r;
resume with ... --resume` (a run with no completed round leaves nothing).
"""

from __future__ import annotations

import datetime
import pathlib
import shlex
import sys

from absl import app, flags, logging

from experiments import config_files
from experiments.config_names import named_configs, parse_flags, rewrite_argv

_CONFIG = config_files.define_config_flag("Experiment config: NAME[:ARG] or path.py[:ARG].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default results/<name>_<timestamp>).")
_RESUME = flags.DEFINE_bool("resume", False, "Continue the run in --workdir from its last checkpoint "
                            "(a new run if --workdir is empty; nothing to do if it finished).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process: process 0's host:port "
                                   "(default $JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes "
                                      "(default $JAX_NUM_PROCESSES; unset or 1 = one process).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index, 0 = coordinator "
                                   "(default $JAX_PROCESS_ID).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with the cluster's "
                                 "own settings (Slurm, Open MPI).")
_TIMEOUT = flags.DEFINE_integer("distributed_timeout", 60, "Seconds to wait for every process to connect.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory with the IDX files (overrides config.data.data_dir "
                                "and $SPARK_JAX_DATA_DIR).")


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # keep the progress bar readable
    from spark_jax.runner import distributed

    try:
        options = distributed.options_from(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                           _DISTRIBUTED.value, _TIMEOUT.value)
    except distributed.DistributedError as e:
        sys.exit(f"error: {e}")
    from spark_jax import parallel

    if not options.enabled and _CONFIG.value is not None:  # one process: its CPU as one device per core
        try:
            parallel.split_cpu(_CONFIG.value.parallel.cpu_devices)  # with allow_slow_collectives
        except ValueError as e:
            sys.exit(f"error: {e}")
    else:  # several processes keep their device counts; their devices still wait at collectives
        parallel.allow_slow_collectives()
    distributed.initialize(options)  # before anything touches a device
    from spark_jax.runner import run_signals

    try:
        with run_signals.stop_signals_raise():  # SIGTERM ends the run like Ctrl-C: cleaned up, one line
            _run()
    finally:
        distributed.shutdown()


def jax_process_count() -> int:
    import jax  # pylint: disable=g-import-not-at-top

    return jax.process_count()


def _run():
    config = _CONFIG.value
    if config is None:
        sys.exit(f"error: --config is required; named configs: {', '.join(named_configs())}")
    if _DATA_DIR.value:
        config.data.data_dir = _DATA_DIR.value
    if _RESUME.value and not _WORKDIR.value:
        sys.exit("error: --resume needs --workdir (the run directory to continue)")
    if jax_process_count() > 1 and not _WORKDIR.value:
        sys.exit("error: a run over several processes needs --workdir (the same shared directory for all)")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = _WORKDIR.value or f"results/{config.name.replace(':', '_')}_{stamp}"

    from spark_jax.runner import distributed
    from spark_jax.setting.data import DataError
    from spark_jax.runner.experiment import run
    from spark_jax.guard import NonFiniteError
    from spark_jax.runner.run_io import os_error_line
    from spark_jax.runner.run_lock import LockedError
    from spark_jax.runner.run_signals import Interrupted, exit_status, run_stop_line

    try:
        summary = run(config, workdir, resume=_RESUME.value)
    except (Interrupted, KeyboardInterrupt) as e:  # SIGINT / SIGTERM: resumable, or nothing kept
        args = [a for a in _TYPED_ARGS or sys.argv[1:] if a != "--resume" and not a.startswith("--workdir")]
        command = shlex.join(["python", "-m", "experiments.run", *args, f"--workdir={workdir}", "--resume"])
        print(run_stop_line(e, command, resumable=(pathlib.Path(workdir) / "config.json").exists()), file=sys.stderr)
        sys.exit(exit_status(e))
    except (ValueError, DataError, FileExistsError, NonFiniteError, LockedError) as e:
        sys.exit(f"error: {e}")
    except OSError as e:  # the path and the cause: workdir under a file, read-only, disk full, ...
        sys.exit(f"error: {os_error_line(e)}")
    if not distributed.is_writer():
        return
    if summary.get("run_status") == "already finished":
        print(f"{workdir}: the run is already finished (summary.json); nothing to do; final aggregated test "
              f"accuracy {summary['final_test_accuracy']:.4f}")
        return
    from spark_jax.runner.run_summary import summary_lines

    resumed = " (resumed)" if summary.get("run_status") == "resumed" else ""
    print("\n".join(summary_lines(summary, workdir, resumed)), flush=True)  # accuracies, target, curves, report


_TYPED_ARGS: list[str] = []  # the command line as typed, for the resume hint (`rewrite_argv` resolves it)

if __name__ == "__main__":
    _TYPED_ARGS = sys.argv[1:]
    sys.argv = rewrite_argv(sys.argv)
    app.run(main, flags_parser=parse_flags)
