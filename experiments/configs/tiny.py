"""A seconds-long smoke config for tests: 8 nodes, 40 samples each, 2 rounds.

  python -m experiments.run --config=tiny
      8 nodes, dynamic ring, DFedAvg 1 local epoch; a few seconds on 2 CPU cores.
"""

from experiments.configs import base


def get_config(arg: str = ""):
    c = base.base_config()
    c.name = "tiny" + (f":{arg}" if arg else "")
    c.rounds = 2
    c.partition.kind = "ntk_dfl"
    c.partition.num_nodes = 8
    c.partition.samples_per_node = 40
    c.topology.kind = "ring"
    c.algorithm_kw.local_epochs = 1
    c.algorithm_kw.batch_size = 10
    c.eval.per_node_test_subset = 500
    c.eval.node_chunk = 4
    c.eval.top_m = 2
    c.progress = False
    if arg not in ("", "small"):  # ':small' is accepted (it is already small)
        raise ValueError(f"tiny: unknown argument {arg!r}; known: 'small'")
    return c
