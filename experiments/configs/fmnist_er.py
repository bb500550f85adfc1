"""SPARK on Fashion-MNIST, Erdős–Rényi graph re-drawn every round with mean
degree about 5 (p = 5/299; 5/29 for :small), NTK-DFL partition alpha 0.1, SPEC defaults.

  python -m experiments.run --config=fmnist_er
      300 nodes, 40 rounds; minutes per round on 2 CPU cores.
  python -m experiments.run --config=fmnist_er:small
      first 30 nodes, 15 rounds, the default 'imex' evolution.
"""

from experiments.configs import base


def get_config(arg: str = ""):
    return base.spark_config("fmnist_er", arg, topology="er")
