"""Sharded == unsharded for every row of `tests/contract_cases.py` (run by tests/test_algorithm_contract.py).

  XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu python -m tests.contract_mesh_check

(XLA_FLAGS must be set before jax is imported, hence a separate process.) Each row runs its rounds on
one device (mesh=None) and with the six nodes split over a 2-device 'nodes' mesh (3 each; the
re-drawn 3-regular graphs give every node neighbours on the other shard), the state donated as in
the runner. Prints one JSON line: per row, the largest |difference| of the states and of the metrics
over the rounds, and the number of devices the final state's leaves span.
"""

import json

import jax
import numpy as np

from spark_jax import algorithms, parallel
from spark_jax.setting.models import make_model
from tests.conftest import random_node_data
from tests.contract_cases import CASES, case_config, redrawn_graphs
from tests.sharding_checks import max_diff, run_rounds

DEVICES = 2


def main():
    assert jax.device_count() == DEVICES, jax.devices()
    mesh = parallel.node_mesh(DEVICES)
    nd, graphs = random_node_data(), redrawn_graphs()
    cross = [bool(np.any((g.neighbors // 3 != np.arange(6)[:, None] // 3) & g.mask)) for g in graphs]
    out = {"cross_shard_neighbours": cross}
    for case in sorted(CASES):
        make = lambda m, case=case: algorithms.make_algorithm(case_config(case), make_model("mlp", hidden=(8,)),
                                                              mesh=m)
        ref_states, ref_metrics, _, _ = run_rounds(make, nd, graphs, None, key=1)
        states, metrics, last, _ = run_rounds(make, nd, graphs, mesh, key=1)
        out[case] = {"state": max(map(max_diff, ref_states, states)),
                     "metrics": max(map(max_diff, ref_metrics, metrics)),
                     "devices": sorted({len(leaf.sharding.device_set) for leaf in jax.tree.leaves(last)})}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
