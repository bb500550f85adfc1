"""Weight updates per candidate tau and the choice of tau (SPEC steps 8 and 9).

Exact mode (step 8):
    Delta_tau = -(eta / N) sum_c J[:, c, :]^T R_tau[:, c]
is one VJP of f(X; ·) at w̄_i, batched over the T cotangents R_tau: no
Jacobian is stored. `weight_updates_from_jacobian` does the same contraction
on a given (e.g. projected, `[N, C, k]`) Jacobian, for the sketch path.

Step 9 picks tau* = argmin_tau of the masked mean cross-entropy of the real
network f(X; w̄_i + Delta_tau) (criterion "network", SPEC default) or of the
evolved logits F(s_tau) (criterion "linearized") against the soft targets Y^.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from spark_jax.ntk.jacobian import Apply, num_true, zero_padding

CRITERIA = ("network", "linearized")

_HIGHEST = jax.lax.Precision.HIGHEST


def _mask_residuals(R: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.where(mask[None, :, None], R, jnp.zeros((), R.dtype))


def weight_updates(apply: Apply, params, x: jax.Array, mask: jax.Array, R: jax.Array, eta: jax.Array):
    """SPEC step 8 (exact mode): Delta_tau = -(eta/N) J^T R_tau by one VJP.

    Args:
      apply: `apply(params, x [B, 28, 28, 1]) -> logits [B, C]`.
      params: w̄_i, one model's pytree.
      x: `[N, 28, 28, 1]` neighbourhood samples; mask: bool `[N]`.
      R: `[T, N, C]` residual sums R_tau (`Evolution.residual_sums`).
      eta: scalar eta_r (may be traced).

    Returns:
      pytree like `params` with leaves `[T, *leaf_shape]`.
    """
    x = zero_padding(x, mask)
    logits, vjp_fn = jax.vjp(lambda p: apply(p, x), params)
    R = _mask_residuals(R, mask).astype(logits.dtype)
    (grads,) = jax.vmap(vjp_fn)(R)
    scale = -jnp.asarray(eta, jnp.float32) / num_true(mask)
    return jax.tree.map(lambda g: (scale * g).astype(g.dtype), grads)


def weight_updates_from_jacobian(jac_tree, R: jax.Array, eta: jax.Array, mask: jax.Array):
    """SPEC step 8 from a given Jacobian: Delta_tau = -(eta/N) sum_c J[:, c]^T R_tau[:, c].

    Args:
      jac_tree: pytree (or array) with leaves `[N, C, *s]`: the exact Jacobian,
        or a sketch J~_l with leaves `[N, C, k]` (the caller back-projects by P_l).
      R: `[T, N, C]`; eta: scalar; mask: bool `[N]`.

    Returns:
      pytree like `jac_tree` with leaves `[T, *s]`.
    """
    R = _mask_residuals(R, mask).astype(jnp.float32)
    scale = -jnp.asarray(eta, jnp.float32) / num_true(mask)

    def leaf(a):
        n, c = a.shape[:2]
        a2 = jnp.where(mask[:, None, None], a.reshape(n, c, -1), jnp.zeros((), a.dtype))
        g = jnp.einsum("ncp,tnc->tp", a2, R, precision=_HIGHEST)
        return (scale * g).reshape((R.shape[0],) + a.shape[2:]).astype(a.dtype)

    return jax.tree.map(leaf, jac_tree)


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over real rows of -sum_c targets log softmax(logits).

    logits, targets `[N, C]` (targets one-hot or soft); mask bool `[N]`. Returns a scalar.
    """
    per_row = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    per_row = jnp.where(mask, per_row, jnp.zeros((), per_row.dtype))
    return jnp.sum(per_row) / num_true(mask)


def network_losses(apply: Apply, params, x: jax.Array, mask: jax.Array, targets: jax.Array,
                   deltas) -> jax.Array:
    """Losses `[T]`: masked mean CE of f(X; params + Delta_tau) (deltas leaves `[T, ...]`)."""
    x = zero_padding(x, mask)

    def loss(delta):
        moved = jax.tree.map(lambda p, d: p + d, params, delta)
        return masked_cross_entropy(apply(moved, x), targets, mask)

    return jax.lax.map(loss, deltas)


def linearized_losses(evolved_logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Losses `[T]`: masked mean CE of the evolved logits F(s_tau) `[T, N, C]`."""
    return jax.vmap(masked_cross_entropy, in_axes=(0, None, None))(evolved_logits, targets, mask)


def select_tau(apply: Apply, params, x: jax.Array, mask: jax.Array, targets: jax.Array, deltas, *,
               criterion: str = "network", evolved_logits: jax.Array | None = None):
    """SPEC step 9: index of tau* = argmin of the candidates' losses.

    Args:
      apply, params, x, mask: as in `weight_updates`.
      targets: `[N, C]` soft targets Y^.
      deltas: pytree with leaves `[T, *leaf_shape]` (`weight_updates`); unused
        by criterion "linearized".
      criterion: "network" (real network at params + Delta_tau, SPEC default)
        or "linearized" (needs `evolved_logits`).
      evolved_logits: `[T, N, C]` F(s_tau) (`Evolution.logits`).

    Returns:
      (index int32 scalar, losses `[T]`). A non-finite loss (a diverged
      candidate) is never chosen unless all are.
    """
    if criterion == "network":
        losses = network_losses(apply, params, x, mask, targets, deltas)
    elif criterion == "linearized":
        if evolved_logits is None:
            raise ValueError("criterion 'linearized' needs evolved_logits (Evolution.logits)")
        losses = linearized_losses(evolved_logits, targets, mask)
    else:
        raise ValueError(f"unknown tau criterion {criterion!r}; choose one of {CRITERIA}")
    safe = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
    return jnp.argmin(safe).astype(jnp.int32), losses
