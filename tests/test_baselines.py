"""DFedAvgM, D-PSGD, DFedSAM: vmapped jitted rounds equal per-node Python-loop references."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from spark_jax.algorithms import available, local_baselines
from spark_jax.algorithms.base import RoundInputs
from spark_jax.setting.models import make_model
from spark_jax.setting.partition import NodeData

from tests.test_dfedavg import COUNTS, _graph, _node_data, reference_batches

BATCH, EPOCHS = 4, 2
# Test-sized hyperparameters (large enough that momentum, SAM and decay matter).
HP = {
    "dfedavgm": {"lr": 0.05, "momentum": 0.9},
    "dpsgd": {"lr": 0.05},
    "dfedsam": {"lr": 0.05, "lr_decay": 0.9, "momentum": 0.9, "weight_decay": 0.01, "rho": 0.05},
}
FACTORIES = {"dfedavgm": local_baselines.make_dfedavgm, "dpsgd": local_baselines.make_dpsgd,
             "dfedsam": local_baselines.make_dfedsam}


def _config(name, num_nodes, per_node_init=True, batch=BATCH, epochs=EPOCHS, **overrides):
    c = ml_collections.ConfigDict()
    c.partition = ml_collections.ConfigDict({"num_nodes": num_nodes})
    c.model = ml_collections.ConfigDict({"per_node_init": per_node_init})
    c.algorithm_kw = ml_collections.ConfigDict({**HP[name], "batch_size": batch, "local_epochs": epochs, **overrides})
    return c


def _tree_norm(t):
    return jnp.sqrt(sum(jnp.sum(a * a) for a in jax.tree.leaves(t)))


def _reference_round(name, model, params, nd, round_key, dense_w, r):
    """Plain loop over nodes, epochs and batches on each node's unpadded rows, hand-written optimizers."""
    hp = HP[name]

    def loss(p, xb, yb):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb), yb))

    grad = jax.jit(jax.grad(loss))
    tmap = jax.tree.map
    trained = []
    for i, n in enumerate(COUNTS):
        p = tmap(lambda a: a[i], params)
        buf = tmap(jnp.zeros_like, p)  # momentum restarts every round
        for idx in reference_batches(round_key, i, n):
            xb, yb = nd.x[i, idx], nd.y[i, idx]
            g = grad(p, xb, yb)
            if name == "dpsgd":
                p = tmap(lambda a, ga: a - hp["lr"] * ga, p, g)
            elif name == "dfedavgm":
                buf = tmap(lambda bb, ga: ga + hp["momentum"] * bb, buf, g)
                p = tmap(lambda a, bb: a - hp["lr"] * bb, p, buf)
            else:  # dfedsam
                nrm = _tree_norm(g)
                g_sam = grad(tmap(lambda a, ga: a + hp["rho"] * ga / nrm, p, g), xb, yb)
                d = tmap(lambda gs, a: gs + hp["weight_decay"] * a, g_sam, p)
                buf = tmap(lambda bb, da: da + hp["momentum"] * bb, buf, d)
                lr = hp["lr"] * hp["lr_decay"] ** r
                p = tmap(lambda a, bb: a - lr * bb, p, buf)
        trained.append(tmap(np.asarray, p))
    stacked = jax.tree.map(lambda *a: np.stack(a).astype(np.float64), *trained)
    return jax.tree.map(lambda a: np.tensordot(dense_w, a, axes=1), stacked)


def _inputs(r=0, key=7, graph=None):
    nbr, w, gmask, _ = graph or _graph()
    return RoundInputs(jnp.asarray(nbr), jnp.asarray(w), jnp.asarray(gmask), jnp.int32(r), jax.random.key(key))


def test_registered():
    assert {"dfedavgm", "dpsgd", "dfedsam"} <= set(available())


