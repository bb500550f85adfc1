"""Per-sample Jacobians of the logits w.r.t. the weights (SPEC step 3, exact mode).

A node's neighbourhood set is `x [N, 28, 28, 1]` with a padding `mask [N]`
(STYLE "Ragged data as padding plus masks"). The Jacobian is a pytree shaped
like `params` whose leaves are `[N, C, *leaf_shape]`: J[n, c] = d f_c(x_n) / d w.
Every function here is a pure function of one node's neighbourhood; callers
vmap over nodes (small models) or `lax.map` over node chunks (the `[N, C, d]`
Jacobian of one node can be large: 3.8 GB for the 784-100-10 MLP at N = 1200).

Two modes:
  * "rev": `vmap(jacrev)` over samples, C vector-Jacobian products per sample.
    The right choice whenever C << d (always, here).
  * "fwd": d Jacobian-vector products per sample, tangents generated one-hot on
    the fly in chunks of `tangent_chunk` (jax.jacfwd would build the d x d
    identity basis: 25 GB for d = 79,510). Kept as an independent path.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

Apply = Callable[[dict, jax.Array], jax.Array]

MODES = ("rev", "fwd")


def zero_padding(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Replaces padding rows of `x [N, ...]` by zeros (`mask [N]` bool).

    Padding rows may hold anything (even NaN); zeroing them first keeps every
    downstream product (0 * NaN = NaN) inert.
    """
    if mask is None:
        return x
    m = mask.reshape(mask.shape + (1,) * (x.ndim - 1))
    return jnp.where(m, x, jnp.zeros((), x.dtype))


def mask_rows(tree, mask: jax.Array | None):
    """Zeros the leading-axis rows of every leaf `[N, ...]` where `mask [N]` is False."""
    if mask is None:
        return tree

    def leaf(a):
        m = mask.reshape(mask.shape + (1,) * (a.ndim - 1))
        return jnp.where(m, a, jnp.zeros((), a.dtype))

    return jax.tree.map(leaf, tree)


def num_true(mask: jax.Array, dtype=jnp.float32) -> jax.Array:
    """N_true = mask.sum() as `dtype` (the caller's compute dtype), at least 1 (an empty neighbourhood
    divides by 1)."""
    return jnp.maximum(jnp.sum(mask.astype(dtype)), 1.0)


def _single_logits(apply: Apply):
    """x_n [28, 28, 1] -> logits [C] for one sample."""
    return lambda params, xn: apply(params, xn[None])[0]


def _jacobian_rev_single(apply: Apply, params, xn):
    return jax.jacrev(_single_logits(apply))(params, xn)


def _jacobian_fwd_single(apply: Apply, params, xn, tangent_chunk: int):
    flat, unravel = ravel_pytree(params)
    d = flat.shape[0]
    f = _single_logits(apply)

    def column(k):  # d f / d w_k  [C]
        tangent = unravel(jax.nn.one_hot(k, d, dtype=flat.dtype))
        return jax.jvp(lambda p: f(p, xn), (params,), (tangent,))[1]

    cols = jax.lax.map(column, jnp.arange(d), batch_size=min(tangent_chunk, d))  # [d, C]
    return jax.vmap(unravel)(cols.T)  # leaves [C, *leaf_shape]


def per_sample_jacobian(apply: Apply, params, x: jax.Array, chunk_size: int | None = None, *,
                        mode: str = "rev", mask: jax.Array | None = None, tangent_chunk: int = 512):
    """SPEC step 3: J[n, c] = d f_c(x_n; params) / d params.

    Args:
      apply: `apply(params, x [B, 28, 28, 1]) -> logits [B, C]`.
      params: one model's pytree (node i's averaged weights w̄_i).
      x: `[N, 28, 28, 1]` neighbourhood samples.
      chunk_size: samples per vectorized chunk (`lax.map(..., batch_size=)`);
        None vectorizes over all N at once.
      mode: "rev" (vmap of jacrev) or "fwd" (chunked Jacobian-vector products).
      mask: optional bool `[N]`; padding rows are computed on zeroed inputs and
        their Jacobian rows set to zero.
      tangent_chunk: tangents per vectorized chunk in "fwd" mode.

    Returns:
      pytree like `params` with leaves `[N, C, *leaf_shape]`.
    """
    if mode not in MODES:
        raise ValueError(f"unknown Jacobian mode {mode!r}; choose one of {MODES}")
    x = zero_padding(x, mask)
    if mode == "rev":
        one = lambda xn: _jacobian_rev_single(apply, params, xn)
    else:
        one = lambda xn: _jacobian_fwd_single(apply, params, xn, tangent_chunk)
    if chunk_size is None or chunk_size >= x.shape[0]:
        jac = jax.vmap(one)(x)
    else:
        jac = jax.lax.map(one, x, batch_size=chunk_size)
    return mask_rows(jac, mask)


def flatten_jacobian(jac_tree) -> jax.Array:
    """Jacobian pytree (leaves `[N, C, ...]`) -> `[N, C, d]`, leaves in `ravel_pytree` order."""
    leaves = jax.tree.leaves(jac_tree)
    n, c = leaves[0].shape[:2]
    return jnp.concatenate([a.reshape(n, c, -1) for a in leaves], axis=-1)


def flat_jacobian(apply: Apply, params, x: jax.Array, chunk_size: int | None = None, *,
                  mode: str = "rev", mask: jax.Array | None = None) -> jax.Array:
    """SPEC step 3 as one array `[N, C, d]` (references and small models only)."""
    return flatten_jacobian(per_sample_jacobian(apply, params, x, chunk_size, mode=mode, mask=mask))
