"""DFedAvg: the vmapped, jitted round equals a per-node Python-loop reference."""

import chex
import pytest
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from spark_jax.algorithms import dfedavg
from spark_jax.algorithms.base import RoundInputs
from spark_jax.setting.models import make_model
from spark_jax.setting.partition import NodeData

COUNTS = [7, 12, 3, 10, 9]
N_MAX = 12
LR, BATCH, EPOCHS = 0.05, 4, 2


def _node_data(rng, counts=COUNTS, n_max=N_MAX):
    m = len(counts)
    x = np.zeros((m, n_max, 28, 28, 1), np.float32)
    y = np.zeros((m, n_max), np.int32)
    mask = np.zeros((m, n_max), bool)
    for i, n in enumerate(counts):
        x[i, :n] = rng.normal(size=(n, 28, 28, 1))
        y[i, :n] = rng.integers(0, 10, n)
        mask[i, :n] = True
    return NodeData(x=x, y=y, mask=mask, counts=np.array(counts, np.int32))


def _graph():
    # Unequal degrees: node 0 has 3 neighbours, node 2 has 1; slots padded to 4.
    adj = {0: [1, 3, 4], 1: [0, 2], 2: [1], 3: [0], 4: [0]}
    m, s = len(COUNTS), 4
    nbr = np.tile(np.arange(m)[:, None], (1, s)).astype(np.int32)
    w = np.zeros((m, s), np.float32)
    mask = np.zeros((m, s), bool)
    dense = np.zeros((m, m))
    for i, js in adj.items():
        closed = [i] + js
        nbr[i, : len(closed)] = closed
        w[i, : len(closed)] = 1.0 / len(closed)
        mask[i, : len(closed)] = True
        dense[i, closed] = 1.0 / len(closed)
    return nbr, w, mask, dense


def _config(num_nodes):
    c = ml_collections.ConfigDict()
    c.partition = ml_collections.ConfigDict({"num_nodes": num_nodes})
    c.model = ml_collections.ConfigDict({"per_node_init": True})
    c.algorithm_kw = ml_collections.ConfigDict({"lr": LR, "batch_size": BATCH, "local_epochs": EPOCHS})
    return c


def reference_batches(round_key, node, n, epochs=EPOCHS, batch=BATCH, n_max=N_MAX):
    """Row indices of each mini-batch of `node` (n real rows) in round order: each epoch
    shuffles the real rows by the same uniform keys as the algorithm, last batch short."""
    keys = jax.random.split(jax.random.fold_in(round_key, node), epochs)
    for e in range(epochs):
        u = np.asarray(jax.random.uniform(keys[e], (n_max,)))
        order = np.argsort(u[:n], kind="stable")
        for b in range(0, n, batch):
            yield order[b:b + batch]


def _reference_round(model, params, nd, round_key, dense_w):
    """Plain loop over nodes, epochs and batches on each node's unpadded rows."""

    def loss(p, xb, yb):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb), yb))

    grad = jax.jit(jax.grad(loss))
    trained = []
    for i, n in enumerate(COUNTS):
        p = jax.tree.map(lambda a: a[i], params)
        for idx in reference_batches(round_key, i, n):
            g = grad(p, nd.x[i, idx], nd.y[i, idx])
            p = jax.tree.map(lambda a, ga: a - LR * ga, p, g)
        trained.append(jax.tree.map(np.asarray, p))
    stacked = jax.tree.map(lambda *a: np.stack(a).astype(np.float64), *trained)
    return jax.tree.map(lambda a: np.tensordot(dense_w, a, axes=1), stacked)


def test_vmapped_round_equals_loop_reference():
    rng = np.random.default_rng(0)
    nd = _node_data(rng)
    nbr, w, gmask, dense = _graph()
    model = make_model("mlp", hidden=(8,))
    alg = dfedavg.make(_config(len(COUNTS)), model)
    state = alg.init(jax.random.key(1), nd)
    key = jax.random.key(7)
    inputs = RoundInputs(jnp.asarray(nbr), jnp.asarray(w), jnp.asarray(gmask), jnp.int32(0), key)
    new_state, out = jax.jit(alg.round)(state, jax.tree.map(jnp.asarray, nd), inputs)
    expected = _reference_round(model, state.params, nd, key, dense)
    chex.assert_trees_all_close(jax.tree.map(np.asarray, new_state.params), expected, atol=1e-5, rtol=1e-5)
    assert np.isfinite(out["train_loss"])


@pytest.mark.slow
def test_padding_rows_get_zero_gradient():
    """A batch slot on a padding row contributes exactly nothing to the gradient."""
    from spark_jax.setting.losses import masked_mean_cross_entropy

    model = make_model("mlp", hidden=(8,))
    params = model.init(jax.random.key(0))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(6, 28, 28, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 6))
    mask = jnp.array([True, True, True, False, False, False])
    g_masked = jax.grad(lambda p: masked_mean_cross_entropy(model.apply(p, x), y, mask))(params)
    x_garbage = x.at[3:].set(1e3)
    g_garbage = jax.grad(lambda p: masked_mean_cross_entropy(model.apply(p, x_garbage), y, mask))(params)
    g_real = jax.grad(lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x[:3]), y[:3])))(params)
    chex.assert_trees_all_close(g_masked, g_real, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_equal(g_masked, g_garbage)
    empty = jax.grad(lambda p: masked_mean_cross_entropy(model.apply(p, x), y, jnp.zeros(6, bool)))(params)
    chex.assert_trees_all_equal(empty, jax.tree.map(jnp.zeros_like, params))