@pytest.mark.parametrize("name,r", [("dfedavgm", 0), ("dpsgd", 0), ("dfedsam", 2)])
@pytest.mark.slow
def test_vmapped_round_equals_loop_reference(name, r):
    nd = _node_data(np.random.default_rng(0))
    model = make_model("mlp", hidden=(8,))
    alg = FACTORIES[name](_config(name, len(COUNTS)), model)
    state = alg.init(jax.random.key(1), nd)
    inputs = _inputs(r)
    new_state, out = jax.jit(alg.round)(state, jax.tree.map(jnp.asarray, nd), inputs)
    expected = _reference_round(name, model, state.params, nd, inputs.key, _graph()[3], r)
    chex.assert_trees_all_close(jax.tree.map(np.asarray, new_state.params), expected, atol=2e-5, rtol=2e-5)
    assert np.isfinite(out["train_loss"])


def test_sam_step_on_toy_model():
    """One DFedSAM step (SAM gradient, then weight decay + momentum) by hand on a linear least-squares model."""
    rng = np.random.default_rng(3)
    A = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    t = jnp.asarray(rng.normal(size=6), jnp.float32)
    f = lambda p: 0.5 * jnp.sum((A @ p["w"] + p["b"] - t) ** 2)
    p = {"w": jnp.asarray(rng.normal(size=3), jnp.float32), "b": jnp.float32(0.3)}
    rho, lr, mu, wd = 0.1, 0.05, 0.99, 5e-4

    def grad_by_hand(q):
        res = A @ q["w"] + q["b"] - t
        return {"w": A.T @ res, "b": jnp.sum(res)}

    g = grad_by_hand(p)
    nrm = jnp.sqrt(jnp.sum(g["w"] ** 2) + g["b"] ** 2)
    g_sam = grad_by_hand({k: p[k] + rho * g[k] / nrm for k in p})
    loss, got = local_baselines.sam_value_and_grad(rho)(f, p)
    chex.assert_trees_all_close(got, g_sam, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, f(p), rtol=1e-6)

    # Optimizer step from a non-zero momentum buffer (after a first step).
    opt = local_baselines.dfedsam_optimizer(lr, mu, wd)
    state = opt.init(p)
    _, state = opt.update(g, state, p)
    buf = {k: g[k] + wd * p[k] for k in p}
    updates, _ = opt.update(got, state, p)
    buf = {k: g_sam[k] + wd * p[k] + mu * buf[k] for k in p}
    chex.assert_trees_all_close(updates, {k: -lr * buf[k] for k in p}, rtol=1e-5, atol=1e-6)

    # ||g|| = 0 (at the minimum of a zero loss): no perturbation, no NaN.
    zero_loss, g0 = local_baselines.sam_value_and_grad(rho)(lambda q: 0.0 * f(q), p)
    chex.assert_trees_all_equal(g0, jax.tree.map(jnp.zeros_like, p))


def test_dpsgd_iid_complete_one_step_is_centralized_gd():
    m, n, lr = 4, 16, 0.1
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    nd = NodeData(x=np.broadcast_to(x, (m, *x.shape)).copy(), y=np.broadcast_to(y, (m, n)).copy(),
                  mask=np.ones((m, n), bool), counts=np.full(m, n, np.int32))
    model = make_model("mlp", hidden=(8,))
    cfg = _config("dpsgd", m, per_node_init=False, batch=n, epochs=1, lr=lr)
    alg = local_baselines.make_dpsgd(cfg, model)
    state = alg.init(jax.random.key(2), nd)
    nbr = np.tile(np.arange(m), (m, 1))
    nbr = np.stack([np.roll(nbr[i], -i) for i in range(m)]).astype(np.int32)  # slot 0 = self
    graph = (nbr, np.full((m, m), 1.0 / m, np.float32), np.ones((m, m), bool), None)
    new_state, _ = jax.jit(alg.round)(state, jax.tree.map(jnp.asarray, nd), _inputs(0, 3, graph))

    w0 = jax.tree.map(lambda a: a[0], state.params)
    x_all, y_all = np.concatenate([x] * m), np.concatenate([y] * m)
    g = jax.grad(lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x_all), y_all)))(w0)
    expected = jax.tree.map(lambda a, ga: np.broadcast_to(np.asarray(a - lr * ga), (m, *a.shape)), w0, g)
    chex.assert_trees_all_close(jax.tree.map(np.asarray, new_state.params), expected, atol=1e-5, rtol=1e-5)
