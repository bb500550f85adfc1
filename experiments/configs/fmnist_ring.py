"""Fashion-MNIST, 300 nodes, dynamic ring, NTK-DFL partition alpha = 0.1 (seed 0).

Until SPARK lands this runs DFedAvg (SPEC "Baselines": lr 0.1, batch 25,
20 local epochs).

  python -m experiments.run --config=fmnist_ring
      300 nodes; about 25 s per round on 2 CPU cores (40 rounds).
  python -m experiments.run --config=fmnist_ring:small
      100 nodes, 5 local epochs, 1,000-image per-node test subset; about 5 s
      per round on 2 CPU cores (20 rounds, under 2 minutes).
"""

from experiments.configs import base


def get_config(arg: str = ""):
    c = base.base_config()
    c.name = "fmnist_ring" + (f":{arg}" if arg else "")
    c.algorithm = "dfedavg"
    c.topology.kind = "ring"
    c.topology.dynamic = True
    if arg == "small":
        c.partition.num_nodes = 100
        c.dfedavg.local_epochs = 5
        c.rounds = 20
        c.eval.per_node_test_subset = 1000
    elif arg:
        raise ValueError(f"fmnist_ring: unknown argument {arg!r}; known: 'small'")
    return c
