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
    than "rk4". Accurate while h * ||dF'/dF|| stays inside RK4's stability
    region (about 2.7); tested against a float64 adaptive solver.
  * "euler": F_{t+1} = F_t - (eta/N) H (softmax(F_t) - Y^), i.e. exact
    gradient descent on the linearised model.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from spark_jax.ntk.jacobian import num_true

INTEGRATORS = ("rk4", "rk4_hermite", "euler")

_HIGHEST = jax.lax.Precision.HIGHEST


class Evolution(NamedTuple):
    """Per candidate tau (T = len(taus)); padding rows are zero in both.

    residual_sums: R_tau `[T, N, C]` (SPEC step 8).
    logits: F(s_tau) `[T, N, C]` (for the `linearized` tau criterion, step 9).
    """

    residual_sums: jax.Array
    logits: jax.Array


def check_taus(taus: Sequence[int]) -> tuple[int, ...]:
    """Validates the static candidate set: a non-empty, strictly ascending tuple of ints >= 0."""
    taus = tuple(int(t) for t in taus)
    if not taus or taus[0] < 0 or any(b <= a for a, b in zip(taus, taus[1:])):
        raise ValueError(f"taus must be a non-empty strictly ascending tuple of ints >= 0, got {taus}")
    return taus


def evolve_logits(H: jax.Array, F0: jax.Array, Y_hat: jax.Array, mask: jax.Array, eta: jax.Array,
                  taus: Sequence[int], method: str = "rk4", substeps: int = 1, stride: int = 4,
                  warmup: int = 0) -> Evolution:
    """SPEC step 7 (and the residual sums of step 8).

    Args:
      H: `[N, N]` kernel (step 5); padding rows/columns are ignored.
      F0: `[N, C]` logits of the averaged model f(X; w̄_i).
      Y_hat: `[N, C]` one-hot or soft targets (step 6).
      mask: bool `[N]`, False on padding rows.
      eta: scalar learning rate eta_r; may be traced (no recompilation).
      taus: static strictly ascending candidate step counts; tau_max = taus[-1].
      method: "rk4", "rk4_hermite" or "euler".
      substeps: static RK4 steps per grid interval ("rk4" only).
      stride: static grid intervals per RK4 step ("rk4_hermite" only).
      warmup: static; "rk4_hermite" takes its first `warmup` grid intervals at
        stride 1 (the stiff transient, where most of the error is made).

    Returns:
      `Evolution(residual_sums [T, N, C], logits [T, N, C])`.
    """
    taus = check_taus(taus)
    if method not in INTEGRATORS:
        raise ValueError(f"unknown integrator {method!r}; choose one of {INTEGRATORS}")
    if substeps < 1 or stride < 1 or warmup < 0:
        raise ValueError(f"need substeps >= 1, stride >= 1, warmup >= 0; got {substeps}, {stride}, {warmup}")
    real = mask[:, None]
    zero = jnp.zeros((), jnp.float32)
    H = H.astype(jnp.float32)
    Y_hat = Y_hat.astype(jnp.float32)
    eta = jnp.asarray(eta, jnp.float32)
    inv_n = 1.0 / num_true(mask)

    def residual(F):  # softmax(F) - Y^, zero on padding  [N, C]
        return jnp.where(real, jax.nn.softmax(F, axis=-1) - Y_hat, zero)

    def velocity_from_residual(r):  # dF/ds  [N, C]
        return jnp.where(real, -inv_n * jnp.matmul(H, r, precision=_HIGHEST), zero)

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

    F0 = jnp.where(real, F0.astype(jnp.float32), zero)  # padding rows may hold anything, even NaN
    R0 = jnp.zeros_like(F0)
    stack = lambda a: jnp.broadcast_to(a, (len(taus),) + a.shape)
    if method == "rk4_hermite":
        # The stiff transient of the first `warmup` intervals at stride 1 (plain RK4), then `stride`.
        first = min(warmup, taus[-1])
        steps = -(-(taus[-1] - first) // stride)  # ceil: the last step may run past tau_max (never recorded)
        carry = (F0, velocity(F0), R0, stack(R0), stack(F0))
        carry = hermite_steps(carry, 0, first, 1)
        _, _, _, R_taus, F_taus = hermite_steps(carry, first, steps, stride)
        return Evolution(residual_sums=R_taus, logits=F_taus)
    init = (F0, R0, stack(R0), stack(F0))
    (_, _, R_taus, F_taus), _ = jax.lax.scan(grid_step, init, jnp.arange(taus[-1], dtype=jnp.int32))
    return Evolution(residual_sums=R_taus, logits=F_taus)
