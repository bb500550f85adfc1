"""SPARK: reduction to NTK-DFL, momentum recursion, stage schedule, byte accounting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import base
from spark_jax import algorithms, config_options
from spark_jax.algorithms import schedules
from spark_jax.setting import comm
from spark_jax.algorithms import ntk_dfl, spark
from spark_jax.setting.models import make_model, num_params
from spark_jax.setting.partition import NodeData
from spark_jax.setting.topology import padded_graph, ring_adjacency
from tests.conftest import NTK_COUNTS as COUNTS, ntk_adjacency as _adjacency, ntk_config as _config, \
    random_node_data as _node_data, round_inputs as _inputs


def _spark_config(**overrides):
    c = _config(integrator="rk4")
    algorithms.with_algorithm(c, "spark")
    c.rounds = 6
    c.algorithm_kw.sketch.enabled = False
    c.algorithm_kw.distill.lambda_max = 0.0
    c.algorithm_kw.momentum.beta = 0.0
    for key, value in overrides.items():  # 'a__b=v' sets algorithm_kw.a.b (model.x for 'model__x')
        *parents, last = key.split("__")
        node = c if parents[:1] == ["model"] else c.algorithm_kw
        for part in parents:
            node = node[part]
        node[last] = value
    return c


@pytest.mark.device
def test_all_parts_off_equals_ntk_dfl_round_for_round():  # a core SPEC check: in the fast loop too
    nd = jax.tree.map(jnp.asarray, _node_data())
    graph = padded_graph(_adjacency(), "uniform")
    model = make_model("mlp", hidden=(8,))
    config = _spark_config()
    ref, alg = ntk_dfl.from_config(config, model), spark.from_config(config, model)
    ref_state, state = ref.init(jax.random.key(3), nd), alg.init(jax.random.key(3), nd)
    ref_round, spark_round = jax.jit(ref.round), jax.jit(alg.round)
    for r in range(3):
        ref_state, ref_metrics = ref_round(ref_state, nd, _inputs(graph, r))
        state, metrics = spark_round(state, nd, _inputs(graph, r))
        for a, b in zip(jax.tree.leaves(ref_state.params), jax.tree.leaves(state.params)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(metrics["tau_histogram"], ref_metrics["tau_histogram"])


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_nesterov_momentum_equals_numpy_recursion_on_a_linear_model():
    """Linear softmax model, Euler, tau = 1: the NTK step is exactly -eta * grad(mean CE)."""
    m, n, eta, beta = 3, 10, 0.3, 0.6
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(n, 28, 28, 1)) * 0.3).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    nd = NodeData(x=np.broadcast_to(x, (m,) + x.shape).copy(), y=np.tile(y, (m, 1)),
                  mask=np.ones((m, n), bool), counts=np.full(m, n, np.int32))
    c = _spark_config(taus=(1,), evolution__integrator="euler", eta0=eta, decay=0.0,
                      momentum__beta=beta, model__per_node_init=False)
    c.partition.num_nodes = m
    c.algorithm_kw.stages.unit, c.algorithm_kw.stages.boundaries = "round", (0, 0)  # stage 3 from the start
    model = make_model("mlp", hidden=())
    alg = spark.from_config(c, model)
    state = alg.init(jax.random.key(0), nd)
    graph = padded_graph(~np.eye(m, dtype=bool), "uniform")  # complete graph, identical nodes
    round_fn = jax.jit(alg.round)
    W = np.asarray(state.params["Dense_0"]["kernel"][0], np.float64)
    b = np.asarray(state.params["Dense_0"]["bias"][0], np.float64)
    vW, vb = np.zeros_like(W), np.zeros_like(b)
    X, Y = x.reshape(n, -1).astype(np.float64), np.eye(10)[y]
    for r in range(4):
        state, metrics = round_fn(state, jax.tree.map(jnp.asarray, nd), _inputs(graph, r))
        residual = _softmax(X @ W + b) - Y
        dW, db = -eta * X.T @ residual / n, -eta * residual.mean(0)
        vW, vb = beta * vW + dW, beta * vb + db
        W, b = W + dW + beta * vW, b + db + beta * vb
        assert float(metrics["beta"]) == pytest.approx(beta)
        for i in range(m):
            np.testing.assert_allclose(state.params["Dense_0"]["kernel"][i], W, rtol=1e-4, atol=2e-6)
            np.testing.assert_allclose(state.params["Dense_0"]["bias"][i], b, rtol=1e-4, atol=2e-6)
            np.testing.assert_allclose(state.velocity["Dense_0"]["kernel"][i], vW, rtol=1e-4, atol=2e-6)


@pytest.mark.device
@pytest.mark.slow
def test_stage_schedule_values_and_no_recompilation_across_boundaries():
    nd = jax.tree.map(jnp.asarray, _node_data())
    graph = padded_graph(_adjacency(), "uniform")
    c = _spark_config(sketch__enabled=True, sketch__k=16, distill__lambda_max=0.5, momentum__beta=0.9)
    c.algorithm_kw.stages.unit, c.algorithm_kw.stages.boundaries = "round", (2, 4)
    alg = spark.from_config(c, make_model("mlp", hidden=(8,)))
    state = alg.init(jax.random.key(0), nd)
    round_fn = jax.jit(alg.round)
    lams, betas = [], []
    for r in range(6):
        state, metrics = round_fn(state, nd, _inputs(graph, r, key=r))
        lams.append(float(metrics["lambda"]))
        betas.append(float(metrics["beta"]))
    assert round_fn._cache_size() == 1
    np.testing.assert_allclose(lams, [0, 0, 0, 0.25, 0.5, 0.5], atol=1e-7)
    np.testing.assert_allclose(betas, [0, 0, 0, 0, 0.9, 0.9], atol=1e-7)
    for leaf in jax.tree.leaves(state.params):
        assert np.all(np.isfinite(leaf))


def test_schedules():
    assert schedules.stage_boundaries((1 / 3, 2 / 3), "fraction", 30) == (10, 20)
    assert schedules.stage_boundaries((5, 12), "round", 30) == (5, 12)
    with pytest.raises(ValueError, match="ordered"):
        schedules.stage_boundaries((0.7, 0.2), "fraction", 30)
    with pytest.raises(ValueError, match="fractions"):
        schedules.stage_boundaries((0.5, 1.5), "fraction", 30)
    cos = [float(schedules.distill_weight(r, 2, 6, 1.0, "cosine")) for r in range(8)]
    np.testing.assert_allclose(cos, [0, 0] + [0.5 * (1 - np.cos(np.pi * p)) for p in (0, .25, .5, .75)] + [1, 1],
                               atol=1e-6)
    assert float(schedules.learning_rate(0.01, 0.07, 10)) == pytest.approx(0.01 * np.exp(-0.7), rel=1e-6)


def test_distillation_targets():
    rng = np.random.default_rng(0)
    y = np.eye(4)[rng.integers(0, 4, 5)]
    f = rng.normal(size=(5, 4))
    q = _softmax(f / 2.0)
    np.testing.assert_allclose(spark.distillation_targets(jnp.asarray(y), jnp.asarray(f), 0.3, 2.0),
                               0.7 * y + 0.3 * q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sketch_on", [True, False])
def test_byte_accounting_on_a_four_node_ring(sketch_on):
    counts = np.array([3, 4, 5, 6])
    graph = padded_graph(ring_adjacency(4), "uniform")
    c = _spark_config(sketch__enabled=sketch_on, sketch__k=7)
    c.partition.num_nodes = 4
    model = make_model("mlp", hidden=(8,))
    d = num_params(model.init(jax.random.key(0)))
    got = spark.from_config(c, model).message_bytes(graph.neighbors, graph.mask, counts)
    # Ring 0-1-2-3-0: node i receives rows from i-1 and i+1.
    rows = (6 + 4) + (3 + 5) + (4 + 6) + (5 + 3)
    jac_cols = 2 * 7 if sketch_on else d  # two layers x k, or all d parameters
    assert got["jacobian_bytes"] == rows * 10 * jac_cols * 4
    assert got["message_bytes"] == rows * 10 * jac_cols * 4 + rows * 2 * 10 * 4
    assert got["exact_jacobian_bytes"] == rows * 10 * d * 4
    assert comm.weight_bytes(graph.neighbors, graph.mask, d) == 8 * d * 4
    if sketch_on:  # the headline reduction for this model: 1 - 2k/d
        assert 1 - got["jacobian_bytes"] / got["exact_jacobian_bytes"] == pytest.approx(1 - 14 / d)


def test_default_mlp_reduction_is_98_7_percent():
    d = num_params(make_model("mlp").init(jax.random.key(0)))
    assert round(100 * (1 - 2 * 512 / d), 1) == 98.7
    assert base.base_config("spark").algorithm_kw.sketch.k == 512


@pytest.mark.parametrize("update_mode,teacher,method", [  # own_exact + neighbors + structured: the contract test
    ("roundtrip", "averaged", "forward"),
    ("backproject", "neighbors", "materialize")])
@pytest.mark.slow
def test_every_option_runs_and_stays_finite(update_mode, teacher, method):
    nd = jax.tree.map(jnp.asarray, _node_data())
    graph = padded_graph(_adjacency(), "uniform")
    c = _spark_config(sketch__enabled=True, sketch__k=8, sketch__update_mode=update_mode, compute__sketch_method=method,
                      distill__teacher=teacher, distill__lambda_max=0.5, momentum__beta=0.9,
                      momentum__velocity="mixed")
    c.algorithm_kw.stages.unit, c.algorithm_kw.stages.boundaries, c.algorithm_kw.distill.ramp = "round", (0, 1), "cosine"
    alg = spark.from_config(c, make_model("mlp", hidden=(8,)))
    state = alg.init(jax.random.key(0), nd)
    for r in range(2):
        state, metrics = jax.jit(alg.round)(state, nd, _inputs(graph, r, key=r))
    for leaf in jax.tree.leaves((state.params, state.velocity)):
        assert np.all(np.isfinite(leaf))
    assert float(metrics["lambda"]) == pytest.approx(0.5)


@pytest.mark.parametrize("share,blocks,update_mode", [("on", 3, "backproject"), ("auto", 1, "own_exact")])
@pytest.mark.device
@pytest.mark.slow
def test_shared_first_layer_equals_per_neighbourhood_sketch(share, blocks, update_mode):
    """algorithm_kw.compute.share_first_layer (one [1; x] P_0 per sample, in column blocks, kernels summed over the
    blocks, the update P P^T of the exact one) gives the same rounds as each neighbourhood's own
    sketch, compiled once."""
    nd = jax.tree.map(jnp.asarray, _node_data())
    graph = padded_graph(_adjacency(), "uniform")
    model = make_model("mlp", hidden=(8,))
    k, slots, n_max = 8, graph.neighbors.shape[1], nd.x.shape[1]
    rows, m = slots * n_max, len(COUNTS)
    # Room for 3 columns of the products of all M * n_max samples besides every node's kernel (x2).
    bound = 2 * m * rows * rows * 4 + 3 * (4 * m * n_max * 8)
    states = []
    for mode in ("off", share):
        c = _spark_config(sketch__enabled=True, sketch__k=k, sketch__update_mode=update_mode, compute__node_chunk=4,
                          taus=(6, 12), eta0=0.1, momentum__beta=0.5)  # tau > 1: the update uses H
        c.algorithm_kw.compute.share_first_layer = mode
        c.algorithm_kw.compute.share_bytes = bound if blocks > 1 else 1e12
        c.algorithm_kw.stages.unit, c.algorithm_kw.stages.boundaries = "round", (0, 0)
        plan = spark.share_plan(config_options.sketch_options(c.algorithm_kw.sketch),
                                config_options.compute_options(c.algorithm_kw.compute),
                                model.init(jax.random.key(0)), c.partition.num_nodes, n_max, slots, model.structured)
        assert plan.num_blocks == (0 if mode == "off" else blocks), plan
        alg = spark.from_config(c, model)
        state = alg.init(jax.random.key(0), nd)
        round_fn = jax.jit(alg.round)
        for r in range(2):
            state, metrics = round_fn(state, nd, _inputs(graph, r, key=r))
        assert round_fn._cache_size() == 1
        states.append(state.params)
    for a, b in zip(*map(jax.tree.leaves, states)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5 * np.abs(a).max())
    moved = [np.abs(np.asarray(a) - b).max() for a, b in zip(jax.tree.leaves(states[0]),
                                                             jax.tree.leaves(alg.init(jax.random.key(0), nd).params))]
    assert min(moved) > 1e-3  # the rounds did move every leaf


@pytest.mark.slow
def test_own_exact_with_no_neighbours_is_the_exact_update():
    """Isolated nodes, one candidate tau = 1 (so R = softmax(F0) - Y does not depend on the
    kernel): own_exact must use only exact VJPs and equal the exact round; plain
    back-projection must not."""
    nd = jax.tree.map(jnp.asarray, _node_data())
    isolated = padded_graph(np.zeros((6, 6), bool), "uniform", num_slots=2)
    model = make_model("mlp", hidden=(8,))
    results = {}
    for name, over in {"exact": {}, "own_exact": {"sketch__update_mode": "own_exact"},
                       "backproject": {"sketch__update_mode": "backproject"}}.items():
        c = _spark_config(taus=(1,), **over)
        c.algorithm_kw.sketch.enabled, c.algorithm_kw.sketch.k = bool(over), 4
        alg = spark.from_config(c, model)
        state, _ = jax.jit(alg.round)(alg.init(jax.random.key(1), nd), nd, _inputs(isolated, 0))
        results[name] = jax.tree.leaves(state.params)
    for a, b in zip(results["exact"], results["own_exact"]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(a, b, atol=1e-6) for a, b in zip(results["exact"], results["backproject"]))
