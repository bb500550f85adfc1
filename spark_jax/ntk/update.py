"""Weight updates per candidate tau and the choice of tau (SPEC steps 8 and 9).

Exact mode (step 8):
    Delta_tau = -(eta / N) sum_c J[:, c, :]^T R_tau[:, c]
is one VJP of f(X; ·) at w̄_i, batched over the T cotangents R_tau: no
Jacobian is stored. `weight_updates_from_jacobian` does the same contraction
on a given (e.g. projected, `[N, C, k]`) Jacobian, for the sketch path.

Step 9 picks tau* = argmin_tau of the masked mean cross-entropy of the real
network f(X; w̄_i + Delta_tau) (criterion "network", SPEC default) or of the
evolved logits F(s_tau) (criterion "linearized") against the soft targets Y^.

Two implementations of steps 8-9 behind `method=` (`UPDATE_METHODS`):
  * "vjp": any model: `jax.vjp` batched over the T cotangents, then one
    forward pass per candidate (`lax.map`). The reference.
  * "structured": dense ReLU MLPs (`models.MLP`) only. One `mlp_forward`;
    the backprops delta_l[t] = G_l ⊙ (delta_{l+1}[t] W_{l+1}^T) of all T
    cotangents at once; each layer's T updates as one GEMM
    A_l^T [fan_in, N] x [N, T * fan_out]; the T candidate networks' first layer as one
    GEMM X [N, fan_in] x [fan_in, T * fan_out] (no batched small matmuls,
    which XLA:CPU runs slowly). Same operations as the reference, reordered.

Dtypes follow the parameters and inputs (`spark_jax.dtypes.compute_dtype`): the updates, eta's scale
-eta/N and the losses are float32, or float64 for float64 parameters (the residuals R are cast to the
logits' dtype).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from spark_jax.dtypes import compute_dtype
from spark_jax.ntk.jacobian import Apply, num_true, zero_padding
from spark_jax.ntk.kernel import MLPForward, _mlp_layers, mlp_forward, mlp_layer_names
from spark_jax.options import TAU_CRITERIA as CRITERIA  # the option list, defined once

UPDATE_METHODS = ("vjp", "structured")

_HIGHEST = jax.lax.Precision.HIGHEST


def _mask_residuals(R: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.where(mask[None, :, None], R, jnp.zeros((), R.dtype))


def weight_updates(apply: Apply, params, x: jax.Array, mask: jax.Array, R: jax.Array, eta: jax.Array, *,
                   method: str = "vjp"):
    """SPEC step 8 (exact mode): Delta_tau = -(eta/N) J^T R_tau, for all T taus at once.

    Args:
      apply: `apply(params, x [B, 28, 28, 1]) -> logits [B, C]`.
      params: w̄_i, one model's pytree.
      x: `[N, 28, 28, 1]` neighbourhood samples; mask: bool `[N]`.
      R: `[T, N, C]` residual sums R_tau (`Evolution.residual_sums`).
      eta: scalar eta_r (may be traced).
      method: "vjp" (one VJP, any model) or "structured" (`models.MLP` params;
        `structured_weight_updates`).

    Returns:
      pytree like `params` with leaves `[T, *leaf_shape]`.
    """
    if method == "structured":
        return structured_weight_updates(params, x, mask, R, eta)
    if method != "vjp":
        raise ValueError(f"unknown update method {method!r}; choose one of {UPDATE_METHODS}")
    x = zero_padding(x, mask)
    logits, vjp_fn = jax.vjp(lambda p: apply(p, x), params)
    R = _mask_residuals(R, mask).astype(logits.dtype)
    (grads,) = jax.vmap(vjp_fn)(R)
    dtype = compute_dtype(logits)
    scale = -jnp.asarray(eta, dtype) / num_true(mask, dtype)
    return jax.tree.map(lambda g: (scale * g).astype(g.dtype), grads)


def structured_weight_updates(params, x: jax.Array, mask: jax.Array, R: jax.Array, eta: jax.Array,
                              forward: MLPForward | None = None):
    """SPEC step 8 for a dense ReLU MLP: the T VJPs of `weight_updates` as GEMMs.

    With scale = -eta/N and delta_{L-1}[t] = R_tau (masked), for l = L-1 .. 0:
        Delta kernel_l[t] = scale A_l^T delta_l[t]     Delta bias_l[t] = scale sum_n delta_l[t]
        delta_{l-1}[t] = G_{l-1} ⊙ (delta_l[t] W_l^T)
    where A_l, G_l are the forward pass's layer inputs and ReLU gates
    (`mlp_forward`; pass `forward` to reuse one computed on the zero-padded x).

    Args: as `weight_updates` (x `[N, ...]`, mask `[N]`, R `[T, N, C]`).
    Returns: `{'Dense_l': {'kernel': [T, fan_in, fan_out], 'bias': [T, fan_out]}}`.
    """
    layers = _mlp_layers(params)
    if forward is None:
        forward = mlp_forward(params, zero_padding(x, mask))
    t, n = R.shape[:2]
    dtype = compute_dtype(params, forward.logits)
    scale = -jnp.asarray(eta, dtype) / num_true(mask, dtype)
    delta = _mask_residuals(R, mask).astype(dtype) * scale  # [T, N, fan_out]
    out = {}
    for l in range(len(layers) - 1, -1, -1):
        w = layers[l][0]
        a = forward.inputs[l]  # [N, fan_in]
        fan_in, fan_out = w.shape
        cols = jnp.transpose(delta, (1, 0, 2)).reshape(n, t * fan_out)  # [N, T * fan_out]
        dk = jnp.matmul(a.T, cols, precision=_HIGHEST).reshape(fan_in, t, fan_out)
        out[mlp_layer_names(params)[l]] = {"kernel": jnp.transpose(dk, (1, 0, 2)).astype(w.dtype),
                                        "bias": jnp.sum(delta, axis=1).astype(w.dtype)}
        if l > 0:
            back = jnp.matmul(delta.reshape(t * n, fan_out), w.T, precision=_HIGHEST)
            delta = back.reshape(t, n, fan_in) * forward.gates[l - 1][None]
    return out


def weight_updates_from_jacobian(jac_tree, R: jax.Array, eta: jax.Array, mask: jax.Array):
    """SPEC step 8 from a given Jacobian: Delta_tau = -(eta/N) sum_c J[:, c]^T R_tau[:, c].

    Args:
      jac_tree: pytree (or array) with leaves `[N, C, *s]`: the exact Jacobian,
        or a sketch J~_l with leaves `[N, C, k]` (the caller back-projects by P_l).
      R: `[T, N, C]`; eta: scalar; mask: bool `[N]`.

    Returns:
      pytree like `jac_tree` with leaves `[T, *s]`, each in its leaf's dtype (the contraction in
      `compute_dtype(jac_tree, R)`).
    """
    dtype = compute_dtype(jac_tree, R)
    R = _mask_residuals(R, mask).astype(dtype)
    scale = -jnp.asarray(eta, dtype) / num_true(mask, dtype)

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
    return jnp.sum(per_row) / num_true(mask, compute_dtype(per_row))


def network_losses(apply: Apply, params, x: jax.Array, mask: jax.Array, targets: jax.Array,
                   deltas, *, method: str = "vjp") -> jax.Array:
    """Losses `[T]`: masked mean CE of f(X; params + Delta_tau) (deltas leaves `[T, ...]`).

    method "vjp": one forward pass per candidate (`lax.map`), any model;
    "structured": `structured_network_losses` (`models.MLP` params).
    """
    if method == "structured":
        return structured_network_losses(params, x, mask, targets, deltas)
    if method != "vjp":
        raise ValueError(f"unknown update method {method!r}; choose one of {UPDATE_METHODS}")
    x = zero_padding(x, mask)

    def loss(delta):
        moved = jax.tree.map(lambda p, d: p + d, params, delta)
        return masked_cross_entropy(apply(moved, x), targets, mask)

    return jax.lax.map(loss, deltas)


def structured_network_losses(params, x: jax.Array, mask: jax.Array, targets: jax.Array, deltas) -> jax.Array:
    """`network_losses` of the T candidates w + Delta_tau of a dense ReLU MLP, batched over T.

    The first layer of all T candidate networks is one GEMM
    X `[N, fan_in]` x (W_0 + Delta_0) `[fan_in, T * fan_out]`; later layers are
    `[T, N, fan_in] x [T, fan_in, fan_out]` products. Returns losses `[T]`.
    """
    layers = _mlp_layers(params)
    names = mlp_layer_names(params)
    a = zero_padding(x, mask)
    a = a.reshape(a.shape[0], -1)
    n = a.shape[0]
    t = jax.tree.leaves(deltas)[0].shape[0]
    for l, (w, b) in enumerate(layers):
        dl = deltas[names[l]]
        w_t = w[None] + dl["kernel"]  # [T, fan_in, fan_out]
        b_t = b[None] + dl["bias"]  # [T, fan_out]
        fan_in, fan_out = w.shape
        if l == 0:
            cols = jnp.transpose(w_t, (1, 0, 2)).reshape(fan_in, t * fan_out)
            z = jnp.matmul(a, cols, precision=_HIGHEST).reshape(n, t, fan_out)
            z = jnp.transpose(z, (1, 0, 2))  # [T, N, fan_out]
        else:
            z = jnp.einsum("tnf,tfo->tno", a, w_t, precision=_HIGHEST)
        z = z + b_t[:, None, :]
        a = jax.nn.relu(z) if l < len(layers) - 1 else z
    return jax.vmap(masked_cross_entropy, in_axes=(0, None, None))(a, targets, mask)


def linearized_losses(evolved_logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Losses `[T]`: masked mean CE of the evolved logits F(s_tau) `[T, N, C]`."""
    return jax.vmap(masked_cross_entropy, in_axes=(0, None, None))(evolved_logits, targets, mask)


