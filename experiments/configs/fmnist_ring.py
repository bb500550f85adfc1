"""SPARK on Fashion-MNIST: 300 nodes, ring re-drawn (randomly permuted) every round,
NTK-DFL partition fmnist300/alpha0.1/seed0, SPEC defaults (k = 512 per layer,
lambda_max = 0.5, beta = 0.9, stages at 1/3 and 2/3 of 40 rounds).

  python -m experiments.run --config=fmnist_ring
      300 nodes, 40 rounds; paper scale: about 85 s per round on 2 CPU
      cores (first round, compilation included; about an hour in all; peak
      7.2 GiB; `benchmarks.spark_round`), much less on a GPU.
  python -m experiments.run --config=fmnist_ring:small
      first 30 nodes of the same partition, 15 rounds, the default
      'imex' evolution (Euler was the :small default until 2026-11-30).
"""

from experiments.configs import base


def get_config(arg: str = ""):
    return base.spark_config("fmnist_ring", arg, topology="ring")
