"""DisPFL: ERK densities, sparse aggregation, prune/regrow and a whole round against NumPy loops.

References are independent of `spark_jax/algorithms/dispfl.py`: ERK solved by densifying every
over-full layer at once, aggregation and prune/regrow as explicit loops / NumPy sorts, the round as
a per-node loop with a hand-written optimizer (float64 under x64) on `jax.grad` of a plain loss.
"""

import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from experiments.configs import tiny
from spark_jax.runner import experiment
from spark_jax.setting import comm, topology
from spark_jax import algorithms
from spark_jax.algorithms import available, dfedavg, dispfl
from spark_jax.algorithms.base import RoundInputs
from spark_jax.setting.models import make_model
from spark_jax.setting.partition import NodeData
from spark_jax.runner.validation import ConfigError, validate_config

COUNTS = [7, 12, 3, 10, 9]
N_MAX, IMAGE = 12, (4, 4, 1)  # 4x4 images: a 16-8-10 MLP (d = 226), small enough for coordinate loops
HP = {"lr": 0.2, "lr_decay": 0.9, "momentum": 0.5, "weight_decay": 0.01, "grad_clip": 0.5, "batch_size": 4,
      "local_epochs": 2, "dense_ratio": 0.5, "anneal_factor": 0.5}
ROUNDS = 5


def _model():
    return make_model("mlp", hidden=(8,), input_shape=IMAGE)


def _node_data(rng):
    m = len(COUNTS)
    x = np.zeros((m, N_MAX, *IMAGE), np.float32)
    y = np.zeros((m, N_MAX), np.int32)
    mask = np.zeros((m, N_MAX), bool)
    for i, n in enumerate(COUNTS):
        x[i, :n] = rng.normal(size=(n, *IMAGE))
        y[i, :n] = rng.integers(0, 10, n)
        mask[i, :n] = True
    return NodeData(x=x, y=y, mask=mask, counts=np.array(COUNTS, np.int32))


def _graph(garbage_padding=False):
    """Unequal degrees, slot 0 = self, 4 slots; padding slots hold the node (or, to prove them inert,
    another node)."""
    adj = {0: [1, 3, 4], 1: [0, 2], 2: [1], 3: [0], 4: [0]}
    m, s = len(COUNTS), 4
    nbr = np.tile(np.arange(m)[:, None], (1, s)).astype(np.int32)
    if garbage_padding:
        nbr = (nbr + np.arange(s)[None, :] + 1) % m
    mask = np.zeros((m, s), bool)
    for i, js in adj.items():
        nbr[i, : len(js) + 1] = [i] + js
        mask[i, : len(js) + 1] = True
    return nbr, mask


def _config(**overrides):
    c = ml_collections.ConfigDict()
    c.rounds = ROUNDS
    c.partition = ml_collections.ConfigDict({"num_nodes": len(COUNTS)})
    c.model = ml_collections.ConfigDict({"per_node_init": True})
    c.algorithm_kw = ml_collections.ConfigDict({**HP, **overrides})
    return c


def _dfedavg_config():
    """The same run as DFedAvg (the dense-weights comparisons)."""
    c = _config()
    c.algorithm_kw = ml_collections.ConfigDict({"lr": 0.1, "batch_size": 4, "local_epochs": 1})
    return c


def _inputs(nbr, mask, r, key):
    return RoundInputs(jnp.asarray(nbr), jnp.asarray(mask / np.maximum(mask.sum(1, keepdims=True), 1), jnp.float32),
                       jnp.asarray(mask), jnp.int32(r), jax.random.key(key))


def _np(tree):
    return jax.tree.map(np.asarray, tree)


# ---------------------------------------------------------------------------------------- ERK


def _erk_reference(shapes, dense_ratio):
    """Densify every layer over density 1 at once (the same fixed point: eps only grows)."""
    n = np.array([np.prod(s) for s in shapes], float)
    raw = np.array([np.sum(s) for s in shapes], float) / n
    dense = np.zeros(len(shapes), bool)
    while True:
        eps = (dense_ratio * n.sum() - n[dense].sum()) / np.sum(raw[~dense] * n[~dense])
        over = ~dense & (eps * raw > 1)
        if not over.any():
            return np.where(dense, 1.0, eps * raw)
        dense |= over


