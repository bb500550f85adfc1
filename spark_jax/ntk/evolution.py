"""Function evolution of the linearised network on the neighbourhood set (SPEC step 7).

    dF/ds = -(1/N) H (softmax(F) - Y^),   F(0) = F0,

on the grid s_t = eta * t, t = 0 .. tau_max, where N = mask.sum() (N_true) and
H is the class-traced kernel of step 5. Alongside, the residual sums of step 8

    R_tau = sum_{t < tau} (softmax(F(s_t)) - Y^)

are accumulated for every candidate tau. Padding rows (mask False) never
influence real rows; their residual sums and logits are returned as zero.

Integrators ([choice] `method`):
  * "rk4": classical Runge-Kutta, `substeps` steps of eta / substeps per grid
    interval (SPEC default; agrees with a float64 adaptive solver).
  * "rk4_hermite": classical Runge-Kutta with steps of `stride` grid
    intervals (h = stride * eta); F at the grid points in between from the
    cubic Hermite interpolant of (F_n, F'_n, F_{n+1}, F'_{n+1}) (dense output,
    O(h^4) like the step). F'_{n+1} is the next step's first stage, so a step
    costs 4 kernel products for `stride` grid intervals: `stride` times fewer
    than "rk4". Accurate only while h * ||dF'/dF|| stays inside RK4's
    stability region (about 2.7): on real neighbourhoods with
    eta * lambda_max / N near 4 (the demo setting) stride 4 is unstable
    (error ~1); "dopri5" finds the stable step by itself.
  * "dopri5": adaptive Dormand-Prince 5(4) (the pair of scipy's RK45, FSAL:
    6 kernel products per attempted step) with the standard step-size
    controller on the mixed error tolerance `atol + rtol * |F|`, steps capped
    at `max_stride` grid intervals, F at the grid points from the method's
    4th-order dense output. The step grows as the transient decays (1 -> ~25
    grid intervals on Fashion-MNIST neighbourhoods), so it needs ~2-3x fewer
    kernel products than "rk4_hermite" at the same accuracy. Under `vmap` the
    nodes of a chunk step independently and the loop runs until the last one
    is done. A failed integration (non-finite error estimate, or the step
    shrinking below 1e-4 grid intervals) returns NaN so the caller's finite
    guard names it.
  * "imex" (default of the run configs): the exact split H = U diag(Lambda) U^T + rest, the top
    `split_modes` eigen-directions of H (a few subspace iterations) treated implicitly and the rest
    explicitly by Kennedy & Carpenter's adaptive KenCarp4 IMEX pair (spark_jax/ntk/stiff_split.py),
    dense output at the grid points, steps cut at the taus, max-norm error control. The stiffness
    sits in those few modes, so its steps are set by accuracy, not stability: 2-5x fewer kernel
    products than "dopri5" on real neighbourhoods (BUILD.md). NaN on failure as "dopri5".
  * "euler": F_{t+1} = F_t - (eta/N) H (softmax(F_t) - Y^), i.e. exact
    gradient descent on the linearised model.

Layout: inside, every state is class-major, `[C, N]` (F^T, r^T, ...), and a kernel product is
r H = (H r^T)^T (`[C, N] x [N, N]`; H is symmetrised first, which leaves a symmetric H bit for bit
unchanged). On XLA:CPU the softmax and elementwise work over rows of C = 10
entries ran ~4x slower than over `[C, N]`, and `[10, N] x [N, N]` ~1.4x faster than `[N, N] x
[N, 16]`; only the inputs and outputs are `[N, C]` (BUILD.md "Performance"). With `columns` > C
the product's left operand is zero-padded to that many rows first (speed only: no value changes;
slower on XLA:CPU in this layout, so the run configs' default is 0).

Dtype: everything (H, Y^, eta, the states, residual sums, and the adaptive drivers' time t and step h)
is computed in `compute_dtype(H, F0)`: float32 unless H or F0 is float64 (x64 enabled), then float64
end to end, so tight tolerances (1e-10) are reachable.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from spark_jax.dtypes import compute_dtype
from spark_jax.ntk import adaptive, stiff_split
from spark_jax.ntk.jacobian import num_true
from spark_jax.options import INTEGRATORS  # the option list, defined once

_HIGHEST = jax.lax.Precision.HIGHEST


class Evolution(NamedTuple):
    """Per candidate tau (T = len(taus)); padding rows are zero in both; both in the compute dtype.

    residual_sums: R_tau `[T, N, C]` (SPEC step 8).
    logits: F(s_tau) `[T, N, C]` (for the `linearized` tau criterion, step 9).
    products: int32 scalar, the kernel products (H r^T)^T `[C, N] x [N, N]` made (for
      "dopri5" it depends on the data; a diagnostic for benchmarks).
    """

    residual_sums: jax.Array
    logits: jax.Array
    products: jax.Array


def check_taus(taus: Sequence[int]) -> tuple[int, ...]:
    """Validates the static candidate set: a non-empty, strictly ascending tuple of ints >= 0."""
    taus = tuple(int(t) for t in taus)
    if not taus or taus[0] < 0 or any(b <= a for a, b in zip(taus, taus[1:])):
        raise ValueError(f"taus must be a non-empty strictly ascending tuple of ints >= 0, got {taus}")
    return taus


def evolve_logits(H: jax.Array, F0: jax.Array, Y_hat: jax.Array, mask: jax.Array, eta: jax.Array,
                  taus: Sequence[int], method: str = "rk4", substeps: int = 1, stride: int = 4,
                  warmup: int = 0, rtol: float = 1e-6, atol: float = 1e-6, max_stride: int = 32,
                  columns: int = 0, split_modes: int = 8, split_iterations: int = 3) -> Evolution:
    """SPEC step 7 (and the residual sums of step 8).

    Args:
      H: `[N, N]` kernel (step 5); padding rows/columns are ignored. Its symmetric part (H + H^T) / 2
        is used: bit for bit H when H is symmetric, as the kernel of step 5 is up to round-off ("Layout").
      F0: `[N, C]` logits of the averaged model f(X; w̄_i). With H, sets the compute dtype
        (`spark_jax.dtypes.compute_dtype(H, F0)`: float32, or float64 if either is).
      Y_hat: `[N, C]` one-hot or soft targets (step 6), cast to the compute dtype.
      mask: bool `[N]`, False on padding rows.
      eta: scalar learning rate eta_r; may be traced (no recompilation).
      taus: static strictly ascending candidate step counts; tau_max = taus[-1].
      method: one of `INTEGRATORS` ("rk4", "rk4_hermite", "dopri5", "euler").
      substeps: static RK4 steps per grid interval ("rk4" only).
      stride: static grid intervals per RK4 step ("rk4_hermite" only).
      warmup: static; "rk4_hermite" takes its first `warmup` grid intervals at
        stride 1 (the stiff transient, where most of the error is made).
      rtol, atol: static error tolerances per entry of F ("dopri5": RMS norm; "imex": max norm).
      max_stride: static largest "dopri5" / "imex" step, in grid intervals.
      split_modes: static k >= 0, modes of H treated implicitly ("imex" only; 0 = a plain
        explicit KenCarp4 step).
      split_iterations: static subspace iterations of the eigen-solve ("imex" only).
      columns: static; pad the right-hand side of kernel products to this many
        columns when C is smaller (speed only; 0 = never).

    Returns:
      `Evolution(residual_sums [T, N, C], logits [T, N, C], products)`, floats in the compute dtype.
    """
    taus = check_taus(taus)
    if method not in INTEGRATORS:
        raise ValueError(f"unknown integrator {method!r}; choose one of {INTEGRATORS}")
    if substeps < 1 or stride < 1 or warmup < 0 or max_stride < 1 or columns < 0:
        raise ValueError(f"need substeps >= 1, stride >= 1, warmup >= 0, max_stride >= 1, columns >= 0; got "
                         f"{substeps}, {stride}, {warmup}, {max_stride}, {columns}")
    if split_modes < 0 or split_iterations < 0 or (method == "imex" and split_modes > F0.shape[0]):
        raise ValueError(f"need 0 <= split_modes (algorithm_kw.evolution.imex.split_modes) <= N, the neighbourhood's {F0.shape[0]} "
                         f"rows, and split_iterations >= 0; got {split_modes}, {split_iterations}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"need rtol > 0 and atol > 0, got {rtol}, {atol}")
    dtype = compute_dtype(H, F0)
    num_rows, num_classes = F0.shape
    real = mask[None, :]  # the states are class-major [C, N] (module docstring)
    zero = jnp.zeros((), dtype)
    H = H.astype(dtype)
    H = 0.5 * (H + H.T)  # bit for bit H if H is symmetric; `product` relies on symmetry
    Y_hat = Y_hat.astype(dtype).T
    eta = jnp.asarray(eta, dtype)
    inv_n = 1.0 / num_true(mask, dtype)

    def residual(F):  # softmax(F) - Y^ over the classes, zero on padding  [C, N]
        return jnp.where(real, jax.nn.softmax(F, axis=0) - Y_hat, zero)

    pad = max(columns - num_classes, 0)

    def product(r):  # (H r^T)^T = r H (H symmetric)  [C, N]; r zero-padded to `columns` rows if asked
        if pad:
            return jnp.matmul(jnp.pad(r, ((0, pad), (0, 0))), H, precision=_HIGHEST)[:num_classes]
        return jnp.matmul(r, H, precision=_HIGHEST)

    def velocity_from_residual(r):  # dF/ds  [C, N]
        return jnp.where(real, -inv_n * product(r), zero)

    velocity = lambda F: velocity_from_residual(residual(F))

    def rk4_step(F, h, k1):
        k2 = velocity(F + 0.5 * h * k1)
        k3 = velocity(F + 0.5 * h * k2)
        k4 = velocity(F + h * k3)
        return F + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

    def advance(F, r):  # F(s_t) -> F(s_{t+1}); r = residual(F) is already known
        if method == "euler":
            return F + eta * velocity_from_residual(r)
        h = eta / substeps
        F = rk4_step(F, h, velocity_from_residual(r))
        if substeps > 1:
            F = jax.lax.fori_loop(1, substeps, lambda _, G: rk4_step(G, h, velocity(G)), F)
        return F

    hits = jnp.asarray(taus, jnp.int32)[:, None, None]  # [T, 1, 1]

    def record(R_taus, F_taus, t, F, R):  # keep only the T requested states, never the trajectory
        hit = hits == t
        return jnp.where(hit, R[None], R_taus), jnp.where(hit, F[None], F_taus)

    def grid_step(carry, t):
        F, R, R_taus, F_taus = carry
        r = residual(F)
        F, R = advance(F, r), R + r  # F(s_{t+1}), R_{t+1}
        return (F, R) + record(R_taus, F_taus, t + 1, F, R), None

    def hermite(F0, F1, d0, d1, th):  # cubic through (F0, d0) at th=0 and (F1, d1) at th=1; d = h F'
        return ((2 * th**3 - 3 * th**2 + 1) * F0 + (-2 * th**3 + 3 * th**2) * F1
                + (th**3 - 2 * th**2 + th) * d0 + (th**3 - th**2) * d1)

    def hermite_steps(carry, start: int, num_steps: int, stride: int):
        """`num_steps` RK4 steps of `stride` grid intervals from grid point `start` (all static)."""

        def step(carry, n):  # grid points t0 .. t0 + stride
            F, k1, R, R_taus, F_taus = carry
            h = stride * eta
            k2 = velocity(F + 0.5 * h * k1)
            k3 = velocity(F + 0.5 * h * k2)
            k4 = velocity(F + h * k3)
            F1 = F + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
            k1_next = velocity(F1)
            t0 = start + n * stride
            F_grid = [F] + [hermite(F, F1, h * k1, h * k1_next, j / stride) for j in range(1, stride)] + [F1]
            for j in range(stride):  # static; R_{t0+j+1} = R_{t0+j} + residual(F(s_{t0+j}))
                R = R + residual(F_grid[j])
                R_taus, F_taus = record(R_taus, F_taus, t0 + j + 1, F_grid[j + 1], R)
            return (F1, k1_next, R, R_taus, F_taus), None

        if num_steps <= 0:
            return carry
        return jax.lax.scan(step, carry, jnp.arange(num_steps, dtype=jnp.int32))[0]

    F0 = jnp.where(real, F0.astype(dtype).T, zero)  # padding rows may hold anything, even NaN
    R0 = jnp.zeros_like(F0)
    stack = lambda a: jnp.broadcast_to(a, (len(taus),) + a.shape)

    def evolution(R_taus, F_taus, products):  # [T, C, N] -> [T, N, C]
        return Evolution(jnp.swapaxes(R_taus, 1, 2), jnp.swapaxes(F_taus, 1, 2), products)

    if method == "dopri5":
        deriv = lambda F: eta * velocity(F)  # dF/dt in grid units  [C, N]
        attempt = _dopri5_attempt(deriv, real, rtol, atol)
        R_taus, F_taus, products = adaptive.integrate(attempt, deriv(F0), F0, residual, taus, max_stride,
                                                      error_order=4)
        return evolution(R_taus, F_taus, 1 + products)
    if method == "imex":
        a = eta * inv_n

        def block_product(V):  # H @ V  [N, p], padding rows zero
            return jnp.where(mask[:, None], jnp.matmul(H, V, precision=_HIGHEST), zero)

        if split_modes:
            U, lam = stiff_split.dominant_subspace(block_product, mask, split_modes, split_iterations, dtype)
            blocks = -(-split_modes // max(columns, num_classes))  # products of the width of an evolution product
            eigen_products = (split_iterations + 1) * blocks
        else:
            U, lam, eigen_products = jnp.zeros((num_rows, 0), dtype), jnp.zeros((0,), dtype), 0
        probabilities = lambda F: jnp.where(real, jax.nn.softmax(F, axis=0), zero)
        hr = lambda r: jnp.where(real, product(r), zero)
        attempt, carry_at = stiff_split.imex_attempt(hr, residual, probabilities, U, lam, a, mask, rtol, atol)
        aux0 = carry_at(F0)
        R_taus, F_taus, products = adaptive.integrate(attempt, aux0, F0, residual, taus, max_stride,
                                                      error_order=3)
        return evolution(R_taus, F_taus, 1 + eigen_products + products)
    if method == "rk4_hermite":
        # The stiff transient of the first `warmup` intervals at stride 1 (plain RK4), then `stride`.
        first = min(warmup, taus[-1])
        steps = -(-(taus[-1] - first) // stride)  # ceil: the last step may run past tau_max (never recorded)
        carry = (F0, velocity(F0), R0, stack(R0), stack(F0))
        carry = hermite_steps(carry, 0, first, 1)
        _, _, _, R_taus, F_taus = hermite_steps(carry, first, steps, stride)
        return evolution(R_taus, F_taus, jnp.int32(4 * (first + steps) + 1))
    init = (F0, R0, stack(R0), stack(F0))
    (_, _, R_taus, F_taus), _ = jax.lax.scan(grid_step, init, jnp.arange(taus[-1], dtype=jnp.int32))
    products = taus[-1] if method == "euler" else 4 * substeps * taus[-1]
    return evolution(R_taus, F_taus, jnp.int32(products))


# Dormand-Prince 5(4): nodes c, stages a, 5th-order weights b, error weights e = b - b*, and the
# 4th-order dense output y(t + theta h) = y + h sum_i k_i sum_j p[i][j] theta^(j+1) (Hairer et al.;
# the same tableau as scipy.integrate.RK45, which tests/test_ntk_evolution.py checks).
_DP_A = ((1 / 5,),
         (3 / 40, 9 / 40),
         (44 / 45, -56 / 15, 32 / 9),
         (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
         (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656))
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_DP_E = (-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40)
_DP_P = ((1.0, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432),
         (0.0, 0.0, 0.0, 0.0),
         (0.0, 131558114200 / 32700410799, -68118460800 / 10900136933, 87487479700 / 32700410799),
         (0.0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072),
         (0.0, 127303824393 / 49829197408, -318862633887 / 49829197408, 701980252875 / 199316789632),
         (0.0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844),
         (0.0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423))


def _dopri5_attempt(deriv, real, rtol: float, atol: float):
    """One Dormand-Prince 5(4) step for `adaptive.integrate`: aux = k1 = dF/dt at F (FSAL).

    6 kernel products per attempt (stages 2-7; the 7th is the next step's first)."""

    def attempt(F, k1, h):  # F, k1 [C, N] (class-major), real [1, N]
        ks = [k1]
        for row in _DP_A:
            ks.append(deriv(F + h * adaptive.combine(row, ks)))
        F_new = F + h * adaptive.combine(_DP_B, ks)
        k7 = deriv(F_new)  # FSAL: the next step's first stage
        ks.append(k7)
        scale = atol + rtol * jnp.maximum(jnp.abs(F), jnp.abs(F_new))
        err = jnp.where(real, h * adaptive.combine(_DP_E, ks) / scale, 0.0)
        count = jnp.maximum(jnp.sum(jnp.broadcast_to(real, F.shape)), 1)
        err_norm = jnp.sqrt(jnp.sum(err * err) / count)
        Q = [adaptive.combine([p[j] for p in _DP_P], ks) for j in range(4)]  # [C, N] each

        def dense(theta):  # 4th-order dense output (Hairer et al.)
            return F + h * (theta * (Q[0] + theta * (Q[1] + theta * (Q[2] + theta * Q[3]))))

        return adaptive.Attempt(F_new, k7, err_norm, dense, jnp.int32(6))

    return attempt
