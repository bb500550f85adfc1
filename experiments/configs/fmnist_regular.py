"""SPARK on Fashion-MNIST, dynamic random 5-regular graph (the NTK-DFL topology),
NTK-DFL partition fmnist300/alpha0.1/seed0, SPEC defaults.

  python -m experiments.run --config=fmnist_regular
      300 nodes, 40 rounds; minutes per round on 2 CPU cores.
  python -m experiments.run --config=fmnist_regular:small
      first 30 nodes, 15 rounds, the default 'imex' evolution.
  python -m experiments.sweep --config=fmnist_regular:study --preset=spark_readings_core \
      --seeds=0,1,2 --workdir=results/readings_cpu/core
      the CPU study of the SPARK readings (docs/RESULTS.md): first 30 nodes, 20 rounds;
      ~3 min per exact-Jacobian run and ~7 min per sketched run with two sweeps sharing 2 cores.
  python -m experiments.sweep --config=fmnist_regular:cpu --preset=compare_fmnist \
      --seeds=0,1,2 --workdir=results/compare_cpu
      the method comparison (7 methods x alpha {0.1, 0.3, 0.5} x {5-regular, ring}) at
      CPU size: 20 nodes x 60 samples, 10 rounds; about an hour on 2 CPU cores.
      Without ':cpu' it is the 300-node paper-scale comparison (a GPU job).
"""

from experiments.configs import base


def get_config(arg: str = ""):
    return base.spark_config("fmnist_regular", arg, topology="regular", degree=5)