SHAPES = {"mlp": [(784, 100), (100,), (100, 10), (10,)],
          "cnn": [(3, 3, 1, 8), (8,), (3, 3, 8, 16), (16,), (784, 10), (10,)],
          "deep": [(784, 300), (300,), (300, 100), (100,), (100, 10), (10,)]}


@pytest.mark.parametrize("net", sorted(SHAPES))
@pytest.mark.parametrize("ratio", [0.05, 0.2, 0.5, 0.9, 1.0])
def test_erk_densities_match_reference_and_budget(net, ratio):
    shapes = SHAPES[net]
    got = np.array(dispfl.erk_densities(shapes, ratio))
    np.testing.assert_allclose(got, _erk_reference(shapes, ratio), rtol=1e-12)
    n = np.array([np.prod(s) for s in shapes], float)
    assert np.all(got > 0) and np.all(got <= 1)
    assert np.sum(got * n) == pytest.approx(ratio * n.sum(), rel=1e-12)
    counts = dispfl.erk_counts([np.zeros(s) for s in shapes], ratio)
    assert counts == [int(math.floor(p * k)) for p, k in zip(got, n)]
    assert abs(sum(counts) / n.sum() - ratio) <= len(shapes) / n.sum()  # floor per layer


def test_erk_mlp_closed_form():
    """784-100-10 at density 0.5: biases and the 100x10 kernel go dense, the first kernel takes the rest."""
    dens = dispfl.erk_densities(SHAPES["mlp"], 0.5)
    assert dens[1:] == [1.0, 1.0, 1.0]
    assert dens[0] * 78_400 == pytest.approx(0.5 * 79_510 - 1_110)



def _aggregate_reference(params, masks, nbr, smask):
    """Explicit loop over nodes, leaves and coordinates."""
    out = {}
    for name, w in params.items():
        m = masks[name]
        res = np.zeros_like(w)
        for k in range(w.shape[0]):
            for c in np.ndindex(w.shape[1:]):
                if not m[(k, *c)]:
                    continue
                vals = [w[(j, *c)] for j, real in zip(nbr[k], smask[k]) if real and m[(j, *c)]]
                res[(k, *c)] = np.mean(vals) if vals else w[(k, *c)]
        out[name] = res
    return out


def test_sparse_aggregate_matches_loop_and_ignores_padding():
    rng = np.random.default_rng(0)
    m = len(COUNTS)
    params = {"a": rng.normal(size=(m, 3, 4)), "b": rng.normal(size=(m, 5))}  # garbage off the masks too
    masks = {"a": rng.random((m, 3, 4)) < 0.4, "b": rng.random((m, 5)) < 0.6}
    nbr, smask = _graph(garbage_padding=True)
    got = jax.jit(dispfl.sparse_aggregate)(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params), masks,
                                           jnp.asarray(nbr), jnp.asarray(smask))
    chex.assert_trees_all_close(_np(got), _aggregate_reference(params, masks, nbr, smask), rtol=1e-6, atol=1e-6)
    assert all(np.all(np.asarray(got[k])[~masks[k]] == 0) for k in masks)
    # Padding slots pointing at other nodes change nothing.
    own, _ = _graph(garbage_padding=False)
    again = dispfl.sparse_aggregate(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params), masks,
                                    jnp.asarray(own), jnp.asarray(smask))
    chex.assert_trees_all_close(_np(again), _np(got), rtol=1e-6, atol=1e-6)



def _prune_regrow_reference(mask, w, g, c):
    m, w, g = mask.ravel().copy(), np.abs(w).ravel(), np.abs(g).ravel()
    active = np.flatnonzero(m)
    m[active[np.argsort(w[active], kind="stable")[:c]]] = False
    free = np.flatnonzero(~m)
    m[free[np.argsort(-g[free], kind="stable")[:c]]] = True
    return m.reshape(mask.shape)


