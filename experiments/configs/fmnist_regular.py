"""SPARK on Fashion-MNIST, dynamic random 5-regular graph (the NTK-DFL topology),
NTK-DFL partition fmnist300/alpha0.1/seed0, SPEC defaults.

  python -m experiments.run --config=fmnist_regular
      300 nodes, 40 rounds; minutes per round on 2 CPU cores.
  python -m experiments.run --config=fmnist_regular:small
      first 30 nodes, 15 rounds, Euler; several minutes on 2 CPU cores.
"""

from experiments.configs import base


def get_config(arg: str = ""):
    return base.spark_config("fmnist_regular", arg, topology="regular", degree=5)
