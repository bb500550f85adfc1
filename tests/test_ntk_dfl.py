"""NTK-DFL round: loop reference, padding inertness, no recompilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy.integrate import solve_ivp

from experiments.configs import base
from spark_jax.algorithms import ntk_dfl
from spark_jax.algorithms.base import RoundInputs
from spark_jax.models import make_model
from spark_jax.partition import NodeData
from spark_jax.topology import TopologyStream, padded_graph

COUNTS = [5, 9, 3, 7, 6, 8]
# Unequal degrees: 0-1, 0-2, 0-3, 1-4, 4-5, 3-5.
EDGES = [(0, 1), (0, 2), (0, 3), (1, 4), (4, 5), (3, 5)]
TAUS = (1, 4, 12)


def _config(integrator="euler", kernel="structured", node_chunk=4):
    c = base.base_config()
    c.algorithm = "ntk_dfl"
    c.partition.num_nodes = len(COUNTS)
    c.model.hidden = (8,)
    c.model.per_node_init = True
    c.ntk.eta0 = 0.5
    c.ntk.taus = TAUS
    c.ntk.integrator = integrator
    c.ntk.kernel = kernel
    c.ntk.node_chunk = node_chunk
    return c


def _node_data(n_max=None, garbage=0.0, seed=0, counts=COUNTS):
    """Random padded node data with `counts` real rows per node (padding holds `garbage`)."""
    rng = np.random.default_rng(seed)
    m, n_max = len(counts), n_max or max(counts)
    x = np.full((m, n_max, 28, 28, 1), garbage, np.float32)
    y = np.zeros((m, n_max), np.int32)
    mask = np.zeros((m, n_max), bool)
    for i, n in enumerate(counts):
        x[i, :n] = rng.normal(size=(n, 28, 28, 1)) * 0.5
        y[i, :n] = rng.integers(0, 10, n)
        mask[i, :n] = True
    return NodeData(x=x, y=y, mask=mask, counts=np.array(counts, np.int32))


def _adjacency():
    adj = np.zeros((len(COUNTS), len(COUNTS)), bool)
    for a, b in EDGES:
        adj[a, b] = adj[b, a] = True
    return adj


def _inputs(graph, r=0, key=0):
    return RoundInputs(jnp.asarray(graph.neighbors), jnp.asarray(graph.weights), jnp.asarray(graph.mask),
                       jnp.int32(r), jax.random.key(key))


def _run_round(config, nd, graph, r=0):
    model = make_model("mlp", hidden=(8,))
    alg = ntk_dfl.from_config(config, model)
    state = alg.init(jax.random.key(3), nd)
    new, metrics = jax.jit(alg.round)(state, jax.tree.map(jnp.asarray, nd), _inputs(graph, r))
    return model, state, new, metrics


def _softmax(F):
    P = np.exp(F - F.max(-1, keepdims=True))
    return P / P.sum(-1, keepdims=True)


def _reference_node(apply, w_bar, x, y, eta, integrator="euler"):
    """Float64 NumPy NTK-DFL update for one node on its unpadded neighbourhood (Euler loop, or
    scipy's DOP853 at rtol 1e-10 for the ODE integrators)."""
    flat_w, unravel = ravel_pytree(w_bar)
    jac = jax.jacrev(lambda p: apply(p, jnp.asarray(x)))(w_bar)  # leaves [N, C, ...]
    n, c = len(y), 10
    J = np.concatenate([np.asarray(a, np.float64).reshape(n, c, -1) for a in jax.tree.leaves(jac)], axis=-1)
    H = np.einsum("icp,jcp->ij", J, J) / c
    Y = np.eye(c)[y]
    F = np.asarray(apply(w_bar, jnp.asarray(x)), np.float64)
    R, Rs = np.zeros_like(F), {}
    if integrator == "euler":
        for t in range(max(TAUS) + 1):
            if t in TAUS:
                Rs[t] = R.copy()
            P = _softmax(F)
            R += P - Y
            F = F - eta / n * H @ (P - Y)
    else:
        rhs = lambda s, f: (-(H @ (_softmax(f.reshape(n, c)) - Y)) / n).ravel()
        grid = eta * np.arange(max(TAUS) + 1)
        sol = solve_ivp(rhs, (0.0, grid[-1]), F.ravel(), method="DOP853", t_eval=grid, rtol=1e-10, atol=1e-12)
        Fs = sol.y.T.reshape(-1, n, c)
        cum = np.concatenate([np.zeros((1, n, c)), np.cumsum(_softmax(Fs[:-1]) - Y, axis=0)])
        Rs = {t: cum[t] for t in TAUS}
    losses, cands = [], []
    for t in TAUS:
        delta = -(eta / n) * np.einsum("icp,ic->p", J, Rs[t])
        w = unravel(jnp.asarray(np.asarray(flat_w, np.float64) + delta, jnp.float32))
        logits = np.asarray(apply(w, jnp.asarray(x)), np.float64)
        logp = logits - logits.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        losses.append(-np.mean(logp[np.arange(n), y]))
        cands.append(np.asarray(flat_w, np.float64) + delta)
    best = int(np.argmin(losses))
    return cands[best], best


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
    W = np.zeros(adj.shape)
    for i in range(len(COUNTS)):
        closed = [i] + list(np.flatnonzero(adj[i]))
        W[i, closed] = 1.0 / len(closed)
    flat_params = np.stack([np.asarray(ravel_pytree(jax.tree.map(lambda a: a[i], state.params))[0], np.float64)
                            for i in range(len(COUNTS))])
    _, unravel = ravel_pytree(jax.tree.map(lambda a: a[0], state.params))
    bests = []
    for i in range(len(COUNTS)):
        w_bar = unravel(jnp.asarray(W[i] @ flat_params, jnp.float32))
        closed = [i] + list(np.flatnonzero(adj[i]))
        x = np.concatenate([nd.x[j, :COUNTS[j]] for j in closed])
        y = np.concatenate([nd.y[j, :COUNTS[j]] for j in closed])
        expected, best = _reference_node(model.apply, w_bar, x, y, eta, integrator)
        got = np.asarray(ravel_pytree(jax.tree.map(lambda a: a[i], new.params))[0])
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5, err_msg=f"node {i}")
        bests.append(best)
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
        config.ntk.node_batching = batching
        params[batching] = _run_round(config, _node_data(), graph)[2].params
    for a, b in zip(jax.tree.leaves(params["sequential"]), jax.tree.leaves(params["vectorized"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("integrator", [  # the default integrator stays in the fast loop
    "imex", pytest.param("euler", marks=pytest.mark.slow), pytest.param("dopri5", marks=pytest.mark.slow)])
@pytest.mark.device
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