@pytest.mark.parametrize("c", [0, 1, 7, 20])
def test_prune_and_regrow_matches_numpy(c):
    rng = np.random.default_rng(c)
    mask = np.zeros(42, bool)
    mask[rng.choice(42, 20, replace=False)] = True
    mask = mask.reshape(6, 7)
    w = np.where(mask, rng.normal(size=(6, 7)), 0.0).astype(np.float32)
    g = rng.normal(size=(6, 7)).astype(np.float32)
    got = np.asarray(jax.jit(dispfl.prune_and_regrow)(mask, w, g, jnp.int32(c)))
    np.testing.assert_array_equal(got, _prune_regrow_reference(mask, w, g, c))
    assert got.sum() == 20
    if c:  # dropped the smallest active |w|, grew the largest free |g| (just-dropped ones may return)
        assert not np.array_equal(got, mask) or c == 20


def test_drop_fraction_schedule_and_per_leaf_counts():
    f = jax.jit(dispfl.drop_fraction, static_argnums=(1, 2))
    for r in range(ROUNDS + 1):
        want = 0.5 / 2 * (1 + math.cos(math.pi * r / ROUNDS))
        assert float(f(jnp.int32(r), ROUNDS, 0.5)) == pytest.approx(want, rel=1e-6, abs=1e-7)
    assert f._cache_size() == 1
    rng = np.random.default_rng(1)
    model = _model()
    params = _np(model.init(jax.random.key(0)))
    counts = dispfl.erk_counts(params, 0.5)
    masks = jax.tree.unflatten(jax.tree.structure(params), [
        np.isin(np.arange(a.size), rng.choice(a.size, k, replace=False)).reshape(a.shape)
        for a, k in zip(jax.tree.leaves(params), counts)])
    grads = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), params)
    weights = jax.tree.map(lambda a, m: np.where(m, rng.normal(size=a.shape), 0).astype(np.float32), params, masks)
    alpha = 0.5 / 2 * (1 + math.cos(math.pi * 2 / ROUNDS))
    got = jax.jit(lambda *a: dispfl.update_masks(*a[:3], counts, a[3]))(masks, weights, grads, jnp.float32(alpha))
    for m, w, g, k, new in zip(*(jax.tree.leaves(t) for t in (masks, weights, grads)), counts, jax.tree.leaves(got)):
        assert int(np.sum(new)) == k
        want = m if k == m.size else _prune_regrow_reference(m, w, g, math.ceil(alpha * k))
        np.testing.assert_array_equal(np.asarray(new), want)



def _reference_round(model, state, nd, nbr, smask, key, r, counts):
    """Per-node loop: aggregation, masked SGD (clip, coupled decay, momentum), screening gradient,
    prune/regrow; float64 NumPy optimizer on `jax.grad` of the plain batch loss."""
    hp = HP
    params, masks = _np(state.params), _np(state.masks)
    flat_p, treedef = jax.tree.flatten(params)
    flat_m = jax.tree.leaves(masks)
    agg = _aggregate_reference(dict(enumerate(flat_p)), dict(enumerate(flat_m)), nbr, smask)

    def loss(p, xb, yb):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb), yb))

    vg = jax.jit(jax.value_and_grad(loss))
    lr = hp["lr"] * hp["lr_decay"] ** r
    alpha = hp["anneal_factor"] / 2 * (1 + math.cos(math.pi * r / ROUNDS))
    new_p, new_m, losses = [], [], []
    for i, n in enumerate(COUNTS):
        p = [agg[l][i].astype(np.float64) for l in range(len(flat_p))]
        m = [a[i] for a in flat_m]
        buf = [np.zeros_like(a) for a in p]
        train_key, grad_key = jax.random.split(jax.random.fold_in(key, i))
        for ekey in jax.random.split(train_key, hp["local_epochs"]):
            order = np.argsort(np.asarray(jax.random.uniform(ekey, (N_MAX,), jnp.float32))[:n], kind="stable")
            epoch = []
            for b in range(0, n, hp["batch_size"]):
                idx = order[b:b + hp["batch_size"]]
                value, g = vg(jax.tree.unflatten(treedef, p), nd.x[i, idx], nd.y[i, idx])
                g = [np.asarray(a, np.float64) * mk for a, mk in zip(jax.tree.leaves(g), m)]
                norm = math.sqrt(sum(np.sum(a * a) for a in g))
                g = [a * hp["grad_clip"] / max(norm, hp["grad_clip"]) for a in g]
                buf = [ga + hp["weight_decay"] * pa + hp["momentum"] * ba for ga, pa, ba in zip(g, p, buf)]
                p = [pa - lr * ba for pa, ba in zip(p, buf)]
                epoch.append(float(value))
        losses.append(np.mean(epoch))
        order = np.argsort(np.asarray(jax.random.uniform(grad_key, (N_MAX,), jnp.float32))[:n], kind="stable")
        idx = order[:hp["batch_size"]]
        _, g = vg(jax.tree.unflatten(treedef, p), nd.x[i, idx], nd.y[i, idx])
        m = [mk if k == mk.size else _prune_regrow_reference(mk, pa, np.asarray(ga), math.ceil(alpha * k))
             for mk, pa, ga, k in zip(m, p, jax.tree.leaves(g), counts)]
        new_m.append(m)
        new_p.append([np.where(mk, pa, 0.0) for mk, pa in zip(m, p)])
    stack = lambda rows: jax.tree.unflatten(treedef, [np.stack(ls) for ls in zip(*rows)])
    return stack(new_p), stack(new_m), float(np.mean(losses))


