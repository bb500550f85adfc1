"""Adaptive step-size driver on the evolution grid (SPEC steps 7-8), shared by "dopri5" and "imex".

Time is measured in grid intervals t (s = eta * t), t in [0, tau_max]. A
method supplies one `attempt(F, aux, h)` of a step of length h (in grid
intervals) from F; the driver

  * cuts steps so that they end exactly on the candidate taus (a step up to
    `STRETCH` times the proposed one ends on the tau rather than leave a tiny
    step before it);
  * controls the step with the standard I controller on the method's scaled
    error norm (accept if < 1; h <- h * clip(0.9 * err^(-1/(q+1)), 0.2, 10),
    q the order of the embedded error estimate; never growing right after a
    rejection; at most `max_stride` grid intervals);
  * visits every grid point g passed by an accepted step, F(s_g) from the
    method's dense output, and accumulates R_{g+1} = R_g + residual(F(s_g)) —
    the exact Riemann sum of SPEC step 8 over the solution's grid values;
  * stores F(s_tau), R_tau at each candidate tau;
  * declares failure (every output NaN, so the caller's finite guard names the
    round, nodes and phase) on a non-finite error estimate, a step shrinking
    below `MIN_STEP` grid intervals, or more than `50 * tau_max + 1000`
    attempts — it never hangs.

Time t, step h and the outputs are in F0's dtype (float32, or float64 for a float64 evolution).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0
STRETCH = 1.1
MIN_STEP = 1e-4  # grid intervals; below this the integration is declared failed


def combine(weights, vectors):
    """sum_i weights[i] * vectors[i] over the non-zero static weights (a Runge-Kutta stage sum)."""
    terms = [w * v for w, v in zip(weights, vectors) if w != 0.0]
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


class Attempt(NamedTuple):
    """One attempted step from (F, aux) of length h grid intervals.

    F_new: the solution at t + h (the state's shape: `[C, N]` in `ntk.evolution`, class-major).
    aux_new: the method's carry at t + h (used only if the step is accepted).
    error: scalar scaled error norm (accept iff < 1; non-finite = failure;
      a large finite value = reject and shrink, e.g. a Newton iteration that
      did not converge).
    dense: theta -> F(t + theta * h) for theta in [0, 1].
    products: int32 scalar, kernel products spent by the attempt.
    """

    F_new: jax.Array
    aux_new: object
    error: jax.Array
    dense: Callable
    products: jax.Array


def integrate(attempt: Callable, aux0, F0: jax.Array, residual: Callable, taus: tuple[int, ...],
              max_stride: int, error_order: int, h0: float = 1.0):
    """Runs the adaptive integration over [0, tau_max] grid intervals.

    Args:
      attempt: (F, aux, h scalar) -> `Attempt`; pure, traceable. The driver is layout-agnostic:
        any state shape (`ntk.evolution` passes class-major `[C, N]`).
      aux0: the method's carry at t = 0 (a pytree of arrays).
      F0: the initial state (zero on padding); its dtype is that of t, h and the outputs.
      residual: F -> softmax(F) - Y^ (F's shape), zero on padding.
      taus: static strictly ascending candidate step counts.
      max_stride: static largest step, in grid intervals.
      error_order: static order q of the embedded error estimate (exponent 1/(q+1)).
      h0: static first proposed step, in grid intervals.

    Returns:
      (R_taus `[T, *F0.shape]`, F_taus `[T, *F0.shape]`, products int32 scalar); NaN in
      both outputs if the integration failed.
    """
    dtype = F0.dtype  # float32, or float64 for a float64 evolution
    tau_max = taus[-1]
    end = jnp.asarray(tau_max, dtype)
    stops = jnp.asarray(taus, dtype)
    exponent = -1.0 / (error_order + 1)

    def body(state):
        t, h_prop, F, aux, R, m, R_taus, F_taus, rejected, failed, it, products = state
        next_stop = jnp.min(jnp.where(stops > t, stops, end))  # the first tau after t (exact float of an int)
        # Steps end on the taus; one stretched by at most STRETCH rather than leave a tiny step before a tau.
        clipped = h_prop * STRETCH >= next_stop - t
        h = jnp.where(clipped, next_stop - t, h_prop)
        step = attempt(F, aux, h)
        err = step.error
        finite = jnp.isfinite(err)
        accept = finite & (err < 1.0)
        factor = SAFETY * jnp.where(err > 0, err, 1.0) ** exponent
        grow = jnp.where(err == 0.0, MAX_FACTOR, jnp.minimum(MAX_FACTOR, factor))
        grow = jnp.where(rejected, jnp.minimum(1.0, grow), grow)
        shrink = jnp.maximum(MIN_FACTOR, jnp.minimum(factor, SAFETY))
        # A step cut short to land on a tau does not shrink the next proposal.
        h_next = jnp.where(accept, jnp.where(clipped, jnp.maximum(h_prop, h * grow), h * grow), h * shrink)
        h_next = jnp.minimum(h_next, float(max_stride))
        t_new = jnp.where(clipped, next_stop, t + h)
        inv_h = 1.0 / jnp.where(h > 0, h, 1.0)

        def more(carry):  # grid points m, m + 1, ... < t_new, only on acceptance
            return accept & (carry[1].astype(dtype) < t_new)

        def visit(carry):
            R, g = carry
            return R + residual(step.dense((g.astype(dtype) - t) * inv_h)), g + 1

        R, m = jax.lax.while_loop(more, visit, (R, m))
        # A step ending on a grid point (always so on a tau): store if a tau, then add its residual.
        on_grid = accept & (m.astype(dtype) == t_new)
        is_tau = on_grid & clipped
        slot = jnp.argmax(stops == t_new)
        R_taus = jnp.where(is_tau, R_taus.at[slot].set(R), R_taus)
        F_taus = jnp.where(is_tau, F_taus.at[slot].set(step.F_new), F_taus)
        R = jnp.where(on_grid, R + residual(step.F_new), R)
        m = jnp.where(on_grid, m + 1, m)

        failed = failed | ~finite | (~accept & (h_next < MIN_STEP))
        t = jnp.where(accept, t_new, t)
        t = jnp.where(failed, end, t)  # stop a failed integration
        F = jnp.where(accept, step.F_new, F)
        aux = jax.tree.map(lambda a, b: jnp.where(accept, a, b), step.aux_new, aux)
        return (t, h_next, F, aux, R, m, R_taus, F_taus, ~accept, failed, it + 1, products + step.products)

    max_iterations = 50 * tau_max + 1000  # a guard against endless loops, far above any real run

    def running(state):
        t, it = state[0], state[10]
        return (t < end) & (it < max_iterations)

    # Grid point 0: tau = 0 is stored here; then R_1 = residual(F(s_0)).
    outputs = jnp.zeros((len(taus),) + F0.shape, dtype)
    R_taus, F_taus = outputs, outputs
    if taus[0] == 0:
        F_taus = F_taus.at[0].set(F0)
    state = (jnp.zeros((), dtype), jnp.asarray(h0, dtype), F0, aux0, residual(F0), jnp.ones((), jnp.int32),
             R_taus, F_taus, jnp.zeros((), bool), jnp.zeros((), bool), jnp.zeros((), jnp.int32),
             jnp.zeros((), jnp.int32))
    state = jax.lax.while_loop(running, body, state)
    t, failed, R_taus, F_taus, products = state[0], state[9], state[6], state[7], state[11]
    failed = failed | (t < end)
    nan = jnp.asarray(jnp.nan, dtype)
    return jnp.where(failed, nan, R_taus), jnp.where(failed, nan, F_taus), products
