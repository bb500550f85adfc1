"""Wall time of a whole run (every round with its evaluation, checkpoints, final models), measured or
extrapolated.

  python -m benchmarks.run_time --config=fmnist_ntk_dfl [--rounds=3] [--config.a.b=v ...]

Runs `spark_jax.runner.experiment.run` (the code path of `experiments.run`) in a
temporary directory. Without --rounds it runs all `config.rounds` rounds and the
figure is measured. With --rounds=N (< config.rounds) it runs the first N
rounds of the same run (stage boundaries kept at their rounds) and
**extrapolates**: measured total + (config.rounds - N) x the mean time of the
rounds after the first (a round's time includes its evaluation; the first also
compiles). Later rounds have a smaller learning rate, so their evolution is
usually cheaper: the extrapolation is an estimate, said so in the output.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import jax
from absl import app, flags

from benchmarks.common import (benchmark_config, define_gemm_flag, first_rounds, matmul_throughput,
                               peak_memory_bytes)
from experiments import config_files
from experiments.config_names import parse_flags, rewrite_argv
from spark_jax.runner import experiment

_CONFIG = config_files.define_config_flag("Config NAME[:ARG] or path.")
_ROUNDS = flags.DEFINE_integer("rounds", 0, "Rounds to run (0 = all config.rounds); fewer: extrapolated.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory with the IDX files.")
_GEMM_N = define_gemm_flag()


def main(argv):
    del argv
    config = benchmark_config(_CONFIG.value, _DATA_DIR.value)
    config.progress = False
    full = config.rounds
    rounds = _ROUNDS.value or full
    if not 0 < rounds <= full:
        sys.exit(f"error: --rounds={rounds} must be in 1..config.rounds={full}")
    gemm_before = matmul_throughput(_GEMM_N.value)
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        summary = experiment.run(first_rounds(config, rounds) if rounds < full else config, workdir)
        measured = time.perf_counter() - t0
        with open(f"{workdir}/metrics.jsonl") as f:
            round_times = [json.loads(line)["round_time"] for line in f]
    gemm_after = matmul_throughput(_GEMM_N.value)
    evolution = config.algorithm_kw.get("evolution")
    integrator = f", integrator {evolution.integrator}" if evolution else ""
    print(f"config {config.name}: {config.partition.num_nodes} nodes, {full} rounds, algorithm "
          f"{config.algorithm}{integrator}; device {jax.devices()[0].device_kind}")
    print(f"measured float32 GEMM {_GEMM_N.value}^3: {gemm_before / 1e9:.1f} GFLOP/s before, "
          f"{gemm_after / 1e9:.1f} after")
    print("round times incl. evaluation (s): " + ", ".join(f"{t:.1f}" for t in round_times)
          + "  (the first includes compilation)")
    print(f"final aggregated test accuracy after {rounds} rounds: {summary['final_test_accuracy']:.4f}")
    if rounds == full:
        print(f"whole run, measured: {measured:.1f} s = {measured / 60:.1f} min (data, setup, compilation, "
              f"{full} rounds with evaluation, checkpoints, final models)")
    else:
        later = round_times[1:] or round_times
        per_round = sum(later) / len(later)
        estimate = measured + (full - rounds) * per_round
        print(f"first {rounds} rounds, measured: {measured:.1f} s (data, setup, compilation, rounds with "
              f"evaluation, checkpoints, final models)")
        print(f"whole run of {full} rounds, EXTRAPOLATED: {estimate:.1f} s = {estimate / 60:.1f} min "
              f"(+ {full - rounds} x {per_round:.1f} s, the mean of rounds {2 if len(round_times) > 1 else 1}-"
              f"{rounds}; later rounds, at a smaller learning rate, are usually cheaper)")
    print(f"peak memory: {peak_memory_bytes() / 2**30:.2f} GiB")


if __name__ == "__main__":
    sys.argv = rewrite_argv(sys.argv)
    app.run(main, flags_parser=parse_flags)
