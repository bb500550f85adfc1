"""An exact stiff/non-stiff split of the evolution, integrated IMEX (SPEC step 7, integrator "imex").

In grid units t (s = eta * t) the evolution is

    dF/dt = -a H r(F),   a = eta / N,   r(F) = softmax(F) - Y^   ([N, C]).

Its stiffness (a * lambda_max(H) = 2-4 per grid interval on Fashion-MNIST
neighbourhoods) sits in a handful of modes of H: on a real neighbourhood the
top eigenvalues / N are 198, 115, 76, 34, 21, ..., and removing the top 16
eigen-directions lowers the stiffness ~50x (BUILD.md). With U `[N, k]` and
Lambda `[k]` from a rough eigen-solve,

    H = U diag(Lambda) U^T  +  (H - U diag(Lambda) U^T)

is an *exact* identity for any U and Lambda (rough eigenpairs only leave some
stiffness in the second part): the first part is treated implicitly, the
second explicitly, with Kennedy & Carpenter's ARK4(3)6L[2]SA ("KenCarp4":
ERK + ESDIRK, 4th order, L-stable and stiffly accurate implicit part,
embedded 3rd-order error estimate, 3rd-order dense output; the tableau of
diffrax's `KenCarp4`, checked against its order conditions in
tests/test_ntk_stiff_split.py).

An implicit stage solves Z = A + h gamma f_I(Z), f_I(Z) = -a U diag(Lambda) U^T r(Z).
The unknown moves only inside span(U) (x) R^C: Z = A + U Y with Y `[k, C]`, and
Newton works on the k*C unknowns of

    G(Y) = Y + c diag(Lambda) U^T r(A + U Y) = 0,    c = h gamma a,

with the Jacobian I + c diag(Lambda) U^T S U built from the softmax curvature
S (per row diag(p) - p p^T) at the step's start — no product with H. The
matrix is LU-factorised once per attempted step and shared by its 5 implicit
stages (simplified Newton; the iteration stops when the update is below 3% of
the error tolerance, at most `NEWTON_ITERATIONS` times; otherwise the step is
rejected and shrunk).

Eigenpairs: block subspace iteration on p = k columns from a fixed start
block (the constant vector — H's top eigenvector is close to it — and fixed
Gaussian columns), `iterations` products H @ V, then Rayleigh-Ritz (one more
product). Every product with H is counted in `Evolution.products` (a block
product of 16 columns costs about what one padded evolution product does).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from spark_jax.ntk import adaptive

_HIGHEST = jax.lax.Precision.HIGHEST
NEWTON_ITERATIONS = 10
NEWTON_TOLERANCE = 0.03  # of the scaled error norm
NEWTON_FAILED = 1e10  # the error reported for a step whose Newton iteration did not converge: reject, shrink

# Kennedy & Carpenter (2003) ARK4(3)6L[2]SA. Explicit and implicit rows below the diagonal, the
# implicit diagonal gamma (stage 1 explicit), the shared weights b and embedded weights b_hat, and the
# 3rd-order dense output b_i(theta) = theta * (d_i0 theta^2 + d_i1 theta + d_i2).
GAMMA = 0.25
B = (82889 / 524892, 0.0, 15625 / 83664, 69875 / 102672, -2260 / 8211, GAMMA)
B_HAT = (4586570599 / 29645900160, 0.0, 178811875 / 945068544, 814220225 / 1159782912, -3700637 / 11593932,
         61727 / 225920)
C_NODES = (0.0, 0.5, 83 / 250, 31 / 50, 17 / 20, 1.0)
A_EXPLICIT = ((0.5,),
              (13861 / 62500, 6889 / 62500),
              (-116923316275 / 2393684061468, -2731218467317 / 15368042101831, 9408046702089 / 11113171139209),
              (-451086348788 / 2902428689909, -2682348792572 / 7519795681897, 12662868775082 / 11960479115383,
               3355817975965 / 11060851509271),
              (647845179188 / 3216320057751, 73281519250 / 8382639484533, 552539513391 / 3454668386233,
               3354512671639 / 8306763924573, 4040 / 17871))
A_IMPLICIT = ((GAMMA,),
              (8611 / 62500, -1743 / 31250),
              (5012029 / 34652500, -654441 / 2922500, 174375 / 388108),
              (15267082809 / 155376265600, -71443401 / 120774400, 730878875 / 902184768, 2285395 / 8070912),
              B[:-1])
DENSE = ((6818779379841 / 7100303317025, -54480133 / 30881146, 6943876665148 / 7220017795957),
         (0.0, 0.0, 0.0),
         (2173542590792 / 12501825683035, -11436875 / 14766696, 7640104374378 / 9702883013639),
         (-31592104683404 / 5083833661969, 174696575 / 18121608, -20649996744609 / 7521556579894),
         (61146701046299 / 7138195549469, -12120380 / 966161, 8854892464581 / 2390941311638),
         (-17219254887155 / 4939391667607, 3843 / 706, -11397109935349 / 6675773540249))
ERROR = tuple(b - bh for b, bh in zip(B, B_HAT))


def dominant_subspace(block_product: Callable, real: jax.Array, num_modes: int, iterations: int,
                      dtype=jnp.float32):
    """Rough top eigenpairs of the PSD kernel H by subspace iteration and Rayleigh-Ritz.

    Args:
      block_product: V `[N, p]` -> H @ V `[N, p]` (rows of padding zero).
      real: bool `[N]`, False on padding rows.
      num_modes: static p >= 1, the number of eigenpairs.
      iterations: static number of subspace iterations (products) before Rayleigh-Ritz.
      dtype: the evolution's compute dtype (float32 or float64); the start block is drawn in float32
        and cast, so both dtypes start from the same block.

    Returns:
      (U `[N, p]` with zero padding rows, Lambda `[p]` >= 0, descending); the
      split H = U diag(Lambda) U^T + rest is exact whatever their accuracy.
    """
    n = real.shape[0]
    rows = real[:, None]
    start = jax.random.normal(jax.random.key(0), (n, num_modes), jnp.float32).astype(dtype)  # fixed: deterministic
    start = start.at[:, 0].set(1.0)

    def orthonormal(V):  # V Q D^(-1/2) from the Gram matrix V^T V = Q D Q^T: two small GEMMs and a p x p eigh
        V = jnp.where(rows, V, 0.0)  # (XLA:CPU's Householder QR and triangular solves are slow at this size)
        d, Q = jnp.linalg.eigh(jnp.matmul(V.T, V, precision=_HIGHEST))
        d = jnp.maximum(d, 1e-6 * jnp.maximum(d[-1], 1e-30))
        return jnp.matmul(V, Q / jnp.sqrt(d)[None, :], precision=_HIGHEST)

    V = orthonormal(start)
    for _ in range(iterations):
        V = orthonormal(block_product(V))
    T = jnp.matmul(V.T, block_product(V), precision=_HIGHEST)
    lam, S = jnp.linalg.eigh(0.5 * (T + T.T))
    U = jnp.matmul(V, S[:, ::-1], precision=_HIGHEST)
    return jnp.where(rows, U, 0.0), jnp.maximum(lam[::-1], 0.0)


def imex_attempt(product: Callable, residual: Callable, probabilities: Callable, U: jax.Array,
                 lam: jax.Array, a: jax.Array, real: jax.Array, rtol: float, atol: float) -> Callable:
    """One KenCarp4 IMEX step of the split evolution, for `adaptive.integrate`.

    The states are class-major, `[C, N]` = F^T (`ntk.evolution` "Layout"); U and V stay `[N, k]`.

    Args:
      product: r `[C, N]` -> (H r^T)^T `[C, N]` (padding columns zero); one kernel product.
      residual: F -> softmax(F) - Y^ over the classes `[C, N]` (zero on padding).
      probabilities: F -> softmax(F) `[C, N]` (zero on padding).
      U, lam: `[N, k]`, `[k]` the implicit part U diag(lam) U^T (k may be 0: plain ERK); their dtype
        (the evolution's, float32 or float64) is that of every float computed here.
      a: scalar eta / N.
      real: bool `[N]`.
      rtol, atol: static error tolerances per entry of F.

    Returns:
      (attempt, carry_at): `attempt(F, aux, h)` for `adaptive.integrate`, its carry
      (aux) being (f_E(F), f_I(F)) `[C, N]` each, and `carry_at(F)` that carry at F (one
      kernel product). 6 kernel products per attempt (stages 2-6 and the new point, the
      next step's first stage).
    """
    k = U.shape[1]
    V = U * jnp.sqrt(lam)[None, :]  # the implicit part is V V^T  [N, k]
    count = jnp.maximum(jnp.sum(real.astype(U.dtype)), 1.0)
    columns = real[None, :]  # the real rows of the neighbourhood are the columns of a [C, N] state
    # The small products contract over the rows of U^T, V^T `[k, N]` (einsum): on XLA:CPU ~2x faster
    # than matmuls with transposed operands at these shapes.
    Ut, Vt = U.T, V.T
    small = lambda spec, x, y: jnp.einsum(spec, x, y, precision=_HIGHEST)

    def split(r, Hr):  # (f_E, f_I) from r and (H r^T)^T  [C, N]: f_I = -a (U diag(lam) U^T r^T)^T
        f_i = -a * small("ca,an->cn", small("cn,an->ca", r, Ut) * lam[None, :], Ut)
        return -a * Hr - f_i, f_i

    def carry_at(F):  # (f_E(F), f_I(F)): one kernel product
        r = residual(F)
        return split(r, product(r))

    def in_W(r):  # V^T r^T  [k, C]
        return small("cn,an->ac", r, Vt)

    def from_W(W):  # (V W)^T  [C, N]
        return small("ac,an->cn", W, Vt)

    def attempt(F, aux, h):
        f_e1, f_i1 = aux
        C = F.shape[0]
        c = h * GAMMA * a
        if k:
            # Newton in W = Lambda^(-1/2) Y: G(W) = W + c Lambda^(1/2) U^T r(A + U Lambda^(1/2) W) has the
            # symmetric positive definite Jacobian I + c V^T S V (V = U Lambda^(1/2)), S the softmax
            # curvature (per row diag(p) - p p^T), here at the step's start; Cholesky-factorised once per
            # attempt and shared by the 5 implicit stages (simplified Newton).
            P = probabilities(F)  # [C, N]
            G = (Vt[:, None, :] * P[None, :, :]).reshape(k * C, -1)  # rows (a, i): V[:, a] p_i  [k C, N]
            diag = small("xn,bn->xb", G, Vt).reshape(k, C, k)  # sum_n V_na p_ni V_nb
            curvature = (diag[:, :, :, None] * jnp.eye(C, dtype=F.dtype)[None, :, None, :]).reshape(k * C, k * C)
            curvature = curvature - small("xn,yn->xy", G, G)  # V^T S V  [k C, k C]
            factor = jax.scipy.linalg.cho_factor(jnp.eye(k * C, dtype=F.dtype) + c * curvature, lower=True)

            def newton_solve(g):  # (I + c V^T S V)^(-1) g  [k, C]
                return jax.scipy.linalg.cho_solve(factor, g.reshape(-1)).reshape(k, C)

        def solve_stage(A, W0):
            """Z = A + V W with G(W) = 0 (simplified Newton from W0). Returns (V W, converged, W).

            Stops when the estimated distance to the solution, rate / (1 - rate) * |update| (Hairer &
            Wanner IV.8), is below NEWTON_TOLERANCE of the error tolerance; fails on divergence. The
            update's size |V d| is measured in W-space (|V d|^2 = sum_a lambda_a |d_a|^2, U orthonormal)
            against the stage's RMS tolerance: one N-sized product pair per iteration."""
            scale = (atol + rtol * jnp.sqrt(jnp.sum(jnp.where(columns, A * A, 0.0)) / (count * C))) ** 2
            denominator = count * C * scale

            def body(carry):
                W, it, _, _, previous = carry
                r = residual(A + from_W(W))
                d = -newton_solve(W + c * in_W(r))
                size = jnp.sqrt(jnp.sum(lam[:, None] * d * d) / denominator)
                rate = size / jnp.where(previous > 0, previous, 1.0)
                estimate = jnp.where(it > 0, rate / jnp.maximum(1.0 - rate, 1e-6), 1.0) * size
                done = (estimate < NEWTON_TOLERANCE) | (size == 0.0)
                diverged = (it > 0) & (rate >= 1.0) & ~done
                return W + d, it + 1, done, diverged, size

            def more(carry):
                _, it, done, diverged, _ = carry
                return (~done) & (~diverged) & (it < NEWTON_ITERATIONS)

            init = (W0, jnp.int32(0), jnp.bool_(False), jnp.bool_(False), jnp.zeros((), W0.dtype))
            W, _, done, _, _ = jax.lax.while_loop(more, body, init)
            return from_W(W), done & jnp.all(jnp.isfinite(W)), W

        f_e, f_i = [f_e1], [f_i1]
        converged = jnp.bool_(True)
        # Newton starts from W linearly extrapolated in time over the last two stages (stage 1: the
        # value W = -c V^T r(F) the stage would have at Z = F).
        Ws = [-c * in_W(residual(F))] if k else []
        for stage, (row_e, row_i) in enumerate(zip(A_EXPLICIT, A_IMPLICIT), start=1):
            A = F + h * (adaptive.combine(row_e, f_e) + adaptive.combine(row_i[:len(f_i)], f_i))
            if k:
                if stage == 1:
                    W0 = Ws[0]
                else:
                    slope = (C_NODES[stage] - C_NODES[stage - 1]) / (C_NODES[stage - 1] - C_NODES[stage - 2])
                    W0 = Ws[-1] + slope * (Ws[-1] - Ws[-2])
                UY, ok, W = solve_stage(A, W0)
                Ws.append(W)
                converged = converged & ok
                Z = A + UY
                f_i_stage = UY / (h * GAMMA)  # = f_I(Z) once Newton has converged
            else:
                Z, f_i_stage = A, jnp.zeros_like(A)
            r = residual(Z)
            f_e.append(split(r, product(r))[0])
            f_i.append(f_i_stage)
        f = [e + i for e, i in zip(f_e, f_i)]
        F_new = F + h * adaptive.combine(B, f)
        aux_new = carry_at(F_new)
        # Max norm: the local error of every logit within tolerance (an RMS over N C entries lets a few
        # rows of a trained model's neighbourhood, where the error concentrates, exceed it ~sqrt(N C)-fold).
        scale = atol + rtol * jnp.maximum(jnp.abs(F), jnp.abs(F_new))
        error = jnp.max(jnp.where(columns, jnp.abs(h * adaptive.combine(ERROR, f)) / scale, 0.0))
        error = jnp.where(converged | ~jnp.isfinite(error), error, NEWTON_FAILED)

        # Dense output F + h (theta q2 + theta^2 q1 + theta^3 q0), q_j = sum_i d_ij f_i: 3 arrays per step.
        q0, q1, q2 = (adaptive.combine([d[j] for d in DENSE], f) for j in range(3))

        def dense(theta):  # F(t + theta h), 3rd order
            return F + h * (theta * (q2 + theta * (q1 + theta * q0)))

        return adaptive.Attempt(F_new, aux_new, error, dense, jnp.int32(6))

    return attempt, carry_at
