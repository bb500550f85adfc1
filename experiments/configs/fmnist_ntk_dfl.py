"""NTK-DFL paper setting: Fashion-MNIST, 300 nodes, dynamic random 5-regular graph,
NTK-DFL partition fmnist300/alpha0.1/seed0, eta_0 = 0.01 (decay 0.07), taus
{100, 200, 400, 600, 800}, exact Jacobians, the default 'imex' evolution (SPEC step 7).

  python -m experiments.run --config=fmnist_ntk_dfl
      300 nodes, 40 rounds; paper scale: several minutes per round on 2 CPU
      cores (see benchmarks/round.py), seconds on a GPU.
  python -m experiments.run --config=fmnist_ntk_dfl:small
      100 nodes (the first 100 of the same partition file), 10 rounds,
      the default 'imex' evolution, 1,000-image per-node test subset.
"""

from experiments.configs import base


def get_config(arg: str = ""):
    c = base.base_config("ntk_dfl")
    c.name = "fmnist_ntk_dfl" + (f":{arg}" if arg else "")
    c.partition.kind = "ntk_dfl_file"
    c.partition.num_nodes = 300
    c.partition.alpha = 0.1
    c.partition.file_seed = 0
    c.topology.kind = "regular"
    c.topology.degree = 5
    c.topology.dynamic = True
    c.rounds = 40
    base.apply_variant(c, "fmnist_ntk_dfl", arg, num_nodes=100, rounds=10)
    return c
