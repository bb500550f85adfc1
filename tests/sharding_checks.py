"""Multi-device checks of `tests/test_sharding.py`, run in a subprocess.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python -m tests.sharding_checks

(XLA_FLAGS must be set before jax is imported, hence a separate process.)
Runs NTK-DFL and SPARK for 3 rounds on 16 nodes with unequal data and a
re-drawn Erdos-Renyi graph, once on one device (mesh=None) and once with the
node axis split over the 8 devices (2 nodes each, so most neighbours live on
other shards), and prints one JSON line: the largest differences, the output
shardings, the compile-cache sizes and the node-count error.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from spark_jax import algorithms, parallel
from spark_jax.algorithms import ntk_dfl, spark
from spark_jax.setting.models import make_model
from spark_jax.setting.partition import NodeData
from spark_jax.setting.topology import TopologyStream
from tests.conftest import ntk_config as _config, random_node_data as _node_data, round_inputs as _inputs

jax.config.update("jax_numpy_rank_promotion", "raise")

NUM_NODES = 16
COUNTS = [3 + (5 * i) % 9 for i in range(NUM_NODES)]  # 3 .. 11 samples
ROUNDS = 3


def node_data(seed=0) -> NodeData:
    return _node_data(seed=seed, counts=COUNTS)


def configs() -> dict:
    ntk = _config()
    ntk.partition.num_nodes = NUM_NODES
    sp = _config()
    algorithms.with_algorithm(sp, "spark")
    sp.partition.num_nodes = NUM_NODES
    sp.algorithm_kw.sketch.enabled = True
    sp.algorithm_kw.sketch.k = 8
    sp.algorithm_kw.stages.unit = "round"
    sp.algorithm_kw.stages.boundaries = (0, 1)  # distillation from round 0, momentum from round 1
    sp.algorithm_kw.distill.teacher = "neighbors"  # every node's own logits, gathered across shards
    sp.algorithm_kw.momentum.velocity = "mixed"
    # The shared first layer in several column blocks on the mesh (each device holds every sample's
    # products: 4 blocks of 2 columns over 8 devices), one block on one device.
    sp.algorithm_kw.compute.share_first_layer, sp.algorithm_kw.compute.share_bytes = "on", 340_000
    return {"ntk_dfl": (ntk_dfl, ntk), "spark": (spark, sp)}


def run_rounds(make, nd, graphs, mesh, key: int = 3):
    """One jitted round per graph (state donated, as in the runner) of the algorithm `make(mesh)` builds.

    Returns (host copies of the states and metrics per round, the last state, the jitted round).
    """
    alg = make(mesh)
    state = alg.init(jax.random.key(key), nd)
    data = jax.tree.map(jnp.asarray, nd)
    if mesh is not None:
        state, data = parallel.shard_nodes(state, mesh), parallel.replicate(nd, mesh)
    round_fn = jax.jit(alg.round, donate_argnums=0)
    states, metrics = [], []
    for r, g in enumerate(graphs):
        inputs = _inputs(g, r, key=r)
        state, m = round_fn(state, data, inputs if mesh is None else parallel.replicate(inputs, mesh))
        states.append(jax.device_get(state))
        metrics.append(jax.device_get(m))
    return states, metrics, state, round_fn


def max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
    mesh = parallel.node_mesh()
    nd = node_data()
    stream = TopologyStream("er", NUM_NODES, p=0.25, dynamic=True, seed_rng_fn=lambda r: np.random.default_rng(r))
    graphs = [stream.graph(r) for r in range(ROUNDS)]
    out = {"devices": jax.device_count(), "mesh_shape": dict(mesh.shape),
           "degrees": sorted({int(d) for g in graphs for d in g.mask.sum(1)}),
           "distinct_graphs": len({g.neighbors.tobytes() for g in graphs})}
    for name, (module, config) in configs().items():
        model = make_model("mlp", hidden=(8,))
        make = lambda m, module=module, config=config: module.from_config(config, model, mesh=m)
        ref_states, ref_metrics, _, _ = run_rounds(make, nd, graphs, None)
        states, metrics, last, round_fn = run_rounds(make, nd, graphs, mesh)
        leaves = jax.tree.leaves(last)
        out[name] = {
            "state_diff": [max_diff(a, b) for a, b in zip(ref_states, states)],
            "metrics_diff": [max_diff(a, b) for a, b in zip(ref_metrics, metrics)],
            "specs": sorted({tuple(a for a in leaf.sharding.spec if a is not None) for leaf in leaves}),
            "num_devices": sorted({len(leaf.sharding.device_set) for leaf in leaves}),
            "shard_rows": sorted({s.data.shape[0] for leaf in leaves for s in leaf.addressable_shards}),
            "cache_size": round_fn._cache_size(),
        }
    try:
        parallel.shard_nodes(jnp.zeros((12, 3)), mesh)
        out["error"] = None
    except ValueError as e:
        out["error"] = str(e)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
