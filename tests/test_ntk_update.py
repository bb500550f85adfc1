"""SPEC steps 8 and 9: VJP weight updates (vs jax.grad) and the choice of tau."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spark_jax import ntk
from spark_jax.setting import models
from spark_jax.ntk.update import UPDATE_METHODS
from tests.test_ntk_kernel import _jacobian_f64, numpy_params

N_REAL, C = 8, 10


def _setup(seed=0, hidden=(16,)):
    model = models.make_model("mlp", hidden=hidden)
    params = numpy_params(model, seed)
    rng = np.random.default_rng(seed + 100)
    x = rng.normal(size=(N_REAL, 28, 28, 1)).astype(np.float32)
    targets = 0.6 * np.eye(C)[rng.integers(0, C, N_REAL)] + 0.4 * rng.dirichlet(np.ones(C), N_REAL)  # soft Y^
    return model, params, x, targets.astype(np.float32)


def _pad(x, targets):
    """Padding rows interleaved (positions 1, 5, 10) with garbage inputs and targets."""
    n = N_REAL + 3
    mask = ~np.isin(np.arange(n), [1, 5, 10])
    xp = np.full((n,) + x.shape[1:], np.nan, np.float32)
    tp = np.full((n, C), 3.0, np.float32)
    xp[mask], tp[mask] = x, targets
    return xp, tp, mask, np.flatnonzero(mask)


def _mean_ce(apply, params, x, targets):
    return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(apply(params, x)), axis=-1))


_grad_mean_ce = jax.jit(jax.grad(_mean_ce, argnums=1), static_argnums=0)


def _one_node_round(apply, params, x, mask, targets, eta, taus, method="euler"):
    """Kernel -> Euler evolution -> updates, the way an algorithm chains them."""
    x0 = ntk.zero_padding(x, mask)
    H = ntk.neighbourhood_kernel(apply, params, x, mask, method="contraction")
    evo = ntk.evolve_logits(H, apply(params, x0), targets, mask, eta, taus, method=method)
    return ntk.weight_updates(apply, params, x, mask, evo.residual_sums, eta), evo


@pytest.mark.parametrize("padded", [False, True])
def test_euler_tau1_update_is_a_gradient_step(padded):
    model, params, x, targets = _setup()
    eta = 0.3
    grads = _grad_mean_ce(model.apply, params, x, targets)
    want = jax.tree.map(lambda p, g: p - eta * g, params, grads)
    if padded:
        x, targets, mask, _ = _pad(x, targets)
    else:
        mask = np.ones(N_REAL, bool)
    step = jax.jit(functools.partial(_one_node_round, model.apply, taus=(1,)))
    deltas, _ = step(params, x, mask, targets, jnp.float32(eta))
    got = jax.tree.map(lambda p, d: p + d[0], params, deltas)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
    # The Jacobian path (used by sketch mode) gives the same updates as the VJP.
    chex.assert_trees_all_close(*_updates_both_ways(model.apply, params, x, mask, targets, jnp.float32(eta)),
                                rtol=1e-5, atol=1e-7)


@functools.partial(jax.jit, static_argnums=0)
def _updates_both_ways(apply, params, x, mask, targets, eta):
    jac = ntk.per_sample_jacobian(apply, params, x, mask=mask)
    F0 = apply(params, ntk.zero_padding(x, mask))
    R = ntk.evolve_logits(ntk.kernel_from_jacobian(jac, mask), F0, targets, mask, eta, (1, 4)).residual_sums
    return (ntk.weight_updates_from_jacobian(jac, R, eta, mask),
            ntk.weight_updates(apply, params, x, mask, R, eta))


def _ce_f64(logits, targets):
    logits, targets = np.asarray(logits, np.float64), np.asarray(targets, np.float64)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(np.mean(-np.sum(targets * logp, -1)))


def test_select_tau_picks_the_argmin():
    model, params, x, targets = _setup(2)
    xp, tp, mask, real = _pad(x, targets)
    # Candidates of very different quality: no move, gradient steps, large noise, NaN.
    grads = _grad_mean_ce(model.apply, params, x, targets)
    rng = np.random.default_rng(7)
    moves = [jax.tree.map(np.zeros_like, params), jax.tree.map(lambda g: -0.5 * np.asarray(g), grads),
             jax.tree.map(lambda g: -3.0 * np.asarray(g), grads),
             jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)]
    deltas = jax.tree.map(lambda *a: np.stack(a), *moves)
    select = jax.jit(functools.partial(ntk.select_tau, model.apply))
    idx, losses = select(params, xp, mask, tp, deltas)
    apply = jax.jit(model.apply)
    want = [_ce_f64(apply(jax.tree.map(np.add, params, m), x), targets) for m in moves]
    np.testing.assert_allclose(losses, want, rtol=1e-5)
    assert int(idx) == int(np.argmin(want))
    # A diverged candidate is never chosen.
    bad = jax.tree.map(lambda d: np.concatenate([d[:3], np.full_like(d[3:], np.nan)]), deltas)
    idx_bad, losses_bad = select(params, xp, mask, tp, bad)
    assert np.isnan(losses_bad[3]) and int(idx_bad) == int(np.argmin(want[:3]))
    # Linearized criterion: the loss of evolved logits F(s_tau).
    F = np.random.default_rng(3).normal(size=(5, len(real) + 3, C)).astype(np.float32)
    F *= np.arange(1, 6.0, dtype=np.float32)[:, None, None]
    idx_lin, lin = jax.jit(functools.partial(ntk.select_tau, model.apply, criterion="linearized"))(
        params, xp, mask, tp, None, evolved_logits=F)
    want_lin = [_ce_f64(F[t][real], targets) for t in range(5)]
    np.testing.assert_allclose(lin, want_lin, rtol=1e-5)
    assert int(idx_lin) == int(np.argmin(want_lin))
    with pytest.raises(ValueError, match="evolved_logits"):
        ntk.select_tau(model.apply, params, xp, mask, tp, None, criterion="linearized")


def test_masked_cross_entropy():
    rng = np.random.default_rng(0)
    logits, targets = rng.normal(size=(5, C)), rng.dirichlet(np.ones(C), 5)
    mask = np.array([True, False, True, True, False])
    nan_row = logits.copy()
    nan_row[1] = np.nan
    got = jax.jit(ntk.masked_cross_entropy)(nan_row.astype(np.float32), targets.astype(np.float32), mask)
    np.testing.assert_allclose(got, _ce_f64(logits[mask], targets[mask]), rtol=1e-6)


@pytest.mark.parametrize("hidden", [(16,), (8, 6)])
@pytest.mark.parametrize("method", UPDATE_METHODS)
@pytest.mark.device
def test_updates_and_losses_match_float64(method, hidden):
    """Delta_tau = -(eta/N) J^T R_tau for T = 3 cotangents, and the candidates' network losses, against
    float64 (explicit Jacobian contraction; one float64 forward per candidate), padding holding garbage."""
    model, params, x, targets = _setup(3, hidden)
    xp, tp, mask, real = _pad(x, targets)
    rng = np.random.default_rng(5)
    R = rng.normal(size=(3, len(mask), C)).astype(np.float32)
    R[:, ~mask] = np.nan  # the methods must mask residual rows themselves
    eta = 0.7
    deltas = jax.jit(functools.partial(ntk.weight_updates, model.apply, method=method))(
        params, xp, mask, R, jnp.float32(eta))
    J = _jacobian_f64(model.apply, params, x)  # [N, C, d]
    want = -(eta / N_REAL) * np.einsum("ncp,tnc->tp", J, np.asarray(R[:, real], np.float64))
    got = np.concatenate([np.asarray(a).reshape(3, -1) for a in jax.tree.leaves(deltas)], axis=1)
    assert all(a.shape[1:] == p.shape for a, p in zip(jax.tree.leaves(deltas), jax.tree.leaves(params)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    # Losses of params + Delta_t, the third candidate diverged (NaN): float64 forward per candidate.
    deltas = jax.tree.map(lambda d: np.concatenate([np.asarray(d)[:2] * 50, np.full_like(d[2:], np.nan)]), deltas)
    losses = jax.jit(functools.partial(ntk.network_losses, model.apply, method=method))(
        params, xp, mask, tp, deltas)
    with jax.enable_x64(True):
        for t in range(2):
            moved = jax.tree.map(lambda p, d: np.asarray(p, np.float64) + np.asarray(d[t], np.float64),
                                 params, deltas)
            logits = model.apply(moved, jnp.asarray(x, jnp.float64))
            np.testing.assert_allclose(losses[t], _ce_f64(logits, targets), rtol=1e-5)
    assert np.isnan(losses[2])


def test_unknown_update_method():
    model, params, x, targets = _setup()
    with pytest.raises(ValueError, match="unknown update method"):
        ntk.weight_updates(model.apply, params, x, np.ones(N_REAL, bool), np.zeros((1, N_REAL, C)), 0.1,
                           method="nope")
