"""The node axis over 2 simulated devices for every row of `tests/contract_cases.py` (run by
tests/test_algorithm_contract.py, which compares it with its own one-device rounds: sharded == unsharded).

  XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu python -m tests.contract_mesh_check OUT.npz

(XLA_FLAGS must be set before jax is imported, hence a separate process.) Each row runs its rounds with
the six nodes split over a 2-device 'nodes' mesh (3 each; the re-drawn 3-regular graphs give every node
neighbours on the other shard), the state donated as in the runner. OUT.npz holds, per row and round,
the state's and the metrics' leaves (`flat_rounds`); one JSON line says whether every graph has
cross-shard neighbours and, per row, the number of devices the final state's leaves span.
"""

import json
import sys

import jax
import numpy as np

from spark_jax import algorithms, parallel
from spark_jax.setting.models import make_model
from tests.conftest import random_node_data
from tests.contract_cases import CASES, case_config, flat_rounds, redrawn_graphs
from tests.sharding_checks import run_rounds

DEVICES = 2


def main(out_path: str):
    assert jax.device_count() == DEVICES, jax.devices()
    mesh = parallel.node_mesh(DEVICES)
    nd, graphs = random_node_data(), redrawn_graphs()
    cross = [bool(np.any((g.neighbors // 3 != np.arange(6)[:, None] // 3) & g.mask)) for g in graphs]
    out, arrays = {"cross_shard_neighbours": cross}, {}
    for case in sorted(CASES):
        make = lambda m, case=case: algorithms.make_algorithm(case_config(case), make_model("mlp", hidden=(8,)),
                                                              mesh=m)
        states, metrics, last, _ = run_rounds(make, nd, graphs, mesh, key=1)
        arrays.update(flat_rounds(case, states, metrics))
        out[case] = {"devices": sorted({len(leaf.sharding.device_set) for leaf in jax.tree.leaves(last)})}
    np.savez(out_path, **arrays)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
