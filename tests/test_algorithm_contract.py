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

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spark_jax import algorithms
from spark_jax.setting.models import make_model
from tests.conftest import NTK_COUNTS, random_node_data, round_inputs, run_device_check
from tests.contract_cases import CASES, case_config, flat_rounds, redrawn_graphs


def _signature(state):
    return jax.tree.structure(state), [(a.shape, a.dtype) for a in jax.tree.leaves(state)]


def _all_finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(a, np.float64)))) for a in jax.tree.leaves(tree))


def test_every_registered_algorithm_has_a_row():
    """Built from the registry, so a new algorithm is under the contract with its `register` line."""
    assert set(algorithms.available()) <= {case["algorithm"] for case in CASES.values()}
    assert {"dispfl", "dfedsam", "ntk_dfl", "spark"} <= set(algorithms.available())


SLOW = ("spark_own_exact_teacher_neighbors_velocity_mixed", "spark_roundtrip_fixed_P")  # ~7 s each


@functools.cache
def one_device_rounds(case: str) -> dict:
    """Row `case`'s rounds on one device (cached: the contract checks them, the mesh check compares with
    them): host copies of the state and metrics per round, the round-1 rerun with garbage in the padding
    rows, the state signatures and the jitted round's compile-cache size."""
    config = case_config(case)
    alg = algorithms.make_algorithm(config, make_model("mlp", hidden=(8,)))
    assert alg.name == config.algorithm
    nd = random_node_data()
    state = alg.init(jax.random.key(1), nd)
    out = {"signatures": [_signature(state)], "states": [], "metrics": [], "garbage_round_1": None}
    round_fn = jax.jit(alg.round)
    data = jax.tree.map(jnp.asarray, nd)
    for r, graph in enumerate(redrawn_graphs()):
        before = state
        state, metrics = round_fn(state, data, round_inputs(graph, r, key=r))
        out["signatures"].append(_signature(state))
        out["states"].append(jax.device_get(state))
        out["metrics"].append(jax.device_get(metrics))
        if r == 1:  # padding rows holding garbage (x and labels): the same round, bit for bit
            x, y = nd.x.copy(), nd.y.copy()
            x[~nd.mask], y[~nd.mask] = 1e3, 9
            garbage = jax.tree.map(jnp.asarray, nd._replace(x=x, y=y))
            out["garbage_round_1"] = jax.device_get(round_fn(before, garbage, round_inputs(graph, r, key=r))[0])
    out["cache_size"] = round_fn._cache_size()
    return out


@pytest.mark.device
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in sorted(CASES)])
def test_contract(case):
    assert len({g.neighbors.tobytes() for g in redrawn_graphs()}) > 1  # the graph really changes
    got = one_device_rounds(case)
    assert all(a.shape[0] == len(NTK_COUNTS) for a in jax.tree.leaves(got["states"][0]))
    assert all(sig == got["signatures"][0] for sig in got["signatures"]), case
    for r, (state, metrics) in enumerate(zip(got["states"], got["metrics"])):
        assert _all_finite(metrics) and _all_finite(state), (case, r, metrics)
    for a, b in zip(jax.tree.leaves(got["states"][1]), jax.tree.leaves(got["garbage_round_1"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=case)
    assert got["cache_size"] == 1, case


@pytest.fixture(scope="module")
def mesh_check(tmp_path_factory):
    """The subprocess's JSON line and its per-round arrays (`tests/contract_mesh_check.py`)."""
    out = tmp_path_factory.mktemp("mesh") / "rounds.npz"
    summary = run_device_check("tests.contract_mesh_check", devices=2, timeout=600, args=[str(out)])
    with np.load(out) as arrays:
        return summary, dict(arrays)


@pytest.mark.slow
def test_the_mesh_check_has_cross_shard_neighbours(mesh_check):
    assert all(mesh_check[0]["cross_shard_neighbours"])


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_sharded_equals_unsharded(mesh_check, case):
    summary, sharded = mesh_check
    assert summary[case]["devices"] == [2], summary[case]  # every state leaf is split over both devices
    ref = one_device_rounds(case)
    unsharded = flat_rounds(case, ref["states"], ref["metrics"])
    assert unsharded.keys() == {k for k in sharded if k.startswith(f"{case}/")}
    for name, want in unsharded.items():
        np.testing.assert_allclose(np.asarray(sharded[name], np.float64), np.asarray(want, np.float64), rtol=0,
                                   atol=1e-5, err_msg=name)
