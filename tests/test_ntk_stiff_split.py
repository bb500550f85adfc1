"""The stiff/non-stiff split integrator 'imex' (SPEC step 7): its tableau against the Runge-Kutta order
conditions, its eigen-solve against NumPy, bad options, and real neighbourhoods of a real run against
float64 DOP853 (the synthetic-kernel, padding, vmap, NaN and recompilation checks are shared with the
other integrators in test_ntk_evolution.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spark_jax import ntk
from spark_jax.ntk import stiff_split as ss


def _tableaus():
    """Full 6x6 explicit and implicit matrices (float64), nodes c, weights b, embedded b_hat."""
    AE, AI = np.zeros((6, 6)), np.zeros((6, 6))
    for i, (re, ri) in enumerate(zip(ss.A_EXPLICIT, ss.A_IMPLICIT), start=1):
        AE[i, :len(re)] = re
        AI[i, :len(ri)] = ri
        AI[i, i] = ss.GAMMA
    return AE, AI, np.asarray(ss.C_NODES), np.asarray(ss.B), np.asarray(ss.B_HAT)


def test_kencarp4_order_conditions():
    """Kennedy & Carpenter's ARK4(3)6L[2]SA: both tableaus of order 4, coupled to order 3, stiffly
    accurate, the embedded pair of order 3, the dense output of order 3 with b(1) = b."""
    AE, AI, c, b, bh = _tableaus()
    for A in (AE, AI):
        np.testing.assert_allclose(A.sum(1), c, atol=1e-12)  # row sums are the nodes
        for w, order in ((b, 4), (bh, 3)):
            conds = [(w.sum(), 1.0), (w @ c, 1 / 2), (w @ c**2, 1 / 3), (w @ A @ c, 1 / 6)]
            if order == 4:
                conds += [(w @ c**3, 1 / 4), (w @ (c * (A @ c)), 1 / 8), (w @ A @ c**2, 1 / 12),
                          (w @ A @ A @ c, 1 / 24)]
            for got, want in conds:
                assert abs(got - want) < 1e-10, (got, want)
    for A1, A2 in ((AE, AI), (AI, AE)):  # the coupling conditions of order 4
        assert abs(b @ A1 @ A2 @ c - 1 / 24) < 1e-10, b @ A1 @ A2 @ c
    np.testing.assert_allclose(AI[-1], b, atol=1e-15)  # stiffly accurate
    theta = np.linspace(0.0, 1.0, 7)
    dense = np.stack([th * (np.asarray(ss.DENSE) @ np.array([th**2, th, 1.0])) for th in theta])  # [7, 6]
    np.testing.assert_allclose(dense[-1], b, atol=1e-12)
    np.testing.assert_allclose(dense.sum(1), theta, atol=1e-12)
    np.testing.assert_allclose(dense @ c, theta**2 / 2, atol=1e-12)
    np.testing.assert_allclose(dense @ c**2, theta**3 / 3, atol=1e-10)


@pytest.mark.device
def test_dominant_subspace_against_numpy():
    """Subspace iteration + Rayleigh-Ritz: on a kernel with a few dominant modes (as a real NTK) the top
    Ritz values match NumPy's eigenvalues; padding rows stay zero."""
    rng = np.random.default_rng(0)
    n, k = 40, 6
    Q = np.linalg.qr(rng.normal(size=(n, n)))[0]
    lam = np.concatenate([[200.0, 110.0, 70.0, 30.0], np.geomspace(5.0, 0.01, n - 4)])
    H = (Q * lam) @ Q.T
    Hp = np.zeros((n + 3, n + 3))
    Hp[:n, :n] = H
    Hp[n:, :] = Hp[:, n:] = 7.0  # garbage in the padding rows/columns
    mask = np.arange(n + 3) < n
    Hj = jnp.asarray(Hp, jnp.float32)
    real = jnp.asarray(mask)
    block = lambda V: jnp.where(real[:, None], Hj @ V, 0.0)
    U, got = jax.jit(lambda: ss.dominant_subspace(block, real, k, 3))()
    np.testing.assert_allclose(got[:4], lam[:4], rtol=1e-3)
    assert np.all(np.asarray(U)[n:] == 0)
    Ur = np.asarray(U, np.float64)[:n]
    np.testing.assert_allclose(Ur.T @ Ur, np.eye(k), atol=2e-3)  # float32 Gram orthonormalisation


def test_split_modes_are_checked():
    H, F0, Y = jnp.eye(5), jnp.zeros((5, 3)), jnp.zeros((5, 3))
    with pytest.raises(ValueError, match=r"split_modes \(algorithm_kw.evolution.imex.split_modes\) <= N, the neighbourhood.s 5 rows"):
        ntk.evolve_logits(H, F0, Y, jnp.ones(5, bool), 0.1, taus=(3,), method="imex", split_modes=6)
    with pytest.raises(ValueError, match="split_modes"):
        ntk.evolve_logits(H, F0, Y, jnp.ones(5, bool), 0.1, taus=(3,), method="imex", split_modes=-1)


@pytest.mark.slow
@pytest.mark.device
def test_imex_on_real_neighbourhoods_of_a_real_run(real_data_dir, xla_optimized):
    """The stiffest of the first 8 neighbourhoods of a real NTK-DFL run (8 nodes of fmnist300/alpha0.1,
    dynamic 2-regular, SPEC defaults) at round 0 (weights at init), 10 and 25 (trained weights, eta
    decayed, logits up to ~20): the default integrator at its config defaults agrees with float64
    DOP853 to 1e-4 on F(s_tau) and R_tau / tau."""
    from benchmarks.evolution import TAUS, reference, run_neighbourhoods
    from experiments.configs import base

    from spark_jax import config_options
    kw = base.base_config("ntk_dfl").algorithm_kw
    options = config_options.evolution_options(kw.evolution).evolve_kwargs(kw.compute.product_columns)
    assert options["method"] == "imex"
    evolve = jax.jit(functools.partial(ntk.evolve_logits, taus=TAUS, **options))
    found = run_neighbourhoods(real_data_dir, rounds=(0, 10, 25), num_nodes=8)
    rows = max(F0.shape[0] for _, F0, _, _, _ in found)  # padded to one size: one compilation (padding is inert)
    pad = lambda a, axes: np.pad(np.asarray(a), [(0, rows - a.shape[0]) if i in axes else (0, 0) for i in range(a.ndim)])
    for H, F0, Y, eta, label in found:
        n = F0.shape[0]
        F_ref, R_ref, _ = reference(*(np.asarray(a, np.float64) for a in (H, F0, Y)), eta)
        out = evolve(pad(H, (0, 1)), pad(F0, (0,)), pad(Y, (0,)), np.arange(rows) < n, jnp.float32(eta))
        err_F = np.max(np.abs(np.asarray(out.logits, np.float64)[:, :n] - F_ref))
        err_R = np.max(np.abs(np.asarray(out.residual_sums, np.float64)[:, :n] - R_ref) / np.asarray(TAUS)[:, None, None])
        assert err_F < 1e-4 and err_R < 1e-4, (label, err_F, err_R)
        assert int(out.products) < 400, (label, int(out.products))
