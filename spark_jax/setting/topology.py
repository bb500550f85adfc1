"""Communication graphs and mixing weights (SPEC steps 1 "Topology" and 2 "Mixing").

Graphs are drawn host-side in NumPy from a `np.random.Generator` (the run's
named `topology` stream, folded with the round), as a bool adjacency matrix
`adj [M, M]` (symmetric, no self-loops). `padded_graph` turns one into a
fixed-shape `Graph` (neighbour indices, mixing weights, mask; `[M, S]` each):
with S fixed for the whole run (`num_slots_for`), a graph re-drawn every round
does not recompile the jitted round that consumes it (`algorithms.base.mix`).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import numpy as np

KINDS = ("ring", "regular", "er", "torus", "complete")
MIXINGS = ("uniform", "metropolis")
_MAX_REGULAR_RESTARTS = 1000


class Graph(NamedTuple):
    """One round's graph in padded form (SPEC step 1; consumed by step 2).

    neighbors: int32 [M, S] closed neighbourhood N̄_i; slot 0 = i itself, then
      its neighbours in increasing index order; padding slots hold i.
    weights: float32 [M, S] W[i, neighbors[i, s]]; 0 on padding (float64 on request, `padded_graph`).
    mask: bool [M, S] True on real (non-padding) slots.
    """

    neighbors: np.ndarray
    weights: np.ndarray
    mask: np.ndarray

    @property
    def num_nodes(self) -> int:
        return int(self.neighbors.shape[0])

    @property
    def num_slots(self) -> int:
        return int(self.neighbors.shape[1])

    @property
    def degrees(self) -> np.ndarray:
        """int [M]: number of neighbours of each node, excluding itself."""
        return self.mask.sum(axis=1).astype(np.int64) - 1


# ----------------------------------------------------------------- validation


def _torus_shape(num_nodes: int) -> tuple[int, int]:
    """The most square factorization a x b = M (a <= b), or ValueError if a < 3."""
    a = max(f for f in range(1, math.isqrt(num_nodes) + 1) if num_nodes % f == 0)
    b = num_nodes // a
    if a < 3:
        raise ValueError(f"2-D torus on {num_nodes} nodes is impossible: its most square "
                         f"grid is {a} x {b}, and both sides must be >= 3")
    return a, b


def validate_topology(kind: str, num_nodes: int, degree: Optional[int] = None,
                      p: Optional[float] = None) -> None:
    """Raises ValueError (one line, naming the problem) if the graph cannot exist."""
    if kind not in KINDS:
        raise ValueError(f"unknown topology kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if int(num_nodes) != num_nodes or num_nodes < 2:
        raise ValueError(f"a {kind} graph needs num_nodes >= 2, got {num_nodes}")
    if kind == "ring" and num_nodes < 3:
        raise ValueError(f"a ring needs num_nodes >= 3, got {num_nodes}")
    if kind == "regular":
        if degree is None or int(degree) != degree:
            raise ValueError(f"a random regular graph needs an integer degree, got {degree!r}")
        what = f"random {degree}-regular graph on {num_nodes} nodes is impossible"
        if degree < 1:
            raise ValueError(f"{what}: degree must be >= 1")
        if degree >= num_nodes:
            raise ValueError(f"{what}: degree must be < num_nodes")
        if (num_nodes * degree) % 2:
            raise ValueError(f"{what}: num_nodes * degree must be even")
    if kind == "er" and (p is None or not 0.0 < p <= 1.0):
        raise ValueError(f"Erdős–Rényi edge probability p must be in (0, 1], got {p!r}")
    if kind == "torus":
        _torus_shape(num_nodes)


def _validate_adjacency(adj: np.ndarray) -> np.ndarray:
    adj = np.asarray(adj)
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f"adjacency must be a square [M, M] matrix, got shape {adj.shape}")
    adj = adj.astype(bool)
    if not np.array_equal(adj, adj.T):
        raise ValueError("adjacency must be symmetric (undirected graph)")
    if adj.diagonal().any():
        raise ValueError("adjacency must have no self-loops (the diagonal must be False)")
    return adj


def _validate_mixing(kind: str) -> None:
    if kind not in MIXINGS:
        raise ValueError(f"unknown mixing {kind!r}; valid mixings: {', '.join(MIXINGS)}")


# ----------------------------------------------------------------- generators


def _from_edges(num_nodes: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    adj = np.zeros((num_nodes, num_nodes), dtype=bool)
    adj[u, v] = True
    adj[v, u] = True
    return adj


def ring_adjacency(num_nodes: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """bool [M, M] cycle; over `rng.permutation(M)` if rng is given, else 0-1-...-(M-1)-0."""
    validate_topology("ring", num_nodes)
    order = np.arange(num_nodes) if rng is None else rng.permutation(num_nodes)
    return _from_edges(num_nodes, order, np.roll(order, -1))


def _pairing_attempt(num_nodes: int, degree: int,
                     rng: np.random.Generator) -> Optional[np.ndarray]:
    """One try of the Steger–Wormald pairing (networkx's random_regular_graph).

    Shuffle the unmatched stubs, pair them up in order, keep each pair that is
    neither a self-loop nor an existing edge (the first of duplicates in a pass
    wins), and re-shuffle the rejected stubs; give up (None) once no pair of
    remaining stubs could still form a new edge.
    """
    adj = np.zeros((num_nodes, num_nodes), dtype=bool)
    stubs = np.repeat(np.arange(num_nodes), degree)
    while stubs.size:
        pairs = np.sort(rng.permutation(stubs).reshape(-1, 2), axis=1)
        u, v = pairs[:, 0], pairs[:, 1]
        ok = (u != v) & ~adj[u, v]
        _, first = np.unique(u * num_nodes + v, return_index=True)
        is_first = np.zeros(u.size, dtype=bool)
        is_first[first] = True
        ok &= is_first
        adj[u[ok], v[ok]] = True
        adj[v[ok], u[ok]] = True
        stubs = pairs[~ok].ravel()
        left = np.unique(stubs)
        free = ~adj[np.ix_(left, left)]
        np.fill_diagonal(free, False)
        if stubs.size and not free.any():
            return None
    return adj


def regular_adjacency(num_nodes: int, degree: int, rng: np.random.Generator) -> np.ndarray:
    """bool [M, M] random simple `degree`-regular graph (approximately uniform).

    Steger–Wormald pairing with restarts (`_pairing_attempt`), vectorized per
    pass; a few milliseconds for M = 1000, d = 5.
    """
    validate_topology("regular", num_nodes, degree=degree)
    for _ in range(_MAX_REGULAR_RESTARTS):
        adj = _pairing_attempt(num_nodes, degree, rng)
        if adj is not None:
            return adj
    raise RuntimeError(f"no random {degree}-regular graph on {num_nodes} nodes found in "
                       f"{_MAX_REGULAR_RESTARTS} restarts")


def erdos_renyi_adjacency(num_nodes: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """bool [M, M] G(M, p): each of the M(M-1)/2 edges present independently with prob. p."""
    validate_topology("er", num_nodes, p=p)
    upper = np.triu(rng.random((num_nodes, num_nodes)) < p, k=1)
    return upper | upper.T


def torus_adjacency(num_nodes: int) -> np.ndarray:
    """bool [M, M] 2-D torus on the most square a x b grid (a, b >= 3); node = row * b + col."""
    validate_topology("torus", num_nodes)
    a, b = _torus_shape(num_nodes)
    row, col = np.divmod(np.arange(num_nodes), b)
    right = row * b + (col + 1) % b
    down = ((row + 1) % a) * b + col
    return _from_edges(num_nodes, np.concatenate([np.arange(num_nodes)] * 2),
                       np.concatenate([right, down]))


def complete_adjacency(num_nodes: int) -> np.ndarray:
    """bool [M, M] complete graph K_M."""
    validate_topology("complete", num_nodes)
    return ~np.eye(num_nodes, dtype=bool)


# ---------------------------------------------------------------------- mixing


def mixing_matrix(adj: np.ndarray, kind: str = "uniform") -> np.ndarray:
    """float64 [M, M] mixing matrix W_r (SPEC step 1).

    "uniform" (NTK-DFL): W_ij = 1/|N̄_i| for j in N̄_i (row-stochastic).
    "metropolis": W_ij = 1/(1 + max(d_i, d_j)) on edges, W_ii = 1 - sum_j W_ij
    (symmetric, doubly stochastic).
    """
    _validate_mixing(kind)
    adj = _validate_adjacency(adj)
    deg = adj.sum(axis=1)
    if kind == "uniform":
        closed = adj | np.eye(adj.shape[0], dtype=bool)
        return closed / (deg + 1.0)[:, None]
    w = np.where(adj, 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :])), 0.0)
    return w + np.diag(1.0 - w.sum(axis=1))


def padded_graph(adj: np.ndarray, mixing: str = "uniform",
                 num_slots: Optional[int] = None, dtype=np.float32) -> Graph:
    """Fixed-shape `Graph` [M, S] of adj (SPEC steps 1-2); S defaults to max degree + 1.

    The weights are float32 (`dtype`; np.float64 for a float64 run: W_r rounded once, from float64)."""
    w = mixing_matrix(adj, mixing)
    adj = np.asarray(adj, dtype=bool)
    m = adj.shape[0]
    deg = adj.sum(axis=1)
    needed = int(deg.max(initial=0)) + 1
    num_slots = needed if num_slots is None else int(num_slots)
    if num_slots < needed:
        i = int(np.argmax(deg))
        raise ValueError(f"node {i} needs {needed} slots (degree {deg[i]} + itself) "
                         f"but num_slots is {num_slots}")
    # A stable sort puts each row's neighbours (True) first, in increasing index order.
    order = np.argsort(~adj, axis=1, kind="stable")[:, : num_slots - 1]
    order = np.pad(order, ((0, 0), (0, num_slots - 1 - order.shape[1])))  # when S > M
    self_index = np.arange(m)[:, None]
    real = np.arange(num_slots - 1)[None, :] < deg[:, None]
    nbrs = np.concatenate([self_index, np.where(real, order, self_index)], axis=1)
    mask = np.concatenate([np.ones((m, 1), dtype=bool), real], axis=1)
    weights = np.where(mask, np.take_along_axis(w, nbrs, axis=1), 0.0)
    return Graph(nbrs.astype(np.int32), weights.astype(dtype), mask)


def dense_mixing(graph: Graph) -> np.ndarray:
    """float64 [M, M] W from the padded form; padding slots contribute nothing."""
    m = graph.num_nodes
    w = np.zeros((m, m), dtype=np.float64)
    rows = np.broadcast_to(np.arange(m)[:, None], graph.neighbors.shape)
    vals = np.where(graph.mask, graph.weights.astype(np.float64), 0.0)
    np.add.at(w, (rows, graph.neighbors), vals)
    return w


# ----------------------------------------------------------------- diagnostics


def connected_components(adj: np.ndarray) -> np.ndarray:
    """int [M] component label of each node (breadth-first search, labels 0, 1, ...)."""
    adj = _validate_adjacency(adj)
    labels = np.full(adj.shape[0], -1)
    for start in range(adj.shape[0]):
        if labels[start] >= 0:
            continue
        label = labels.max() + 1
        frontier = np.zeros(adj.shape[0], dtype=bool)
        frontier[start] = True
        while frontier.any():
            labels[frontier] = label
            frontier = adj[frontier].any(axis=0) & (labels < 0)
    return labels


def is_connected(adj: np.ndarray) -> bool:
    """True iff the undirected graph adj [M, M] has a single component."""
    return bool(connected_components(adj).max() == 0)


def spectral_gap(w: np.ndarray) -> float:
    """1 - |lambda_2|: one minus the second largest eigenvalue modulus of W [M, M]."""
    moduli = np.sort(np.abs(np.linalg.eigvals(np.asarray(w, dtype=np.float64))))[::-1]
    return max(0.0, float(1.0 - moduli[1])) if moduli.size > 1 else 1.0


def connectivity_report(adj: np.ndarray, mixing: str = "uniform") -> str:
    """One line: nodes, edges, degree min/mean/max, connectedness, components, gap of W."""
    adj = _validate_adjacency(adj)
    deg = adj.sum(axis=1)
    n_comp = int(connected_components(adj).max()) + 1
    gap = spectral_gap(mixing_matrix(adj, mixing))
    return (f"nodes={adj.shape[0]} edges={int(adj.sum()) // 2} degree min/mean/max="
            f"{deg.min()}/{deg.mean():.2f}/{deg.max()} connected={n_comp == 1} "
            f"components={n_comp} spectral_gap({mixing})={gap:.4g}")


# --------------------------------------------------------------------- streams


def num_slots_for(kind: str, num_nodes: int, degree: Optional[int] = None,
                  p: Optional[float] = None) -> int:
    """The fixed slot count S = max |N̄_i| a run's graphs may need.

    ring 3, regular degree + 1, torus 5, complete M. Erdős–Rényi degrees are
    Binomial(M-1, p) with mean mu = p (M-1), so no fixed S is certain; we cap
    the degree at min(M-1, ceil(mu + 8 sqrt(mu) + 3)). By the Chernoff bound a
    node exceeds it with probability below ~1e-8 (mu <= 1) and exp(-24) for
    M = 300, p = 0.1; a draw that does exceed it raises a ValueError.
    """
    validate_topology(kind, num_nodes, degree=degree, p=p)
    if kind == "ring":
        return 3
    if kind == "regular":
        return int(degree) + 1
    if kind == "torus":
        return 5
    if kind == "complete":
        return int(num_nodes)
    mu = p * (num_nodes - 1)
    return min(num_nodes - 1, math.ceil(mu + 8.0 * math.sqrt(mu) + 3.0)) + 1


def _default_rng_fn(round_index: int) -> np.random.Generator:
    return np.random.default_rng([0, round_index])


class TopologyStream:
    """A run's sequence of graphs G_0, G_1, ... (SPEC step 1), all with `num_slots` slots.

    seed_rng_fn: round -> np.random.Generator, derived by the caller from the
    run's `topology` stream (default: `np.random.default_rng([0, round])`).
    dynamic: ring re-permuted, regular and er re-drawn every round from that
    round's generator; static: every round is round 0's graph (a static ring
    is in identity order). torus and complete are the same every round.
    """

    def __init__(self, kind: str, num_nodes: int, *, degree: int = 5, p: float = 0.1,
                 dynamic: bool = True, mixing: str = "uniform",
                 seed_rng_fn: Optional[Callable[[int], np.random.Generator]] = None):
        _validate_mixing(mixing)
        self.num_slots = num_slots_for(kind, num_nodes, degree=degree, p=p)
        self.kind, self.num_nodes, self.degree, self.p = kind, int(num_nodes), degree, p
        self.dynamic, self.mixing = bool(dynamic), mixing
        self._rng_fn = _default_rng_fn if seed_rng_fn is None else seed_rng_fn

    def adjacency(self, round_index: int) -> np.ndarray:
        """bool [M, M] adjacency of G_r (deterministic given seed_rng_fn)."""
        m = self.num_nodes
        if self.kind == "torus":
            return torus_adjacency(m)
        if self.kind == "complete":
            return complete_adjacency(m)
        if self.kind == "ring" and not self.dynamic:
            return ring_adjacency(m)
        rng = self._rng_fn(int(round_index) if self.dynamic else 0)
        if self.kind == "ring":
            return ring_adjacency(m, rng)
        if self.kind == "regular":
            return regular_adjacency(m, self.degree, rng)
        adj = erdos_renyi_adjacency(m, self.p, rng)
        max_deg = int(adj.sum(axis=1).max())
        if max_deg + 1 > self.num_slots:
            raise ValueError(f"Erdős–Rényi draw at round {round_index} has max degree "
                             f"{max_deg} > slot cap {self.num_slots - 1} (M={m}, p={self.p}); "
                             "use a smaller p")
        return adj

    def graph(self, round_index: int) -> Graph:
        """Padded `Graph` [M, num_slots] of G_r with this stream's mixing."""
        return padded_graph(self.adjacency(round_index), self.mixing, self.num_slots)
