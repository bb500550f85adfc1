"""The contract of every registered algorithm, one row per setting in `CASES`.

Each row runs through the registry (`algorithms.make_algorithm`) on six nodes with unequal data, over
rounds whose graph is re-drawn (and, for SPARK, across its stage boundaries):
  * one compilation of the jitted round over all rounds (hyper-parameters and graphs are traced);
  * the state keeps its tree, shapes and dtypes, every leaf with the leading node axis;
  * every metric and every state leaf is finite;
  * padding is inert: garbage in the padding rows (x and labels) gives a bit-identical round.
The independent references (float64 loops, closed forms) live in each algorithm's own test file;
the multi-device equality in tests/test_sharding.py and tests/dispfl_mesh_check.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spark_jax import algorithms
from spark_jax.lab.sweep_grid import set_field
from spark_jax.setting.models import make_model
from spark_jax.setting.topology import TopologyStream
from tests.conftest import NTK_COUNTS, ntk_config, random_node_data, round_inputs

ROUNDS = 3
BASELINES = ("dfedavg", "dfedavgm", "dpsgd", "dfedsam", "dispfl")
SPARK = {"algorithm": "spark", "sketch.k": 8, "stages.unit": "round", "stages.boundaries": (1, 2)}

# name -> dotted config overrides. Every registered algorithm appears at least once.
CASES = {
    "ntk_dfl": {"algorithm": "ntk_dfl"},
    "spark_v1": SPARK,
    "spark_v2": {**SPARK, "sketch.enabled": False},
    "spark_own_exact_teacher_neighbors_velocity_mixed": {
        **SPARK, "sketch.update_mode": "own_exact", "distill.teacher": "neighbors", "momentum.velocity": "mixed"},
    "spark_roundtrip_fixed_P": {**SPARK, "sketch.update_mode": "roundtrip", "sketch.redraw": False},
    **{name: {"algorithm": name} for name in BASELINES},
}


def _config(overrides):
    c = ntk_config(integrator="imex")
    c.rounds = ROUNDS
    for name in BASELINES:  # one short epoch of small batches: the contract, not the training
        c[name].local_epochs, c[name].batch_size = 1, 4
    for path, value in overrides.items():
        set_field(c, path, value)
    return c


def _signature(state):
    return jax.tree.structure(state), [(a.shape, a.dtype) for a in jax.tree.leaves(state)]


def _all_finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(a, np.float64)))) for a in jax.tree.leaves(tree))


def test_every_registered_algorithm_has_a_row():
    assert set(algorithms.available()) <= {case["algorithm"] for case in CASES.values()}


SLOW = ("spark_own_exact_teacher_neighbors_velocity_mixed", "spark_roundtrip_fixed_P")  # ~7 s each


@pytest.mark.device
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in sorted(CASES)])
def test_contract(case):
    config = _config(CASES[case])
    model = make_model("mlp", hidden=(8,))
    alg = algorithms.make_algorithm(config, model)
    assert alg.name == config.algorithm
    nd = random_node_data()
    m = len(NTK_COUNTS)
    state = alg.init(jax.random.key(1), nd)
    signature = _signature(state)
    assert all(a.shape[0] == m for a in jax.tree.leaves(state))
    stream = TopologyStream("regular", m, degree=3, dynamic=True, seed_rng_fn=lambda r: np.random.default_rng(r))
    graphs = [stream.graph(r) for r in range(ROUNDS)]
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
