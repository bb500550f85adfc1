"""NTK-DFL round: loop reference, padding inertness, no recompilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from spark_jax.algorithms import ntk_dfl
from spark_jax.setting.models import make_model
from spark_jax.setting.topology import TopologyStream, padded_graph
from tests.references import ntk_dfl_reference_round
from tests.conftest import NTK_COUNTS, NTK_TAUS, ntk_adjacency, ntk_config, random_node_data, round_inputs

COUNTS, TAUS = NTK_COUNTS, NTK_TAUS
_config, _node_data, _adjacency, _inputs = ntk_config, random_node_data, ntk_adjacency, round_inputs


def _run_round(config, nd, graph, r=0):
    model = make_model("mlp", hidden=(8,))
    alg = ntk_dfl.from_config(config, model)
    state = alg.init(jax.random.key(3), nd)
    new, metrics = jax.jit(alg.round)(state, jax.tree.map(jnp.asarray, nd), _inputs(graph, r))
    return model, state, new, metrics


@pytest.mark.parametrize("kernel,integrator", [  # the default path stays in the fast loop (-m "not slow")
    ("structured", "imex"),
    pytest.param("structured", "euler", marks=pytest.mark.slow),
    pytest.param("contraction", "euler", marks=pytest.mark.slow),
    pytest.param("structured", "dopri5", marks=pytest.mark.slow)])
@pytest.mark.device
def test_round_equals_per_node_loop_reference(kernel, integrator):
    nd = _node_data()
    adj = _adjacency()
    graph = padded_graph(adj, "uniform")
    config = _config(kernel=kernel, integrator=integrator)
    model, state, new, metrics = _run_round(config, nd, graph, r=2)
    eta = 0.5 * np.exp(-0.07 * 2)
    expected, bests = ntk_dfl_reference_round(model.apply, state.params, nd, adj, eta, TAUS, integrator)
    for i in range(len(COUNTS)):
        got = np.asarray(ravel_pytree(jax.tree.map(lambda a: a[i], new.params))[0])
        np.testing.assert_allclose(got, expected[i], rtol=2e-4, atol=2e-5, err_msg=f"node {i}")
    np.testing.assert_array_equal(metrics["tau_histogram"], np.bincount(bests, minlength=len(TAUS)))
    assert np.isclose(metrics["eta"], eta)


@pytest.mark.slow
def test_padding_is_inert():
    """Extra padded rows (holding garbage) and extra padded neighbour slots change nothing."""
    adj = _adjacency()
    config = _config(integrator="rk4")
    _, _, tight, _ = _run_round(config, _node_data(), padded_graph(adj, "uniform"))
    _, _, loose, _ = _run_round(config, _node_data(n_max=14, garbage=7.0),
                                padded_graph(adj, "uniform", num_slots=6))
    for a, b in zip(jax.tree.leaves(tight.params), jax.tree.leaves(loose.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.device
@pytest.mark.slow
def test_node_batching_changes_no_value():
    """Kernel and evolution per node in a loop ('sequential', CPU's 'auto') or as one batched program."""
    graph = padded_graph(_adjacency(), "uniform")
    params = {}
    for batching in ("sequential", "vectorized"):
        config = _config(integrator="dopri5")
        config.algorithm_kw.compute.node_batching = batching
        params[batching] = _run_round(config, _node_data(), graph)[2].params
    for a, b in zip(jax.tree.leaves(params["sequential"]), jax.tree.leaves(params["vectorized"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("integrator", ["euler", "dopri5"])  # the default ('imex'): tests/test_algorithm_contract.py
@pytest.mark.device
@pytest.mark.slow
def test_no_recompilation_across_rounds_with_redrawn_graphs(integrator):
    nd = jax.tree.map(jnp.asarray, _node_data())
    config = _config(integrator=integrator)
    model = make_model("mlp", hidden=(8,))
    alg = ntk_dfl.from_config(config, model)
    state = alg.init(jax.random.key(0), nd)
    stream = TopologyStream("regular", len(COUNTS), degree=3, dynamic=True,
                            seed_rng_fn=lambda r: np.random.default_rng(r))
    round_fn = jax.jit(alg.round)
    graphs = [stream.graph(r) for r in range(5)]
    assert len({g.neighbors.tobytes() for g in graphs}) > 1  # the graph really changes
    for r, g in enumerate(graphs):
        state, _ = round_fn(state, nd, _inputs(g, r, key=r))
    assert round_fn._cache_size() == 1
