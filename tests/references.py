"""Independent float64 references shared by several test files (NumPy / scipy loops, not the library's code)."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from scipy.integrate import solve_ivp

ROWS = 16  # the JAX parts (Jacobian, logits) run on rows padded to a multiple of this: one compilation per size
_JITTED = {}  # id(apply) -> (apply, its jitted Jacobian, its jitted logits); apply kept so its id is not reused


def _jitted(apply):
    if id(apply) not in _JITTED:
        _JITTED[id(apply)] = (apply, jax.jit(lambda w, x: jax.jacrev(lambda p: apply(p, x))(w)), jax.jit(apply))
    return _JITTED[id(apply)][1:]


def _padded(x):
    x = np.asarray(x)
    return np.concatenate([x, np.zeros((-len(x) % ROWS, *x.shape[1:]), x.dtype)])


def jacobian(apply, w, x, num_classes):
    """J [N, C, P] float64 of the network's logits on the rows x (per-sample rows, padding rows dropped)."""
    jac = _jitted(apply)[0](w, _padded(x))
    n = len(x)
    return np.concatenate([np.asarray(a, np.float64)[:n].reshape(n, num_classes, -1) for a in jax.tree.leaves(jac)],
                          axis=-1)


def logits(apply, w, x):
    """The network's logits [N, C] float64 on the rows x."""
    return np.asarray(_jitted(apply)[1](w, _padded(x)), np.float64)[:len(x)]


def _flat_nodes(params, nodes):
    """The flat float64 parameters [len(nodes), P] of `nodes` (leaves [M, ...], fetched once) and the
    unravel of one node's flat vector."""
    params = jax.tree.map(np.asarray, params)
    flat = np.stack([np.asarray(ravel_pytree(jax.tree.map(lambda a: a[j], params))[0], np.float64) for j in nodes])
    return flat, ravel_pytree(jax.tree.map(lambda a: a[0], params))[1]


def softmax(F):
    P = np.exp(F - F.max(-1, keepdims=True))
    return P / P.sum(-1, keepdims=True)


def ntk_dfl_reference_node(apply, w_bar, x, y, eta, taus, integrator="euler", num_classes=10):
    """Float64 NumPy NTK-DFL update for one node on its unpadded neighbourhood (SPEC steps 5-9): H from
    the explicit Jacobian, the evolution by an Euler loop or scipy's DOP853 at rtol 1e-10 (for the ODE
    integrators), Delta_tau = -(eta/N) J^T R_tau, tau* by the network's loss. Returns (w̄ + Delta_tau*
    flat float64, index of tau*)."""
    flat_w, unravel = ravel_pytree(w_bar)
    n, c = len(y), num_classes
    J = jacobian(apply, w_bar, x, c)
    H = np.einsum("icp,jcp->ij", J, J) / c
    Y = np.eye(c)[y]
    F = logits(apply, w_bar, x)
    R, Rs = np.zeros_like(F), {}
    if integrator == "euler":
        for t in range(max(taus) + 1):
            if t in taus:
                Rs[t] = R.copy()
            P = softmax(F)
            R += P - Y
            F = F - eta / n * H @ (P - Y)
    else:
        rhs = lambda s, f: (-(H @ (softmax(f.reshape(n, c)) - Y)) / n).ravel()
        grid = eta * np.arange(max(taus) + 1)
        sol = solve_ivp(rhs, (0.0, grid[-1]), F.ravel(), method="DOP853", t_eval=grid, rtol=1e-10, atol=1e-12)
        Fs = sol.y.T.reshape(-1, n, c)
        cum = np.concatenate([np.zeros((1, n, c)), np.cumsum(softmax(Fs[:-1]) - Y, axis=0)])
        Rs = {t: cum[t] for t in taus}
    losses, cands = [], []
    for t in taus:
        delta = -(eta / n) * np.einsum("icp,ic->p", J, Rs[t])
        w = unravel(jnp.asarray(np.asarray(flat_w, np.float64) + delta, jnp.float32))
        out = logits(apply, w, x)
        logp = out - out.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        losses.append(-np.mean(logp[np.arange(n), y]))
        cands.append(np.asarray(flat_w, np.float64) + delta)
    best = int(np.argmin(losses))
    return cands[best], best


def ntk_dfl_reference_round(apply, params, node_data, adj, eta, taus, integrator="euler"):
    """One NTK-DFL round node by node in float64: uniform mixing over each closed neighbourhood of the bool
    adjacency `adj` (SPEC step 2), then `ntk_dfl_reference_node`. params: leaves [M, ...] before the round.
    Returns (list of each node's new flat float64 params, list of tau* indices)."""
    m = adj.shape[0]
    W = np.zeros(adj.shape)
    for i in range(m):
        closed = [i] + list(np.flatnonzero(adj[i]))
        W[i, closed] = 1.0 / len(closed)
    flat, unravel = _flat_nodes(params, range(m))
    counts = np.asarray(node_data.mask).sum(1)
    expected, bests = [], []
    for i in range(m):
        w_bar = unravel(jnp.asarray(W[i] @ flat, jnp.float32))
        closed = [i] + list(np.flatnonzero(adj[i]))
        x = np.concatenate([np.asarray(node_data.x)[j, :counts[j]] for j in closed])
        y = np.concatenate([np.asarray(node_data.y)[j, :counts[j]] for j in closed])
        new, best = ntk_dfl_reference_node(apply, w_bar, x, y, eta, taus, integrator)
        expected.append(new)
        bests.append(best)
    return expected, bests


def mixed_neighbourhood(params, node_data, adj, i):
    """Node i's w̄_i (uniform mixing over its closed neighbourhood, float64 then float32) and its
    neighbourhood's real rows x, y (self first, then neighbours in ascending order)."""
    closed = [i] + list(np.flatnonzero(adj[i]))
    flat, unravel = _flat_nodes(params, closed)
    counts = np.asarray(node_data.mask).sum(1)
    x = np.concatenate([np.asarray(node_data.x)[j, :counts[j]] for j in closed])
    y = np.concatenate([np.asarray(node_data.y)[j, :counts[j]] for j in closed])
    return unravel(jnp.asarray(flat.mean(0), jnp.float32)), x, y


def ntk_reference_evolution(apply, w_bar, x, y, eta, taus, num_classes=10):
    """Float64 H (explicit Jacobian), F0, one-hot Y and F(s_tau) [T, N, C] by scipy's DOP853 (rtol 1e-10)."""
    n, c = len(y), num_classes
    J = jacobian(apply, w_bar, x, c)
    H = np.einsum("icp,jcp->ij", J, J) / c
    Y = np.eye(c)[y]
    F0 = logits(apply, w_bar, x)
    rhs = lambda s, f: (-(H @ (softmax(f.reshape(n, c)) - Y)) / n).ravel()
    grid = eta * np.asarray(taus, np.float64)
    sol = solve_ivp(rhs, (0.0, grid[-1]), F0.ravel(), method="DOP853", t_eval=grid, rtol=1e-10, atol=1e-12)
    return H, F0, Y, sol.y.T.reshape(-1, n, c)
