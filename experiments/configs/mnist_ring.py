"""SPARK on MNIST: 300 nodes, dynamic ring, NTK-DFL partition mnist300/alpha0.1/seed0,
SPEC defaults, target accuracy 95%.

  python -m experiments.run --config=mnist_ring
      300 nodes, 40 rounds; minutes per round on 2 CPU cores.
  python -m experiments.run --config=mnist_ring:small
      first 30 nodes, 15 rounds, the default 'imex' evolution.
"""

from experiments.configs import base


def get_config(arg: str = ""):
    return base.spark_config("mnist_ring", arg, dataset="mnist", topology="ring")
