"""The contract of every registered algorithm, one row per setting in `CASES`.

Each row runs through the registry (`algorithms.make_algorithm`) on six nodes with unequal data, over
rounds whose graph is re-drawn (and, for SPARK, across its stage boundaries):
  * one compilation of the jitted round over all rounds (hyper-parameters and graphs are traced);
  * the state keeps its tree, shapes and dtypes, every leaf with the leading node axis;
  * every metric and every state leaf is finite;
  * padding is inert: garbage in the padding rows (x and labels) gives a bit-identical round.
  * sharded == unsharded: the node axis over 2 simulated devices (3 nodes each, neighbours on the
    other shard) gives the same rounds (`tests/contract_mesh_check.py`, in a subprocess).
The rows are `tests/contract_cases.py`; the independent references (float64 loops, closed forms)
live in each algorithm's own test file.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spark_jax import algorithms
from spark_jax.setting.models import make_model
from tests.conftest import NTK_COUNTS, random_node_data, round_inputs, run_device_check
from tests.contract_cases import CASES, case_config, redrawn_graphs

def _signature(state):
    return jax.tree.structure(state), [(a.shape, a.dtype) for a in jax.tree.leaves(state)]


def _all_finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(a, np.float64)))) for a in jax.tree.leaves(tree))


def test_every_registered_algorithm_has_a_row():
    """Built from the registry, so a new algorithm is under the contract with its `register` line."""
    assert set(algorithms.available()) <= {case["algorithm"] for case in CASES.values()}
    assert {"dispfl", "dfedsam", "ntk_dfl", "spark"} <= set(algorithms.available())


SLOW = ("spark_own_exact_teacher_neighbors_velocity_mixed", "spark_roundtrip_fixed_P")  # ~7 s each


@pytest.mark.device
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in sorted(CASES)])
def test_contract(case):
    config = case_config(case)
    model = make_model("mlp", hidden=(8,))
    alg = algorithms.make_algorithm(config, model)
    assert alg.name == config.algorithm
    nd = random_node_data()
    m = len(NTK_COUNTS)
    state = alg.init(jax.random.key(1), nd)
    signature = _signature(state)
    assert all(a.shape[0] == m for a in jax.tree.leaves(state))
    graphs = redrawn_graphs()
    assert len({g.neighbors.tobytes() for g in graphs}) > 1  # the graph really changes
    round_fn = jax.jit(alg.round)
    data = jax.tree.map(jnp.asarray, nd)
    for r, graph in enumerate(graphs):
        before = state
        state, metrics = round_fn(state, data, round_inputs(graph, r, key=r))
        assert _signature(state) == signature, (case, r)
        assert _all_finite(metrics) and _all_finite(state), (case, r, metrics)
        if r == 1:  # padding rows holding garbage (x and labels): the same round, bit for bit
            x, y = nd.x.copy(), nd.y.copy()
            x[~nd.mask], y[~nd.mask] = 1e3, 9
            garbage = jax.tree.map(jnp.asarray, nd._replace(x=x, y=y))
            again, _ = round_fn(before, garbage, round_inputs(graph, r, key=r))
            for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(again)):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=case)
    assert round_fn._cache_size() == 1, case


@pytest.fixture(scope="module")
def mesh_check():
    return run_device_check("tests.contract_mesh_check", devices=2, timeout=600)


@pytest.mark.slow
def test_the_mesh_check_has_cross_shard_neighbours(mesh_check):
    assert all(mesh_check["cross_shard_neighbours"])


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_sharded_equals_unsharded(mesh_check, case):
    got = mesh_check[case]
    assert got["devices"] == [2], got  # every state leaf is split over both devices
    assert got["state"] <= 1e-5 and got["metrics"] <= 1e-5, got