def select_tau(apply: Apply, params, x: jax.Array, mask: jax.Array, targets: jax.Array, deltas, *,
               criterion: str = "network", evolved_logits: jax.Array | None = None, method: str = "vjp"):
    """SPEC step 9: index of tau* = argmin of the candidates' losses.

    Args:
      apply, params, x, mask: as in `weight_updates`.
      targets: `[N, C]` soft targets Y^.
      deltas: pytree with leaves `[T, *leaf_shape]` (`weight_updates`); unused
        by criterion "linearized".
      criterion: "network" (real network at params + Delta_tau, SPEC default)
        or "linearized" (needs `evolved_logits`).
      evolved_logits: `[T, N, C]` F(s_tau) (`Evolution.logits`).
      method: how criterion "network" evaluates the candidates (`network_losses`).

    Returns:
      (index int32 scalar, losses `[T]`). A non-finite loss (a diverged
      candidate) is never chosen unless all are.
    """
    if criterion == "network":
        losses = network_losses(apply, params, x, mask, targets, deltas, method=method)
    elif criterion == "linearized":
        if evolved_logits is None:
            raise ValueError("criterion 'linearized' needs evolved_logits (Evolution.logits)")
        losses = linearized_losses(evolved_logits, targets, mask)
    else:
        raise ValueError(f"unknown tau criterion {criterion!r}; choose one of {CRITERIA}")
    safe = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
    return jnp.argmin(safe).astype(jnp.int32), losses
