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
import jax.numpy as jnp
import numpy as np

from spark_jax import algorithms, parallel
from spark_jax.setting.models import make_model
from tests.conftest import random_node_data, round_inputs
from tests.contract_cases import CASES, case_config, redrawn_graphs

DEVICES = 2


def _rounds(case, nd, graphs, mesh):
    alg = algorithms.make_algorithm(case_config(case), make_model("mlp", hidden=(8,)), mesh=mesh)
    state = alg.init(jax.random.key(1), nd)
    data = jax.tree.map(jnp.asarray, nd)
    if mesh is not None:
        state, data = parallel.shard_nodes(state, mesh), parallel.replicate(data, mesh)
    round_fn = jax.jit(alg.round, donate_argnums=0)
    out = []
    for r, graph in enumerate(graphs):
        inputs = round_inputs(graph, r, key=r)
        state, metrics = round_fn(state, data, inputs if mesh is None else parallel.replicate(inputs, mesh))
        out.append(jax.device_get((state, metrics)))
    devices = sorted({len(leaf.sharding.device_set) for leaf in jax.tree.leaves(state)})
    return out, devices


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
    assert jax.device_count() == DEVICES, jax.devices()
    mesh = parallel.node_mesh(DEVICES)
    nd, graphs = random_node_data(), redrawn_graphs()
    cross = [bool(np.any((g.neighbors // 3 != np.arange(6)[:, None] // 3) & g.mask)) for g in graphs]
    out = {"cross_shard_neighbours": cross}
    for case in sorted(CASES):
        ref, _ = _rounds(case, nd, graphs, None)
        got, devices = _rounds(case, nd, graphs, mesh)
        out[case] = {"state": max(_max_diff(a[0], b[0]) for a, b in zip(ref, got)),
                     "metrics": max(_max_diff(a[1], b[1]) for a, b in zip(ref, got)),
                     "devices": devices}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