@pytest.mark.slow
def test_round_matches_per_node_reference_float64_and_float32():
    """The jitted round in float64 (x64: params and data) equals the loop reference to 1e-9; the
    float32 round gives the same masks and weights to float32 rounding."""
    model, r = _model(), 2
    nbr, smask = _graph(garbage_padding=True)
    nd32 = _node_data(np.random.default_rng(0))
    alg = dispfl.make(_config(), model)
    counts = dispfl.erk_counts(model.init(jax.random.key(0)), HP["dense_ratio"])
    with jax.enable_x64(True):
        nd = nd32._replace(x=nd32.x.astype(np.float64))
        state = alg.init(jax.random.key(1), nd)
        state = state.replace(params=jax.tree.map(lambda a: a.astype(jnp.float64), state.params))
        new, out = jax.jit(alg.round)(state, jax.tree.map(jnp.asarray, nd), _inputs(nbr, smask, r, 7))
        want_p, want_m, want_loss = _reference_round(model, state, nd, nbr, smask, jax.random.key(7), r, counts)
        assert {str(a.dtype) for a in jax.tree.leaves(new.params)} == {"float64"}
    chex.assert_trees_all_equal(_np(new.masks), want_m)
    chex.assert_trees_all_close(_np(new.params), want_p, rtol=1e-9, atol=1e-9)
    assert float(out["train_loss"]) == pytest.approx(want_loss, rel=1e-9)
    assert bool(np.all(out["finite_update"]))
    assert float(out["drop_fraction"]) == pytest.approx(0.25 * (1 + math.cos(math.pi * r / ROUNDS)))

    state32 = alg.init(jax.random.key(1), nd32)
    new32, _ = jax.jit(alg.round)(state32, jax.tree.map(jnp.asarray, nd32), _inputs(nbr, smask, r, 7))
    assert {str(a.dtype) for a in jax.tree.leaves(new32.params)} == {"float32"}
    chex.assert_trees_all_equal(_np(new32.masks), want_m)
    chex.assert_trees_all_close(_np(new32.params), want_p, rtol=1e-4, atol=1e-5)


def test_init_masks_are_personal_erk_and_weights_sparse():
    model, c = _model(), _config()
    c.model.per_node_init = False  # SPEC default: one w0 for every node
    state = dispfl.make(c, model).init(jax.random.key(3), None)
    counts = dispfl.erk_counts(model.init(jax.random.key(0)), HP["dense_ratio"])
    dense_config = _dfedavg_config()
    dense_config.model.per_node_init = False
    dense = dfedavg.make(dense_config, model).init(jax.random.key(3), None)  # the same w0 as the other algorithms
    for m, w, w0, k in zip(jax.tree.leaves(state.masks), jax.tree.leaves(state.params), jax.tree.leaves(dense.params),
                           counts):
        assert m.dtype == jnp.bool_ and m.shape == w.shape
        np.testing.assert_array_equal(np.sum(np.asarray(m).reshape(m.shape[0], -1), axis=1), k)
        np.testing.assert_array_equal(np.asarray(w), np.where(m, w0, 0))
        if k < m[0].size:
            assert len({np.asarray(m[i]).tobytes() for i in range(m.shape[0])}) == m.shape[0]  # personalised


