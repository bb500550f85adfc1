"""Tests for spark_jax.setting.topology (SPEC steps 1-2): graphs, mixing weights, padding."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components as scipy_components

from spark_jax import rng as rng_lib
from spark_jax.setting import topology
from spark_jax.algorithms.base import mix

# (kind, num_nodes, kwargs, expected degree of every node or None)
CASES = [
    ("ring", 10, {}, 2),
    ("ring", 3, {}, 2),
    ("regular", 30, {"degree": 5}, 5),
    ("regular", 12, {"degree": 3}, 3),
    ("er", 40, {"p": 0.2}, None),
    ("torus", 12, {}, 4),
    ("torus", 36, {}, 4),
    ("complete", 7, {}, 6),
]


def _rng(seed=0):
    return np.random.default_rng(seed)


def _make(kind, m, kw, seed=0):
    if kind == "ring":
        return topology.ring_adjacency(m, _rng(seed))
    if kind == "regular":
        return topology.regular_adjacency(m, kw["degree"], _rng(seed))
    if kind == "er":
        return topology.erdos_renyi_adjacency(m, kw["p"], _rng(seed))
    if kind == "torus":
        return topology.torus_adjacency(m)
    return topology.complete_adjacency(m)


def _reference_mixing(adj, kind):
    """Explicit loops over nodes and edges, float64."""
    m = adj.shape[0]
    deg = [sum(bool(adj[i, j]) for j in range(m)) for i in range(m)]
    w = np.zeros((m, m))
    for i in range(m):
        for j in range(m):
            if kind == "uniform" and (i == j or adj[i, j]):
                w[i, j] = 1.0 / (deg[i] + 1)
            elif kind == "metropolis" and adj[i, j]:
                w[i, j] = 1.0 / (1 + max(deg[i], deg[j]))
        if kind == "metropolis":
            w[i, i] = 1.0 - w[i].sum()
    return w


def _num_components(adj):
    return scipy_components(adj.astype(np.int8), directed=False)[0]


# ---------------------------------------------------------------- adjacencies


@pytest.mark.parametrize("kind,m,kw,degree", CASES)
def test_adjacency_is_simple_undirected_with_expected_degrees(kind, m, kw, degree):
    adj = _make(kind, m, kw)
    assert adj.shape == (m, m) and adj.dtype == bool
    np.testing.assert_array_equal(adj, adj.T)
    assert not adj.diagonal().any()
    if degree is not None:
        np.testing.assert_array_equal(adj.sum(axis=1), np.full(m, degree))
    if kind != "er":
        assert _num_components(adj) == 1


def test_ring_identity_and_permuted():
    m = 8
    ring = topology.ring_adjacency(m)
    for i in range(m):
        assert set(np.flatnonzero(ring[i])) == {(i - 1) % m, (i + 1) % m}
    permuted = topology.ring_adjacency(m, _rng(3))
    assert not np.array_equal(permuted, ring)
    assert _num_components(permuted) == 1  # one Hamiltonian cycle, not several


@pytest.mark.parametrize("m,shape", [(9, (3, 3)), (12, (3, 4)), (20, (4, 5)), (100, (10, 10))])
def test_torus_matches_grid_reference(m, shape):
    a, b = shape
    ref = np.zeros((m, m), dtype=bool)
    for r in range(a):
        for c in range(b):
            for dr, dc in [(1, 0), (-1, 0), (0, 1), (0, -1)]:
                ref[r * b + c, ((r + dr) % a) * b + (c + dc) % b] = True
    np.testing.assert_array_equal(topology.torus_adjacency(m), ref)


def test_complete_adjacency():
    np.testing.assert_array_equal(topology.complete_adjacency(5), 1 - np.eye(5))


def test_erdos_renyi_edge_density_and_determinism():
    m, p = 200, 0.1
    adj = topology.erdos_renyi_adjacency(m, p, _rng(1))
    pairs = m * (m - 1) / 2
    edges = adj.sum() / 2
    assert abs(edges - p * pairs) < 6 * np.sqrt(pairs * p * (1 - p))
    np.testing.assert_array_equal(adj, topology.erdos_renyi_adjacency(m, p, _rng(1)))
    assert topology.erdos_renyi_adjacency(m, 1.0, _rng(0)).sum() == m * (m - 1)


def test_regular_graphs_over_many_seeds_are_simple_and_mostly_connected():
    m, d, seeds = 24, 3, 100
    graphs = [topology.regular_adjacency(m, d, _rng(s)) for s in range(seeds)]
    for adj in graphs:
        np.testing.assert_array_equal(adj, adj.T)
        assert not adj.diagonal().any()
        np.testing.assert_array_equal(adj.sum(axis=1), np.full(m, d))
    connected = sum(_num_components(adj) == 1 for adj in graphs)
    assert connected >= 0.9 * seeds
    assert len({adj.tobytes() for adj in graphs}) == seeds  # really random


def test_regular_small_cases_are_label_symmetric():
    # The three labelled 4-cycles on 4 nodes must be about equally likely.
    counts = {}
    for s in range(600):
        key = topology.regular_adjacency(4, 2, _rng(s)).tobytes()
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 3
    assert min(counts.values()) > 150


def test_regular_is_deterministic_given_generator():
    a = topology.regular_adjacency(50, 4, _rng(7))
    np.testing.assert_array_equal(a, topology.regular_adjacency(50, 4, _rng(7)))
    assert not np.array_equal(a, topology.regular_adjacency(50, 4, _rng(8)))


def test_regular_is_fast():
    topology.regular_adjacency(300, 5, _rng(0))  # warm-up
    for m in (300, 1000):
        start = time.perf_counter()
        for s in range(5):
            adj = topology.regular_adjacency(m, 5, _rng(s))
        per_graph = (time.perf_counter() - start) / 5
        assert per_graph < 0.25, f"M={m}: {per_graph:.3f} s per graph"
        np.testing.assert_array_equal(adj.sum(axis=1), np.full(m, 5))


# --------------------------------------------------------------------- mixing


@pytest.mark.parametrize("mixing", topology.MIXINGS)
@pytest.mark.parametrize("kind,m,kw,degree", CASES)
def test_mixing_matrix_matches_reference(kind, m, kw, degree, mixing):
    adj = _make(kind, m, kw)
    w = topology.mixing_matrix(adj, mixing)
    assert w.dtype == np.float64
    np.testing.assert_allclose(w, _reference_mixing(adj, mixing), atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    assert (w >= 0).all()
    if mixing == "metropolis":
        np.testing.assert_allclose(w, w.T, atol=1e-15)
        np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
    else:
        deg = adj.sum(axis=1)
        closed = adj | np.eye(m, dtype=bool)
        np.testing.assert_allclose(w[closed], np.repeat(1.0 / (deg + 1), deg + 1))
        assert (w[~closed] == 0).all()


def test_metropolis_on_irregular_graph():
    # star: centre 0 with 3 leaves -> W_0j = 1/4, W_jj = 3/4, W_00 = 1/4
    adj = np.zeros((4, 4), dtype=bool)
    adj[0, 1:] = adj[1:, 0] = True
    w = topology.mixing_matrix(adj, "metropolis")
    expected = np.array([[0.25, 0.25, 0.25, 0.25]] + [[0.25] + [0.0] * 3] * 3)
    expected[[1, 2, 3], [1, 2, 3]] = 0.75
    np.testing.assert_allclose(w, expected)


# -------------------------------------------------------------------- padding


@pytest.mark.parametrize("extra", [0, 3])
@pytest.mark.parametrize("mixing", topology.MIXINGS)
@pytest.mark.parametrize("kind,m,kw,degree", CASES)
def test_padded_graph_roundtrips_to_dense(kind, m, kw, degree, mixing, extra):
    adj = _make(kind, m, kw)
    needed = int(adj.sum(axis=1).max()) + 1
    g = topology.padded_graph(adj, mixing, num_slots=needed + extra if extra else None)
    assert g.neighbors.shape == g.weights.shape == g.mask.shape == (m, needed + extra)
    assert g.neighbors.dtype == np.int32 and g.weights.dtype == np.float32
    assert g.mask.dtype == bool and g.num_nodes == m and g.num_slots == needed + extra
    np.testing.assert_array_equal(g.degrees, adj.sum(axis=1))
    np.testing.assert_allclose(topology.dense_mixing(g), _reference_mixing(adj, mixing),
                               atol=1e-7)
    rows = np.arange(m)
    np.testing.assert_array_equal(g.neighbors[:, 0], rows)
    assert g.mask[:, 0].all()
    pad = ~g.mask
    assert (g.weights[pad] == 0).all()
    np.testing.assert_array_equal(g.neighbors[pad], np.broadcast_to(rows[:, None], pad.shape)[pad])
    for i in range(m):
        real = g.neighbors[i, 1:][g.mask[i, 1:]]
        np.testing.assert_array_equal(real, np.flatnonzero(adj[i]))  # increasing order


def test_padded_graph_rejects_too_few_slots():
    with pytest.raises(ValueError, match="needs 5 slots.*num_slots is 4"):
        topology.padded_graph(topology.torus_adjacency(9), num_slots=4)


def test_padding_entries_do_not_leak_through_dense_mixing():
    g = topology.padded_graph(topology.ring_adjacency(5), num_slots=5)
    poisoned = g._replace(weights=np.where(g.mask, g.weights, 7.0).astype(np.float32))
    np.testing.assert_allclose(topology.dense_mixing(poisoned),
                               topology.mixing_matrix(topology.ring_adjacency(5)), atol=1e-7)


@pytest.mark.parametrize("mixing", topology.MIXINGS)
@pytest.mark.parametrize("kind,m,kw,degree", CASES)
def test_base_mix_equals_dense_mixing(kind, m, kw, degree, mixing):
    adj = _make(kind, m, kw)
    g = topology.padded_graph(adj, mixing, num_slots=int(adj.sum(axis=1).max()) + 3)
    x = np.random.default_rng(11).normal(size=(m, 4, 3))
    y = np.random.default_rng(12).normal(size=(m,))
    out = jax.jit(mix)({"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)},
                       jnp.asarray(g.neighbors), jnp.asarray(g.weights))
    w = topology.mixing_matrix(adj, mixing)
    np.testing.assert_allclose(out["x"], np.einsum("ij,jab->iab", w, x), atol=1e-5)
    np.testing.assert_allclose(out["y"], w @ y, atol=1e-5)


# ---------------------------------------------------------------- diagnostics


def test_is_connected_matches_scipy():
    for s in range(30):
        adj = topology.erdos_renyi_adjacency(30, 0.06, _rng(s))
        labels = topology.connected_components(adj)
        assert labels.max() + 1 == _num_components(adj)
        assert topology.is_connected(adj) == (_num_components(adj) == 1)


def test_connectivity_report():
    report = topology.connectivity_report(topology.ring_adjacency(10))
    assert "connected=True" in report and "components=1" in report and "edges=10" in report
    two_triangles = np.zeros((6, 6), dtype=bool)
    for tri in ([0, 1, 2], [3, 4, 5]):
        two_triangles[np.ix_(tri, tri)] = True
    np.fill_diagonal(two_triangles, False)
    report = topology.connectivity_report(two_triangles)
    assert "connected=False" in report and "components=2" in report
    assert "spectral_gap(uniform)=0" in report


def test_spectral_gap_against_closed_forms():
    assert topology.spectral_gap(topology.mixing_matrix(topology.complete_adjacency(6))) == \
        pytest.approx(1.0)
    m = 10  # uniform ring: eigenvalues (1 + 2 cos(2 pi k / m)) / 3
    eig = (1 + 2 * np.cos(2 * np.pi * np.arange(1, m) / m)) / 3
    gap = topology.spectral_gap(topology.mixing_matrix(topology.ring_adjacency(m)))
    assert gap == pytest.approx(1 - np.abs(eig).max())


def test_num_slots_for():
    assert topology.num_slots_for("ring", 10) == 3
    assert topology.num_slots_for("regular", 300, degree=5) == 6
    assert topology.num_slots_for("torus", 16) == 5
    assert topology.num_slots_for("complete", 9) == 9
    mu = 0.1 * 299
    assert topology.num_slots_for("er", 300, p=0.1) == int(np.ceil(mu + 8 * np.sqrt(mu) + 3)) + 1
    assert topology.num_slots_for("er", 10, p=1.0) == 10


# -------------------------------------------------------------------- streams


def _topology_rng_fn(seed):
    key = rng_lib.stream_key(seed, "topology")
    return lambda r: rng_lib.numpy_rng(key, r)


@pytest.mark.parametrize("kind,kw", [("ring", {}), ("regular", {"degree": 4}),
                                     ("er", {"p": 0.15})])
def test_dynamic_stream_redraws_deterministically(kind, kw):
    make = lambda: topology.TopologyStream(kind, 30, seed_rng_fn=_topology_rng_fn(0), **kw)
    stream, again = make(), make()
    graphs = [stream.graph(r) for r in range(4)]
    assert len({g.neighbors.tobytes() for g in graphs}) == 4
    assert all(g.neighbors.shape == (30, stream.num_slots) for g in graphs)
    for r in (0, 3):
        for a, b in zip(stream.graph(r), again.graph(r)):
            np.testing.assert_array_equal(a, b)
    other = topology.TopologyStream(kind, 30, seed_rng_fn=_topology_rng_fn(1), **kw)
    assert not np.array_equal(other.adjacency(0), stream.adjacency(0))


@pytest.mark.parametrize("kind,kw", [("ring", {}), ("regular", {"degree": 4}),
                                     ("er", {"p": 0.15}), ("torus", {}), ("complete", {})])
@pytest.mark.parametrize("mixing", topology.MIXINGS)
def test_static_stream_repeats_round_zero(kind, kw, mixing):
    stream = topology.TopologyStream(kind, 30, dynamic=False, mixing=mixing,
                                     seed_rng_fn=_topology_rng_fn(0), **kw)
    first = stream.graph(0)
    for r in (1, 5):
        for a, b in zip(first, stream.graph(r)):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(topology.dense_mixing(first),
                               _reference_mixing(stream.adjacency(0), mixing), atol=1e-7)
    if kind == "ring":
        np.testing.assert_array_equal(stream.adjacency(0), topology.ring_adjacency(30))


def test_stream_er_over_cap_raises():
    stream = topology.TopologyStream("er", 50, p=0.02)
    stream.num_slots = 2  # force a draw over the cap
    with pytest.raises(ValueError, match="smaller p"):
        for r in range(10):
            stream.graph(r)


# ----------------------------------------------------------------- validation


@pytest.mark.parametrize("args,kw,match", [
    (("star", 10), {}, "unknown topology kind 'star'; valid kinds: ring, regular, er"),
    (("ring", 10), {"mixing": "max"}, "unknown mixing 'max'; valid mixings: uniform, metropolis"),
    (("complete", 1), {}, "num_nodes >= 2"),
    (("ring", 2), {}, "ring needs num_nodes >= 3"),
    (("regular", 301), {"degree": 5},
     "random 5-regular graph on 301 nodes is impossible: num_nodes \\* degree must be even"),
    (("regular", 5), {"degree": 5}, "degree must be < num_nodes"),
    (("regular", 10), {"degree": 0}, "degree must be >= 1"),
    (("er", 10), {"p": 0.0}, "p must be in \\(0, 1\\]"),
    (("er", 10), {"p": 1.5}, "p must be in \\(0, 1\\]"),
    (("torus", 14), {}, "torus on 14 nodes is impossible.*2 x 7"),
    (("torus", 7), {}, "torus on 7 nodes is impossible"),
])
def test_stream_constructor_rejects_impossible_inputs(args, kw, match):
    with pytest.raises(ValueError, match=match):
        topology.TopologyStream(*args, **kw)


def test_generators_reject_impossible_inputs():
    with pytest.raises(ValueError, match="num_nodes \\* degree must be even"):
        topology.regular_adjacency(301, 5, _rng())
    with pytest.raises(ValueError, match="ring needs num_nodes >= 3"):
        topology.ring_adjacency(2)
    with pytest.raises(ValueError, match="torus on 10 nodes"):
        topology.torus_adjacency(10)
    with pytest.raises(ValueError, match="p must be in"):
        topology.erdos_renyi_adjacency(10, -0.1, _rng())
    with pytest.raises(ValueError, match="unknown mixing 'mh'"):
        topology.mixing_matrix(topology.ring_adjacency(4), "mh")
    with pytest.raises(ValueError, match="symmetric"):
        topology.mixing_matrix(np.triu(np.ones((3, 3), dtype=bool), 1))
    with pytest.raises(ValueError, match="self-loops"):
        topology.mixing_matrix(np.ones((3, 3), dtype=bool))
    with pytest.raises(ValueError, match="square"):
        topology.mixing_matrix(np.zeros((3, 4), dtype=bool))