@pytest.mark.slow
def test_rounds_compile_once_and_keep_sparsity():
    """Re-drawn graphs and the traced round index: one compilation; after each round the weights are
    zero off the masks and every mask keeps its per-leaf count."""
    model = _model()
    nd = jax.tree.map(jnp.asarray, _node_data(np.random.default_rng(0)))
    alg = dispfl.make(_config(local_epochs=1), model)
    counts = dispfl.erk_counts(model.init(jax.random.key(0)), HP["dense_ratio"])
    state = alg.init(jax.random.key(1), nd)
    rnd = jax.jit(alg.round)
    ring = lambda order: topology.padded_graph(
        topology.ring_adjacency(len(COUNTS))[np.ix_(np.argsort(order), np.argsort(order))], num_slots=4)
    graphs = [_graph(), (ring([0, 1, 2, 3, 4]).neighbors, ring([0, 1, 2, 3, 4]).mask),
              (ring([0, 2, 4, 1, 3]).neighbors, ring([0, 2, 4, 1, 3]).mask)]
    assert len({nbr.tobytes() for nbr, _ in graphs}) == 3
    for r, (nbr, smask) in enumerate(graphs):
        before = _np(state.masks)
        state, out = rnd(state, nd, _inputs(nbr, smask, r, 10 + r))
        assert np.isfinite(float(out["train_loss"]))
        for m, w, k in zip(jax.tree.leaves(state.masks), jax.tree.leaves(state.params), counts):
            np.testing.assert_array_equal(np.sum(np.asarray(m).reshape(m.shape[0], -1), axis=1), k)
            assert np.all(np.asarray(w)[~np.asarray(m)] == 0)
        assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(_np(state.masks)),
                                                            jax.tree.leaves(before)))  # the masks move
    assert rnd._cache_size() == 1



def test_message_bytes_closed_form_replace_dense_weights():
    model = make_model("mlp")  # 784-100-10, d = 79,510; ERK at 0.5 keeps 39,755 weights (closed form above)
    c = _config(dense_ratio=0.5)
    alg = dispfl.make(c, model)
    graph = topology.padded_graph(topology.ring_adjacency(8), "uniform")
    counts = np.full(8, 40, np.int32)
    got = alg.message_bytes(graph.neighbors, graph.mask, counts)
    edges, d, nnz = 16, 79_510, 39_755
    assert got == {"message_bytes": edges * (nnz * 4 + 9_939), "mask_bytes": edges * 9_939}
    assert comm.sparse_weight_bytes(graph.neighbors, graph.mask, nnz=nnz, num_params=d) == got
    # The runner's count: no dense weights for DisPFL; d floats per edge for a dense algorithm.
    assert experiment.round_bytes(alg, graph, counts, d) == (0, got)
    dense = dfedavg.make(_dfedavg_config(), model)
    assert experiment.round_bytes(dense, graph, counts, d) == (edges * d * 4, {})


def test_registered_and_validated():
    assert "dispfl" in available()
    c = algorithms.with_algorithm(tiny.get_config(), "dispfl")
    validate_config(c, available())
    for field, value, message in [("dense_ratio", 0.0, "algorithm_kw.dense_ratio=0.0 must be a finite number in (0, 1]"),
                                  ("anneal_factor", 1.5, "algorithm_kw.anneal_factor=1.5 must be a finite number in [0, 1]"),
                                  ("grad_clip", -1.0, "algorithm_kw.grad_clip=-1.0 must be a finite number >= 0"),
                                  ("lr_decay", 0.0, "algorithm_kw.lr_decay=0.0 must be a finite number in (0, 1]"),
                                  ("momentum", 1.0, "algorithm_kw.momentum=1.0 must be a finite number in [0, 1)"),
                                  ("batch_size", 0, "algorithm_kw.batch_size=0 must be an integer >= 1")]:
        bad = algorithms.with_algorithm(tiny.get_config(), "dispfl")
        bad.algorithm_kw[field] = value
        with pytest.raises(ConfigError, match=None) as e:
            validate_config(bad, available())
        assert str(e.value).startswith(message), str(e.value)
