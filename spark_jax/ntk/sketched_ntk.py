"""SPARK's NTK steps in sketch mode, from the sketches J~_g = J_g P_g: the kernel H~ (SPEC step 5) and
the back-projected weight updates -(eta/N) P_g J~_g^T R_tau (step 8), or P_g P_g^T of an exact update
(`back_project_update`, used when a round never holds the sketches whole: `spark_jax.ntk.sketch_share`).
The sketches themselves come from `spark_jax.ntk.sketch`. Dtypes follow the sketches, P and the updates
(`spark_jax.dtypes.compute_dtype`: float32, or float64).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from spark_jax.dtypes import compute_dtype
from spark_jax.ntk.jacobian import mask_rows
from spark_jax.ntk.update import weight_updates_from_jacobian
from spark_jax.ntk.sketch import _check_projections, _layout  # the sketch layout, shared

_HIGHEST = jax.lax.Precision.HIGHEST


def _symmetric_gram(a: jax.Array, row_blocks: int) -> jax.Array:
    """a a^T `[N, N]` from the blocks on and below the diagonal of a `row_blocks` x `row_blocks` split,
    the rest mirrored: (b + 1) / (2 b) of the FLOPs of the full product (2/3 for b = 3)."""
    n = a.shape[0]
    b = max(1, min(row_blocks, n))
    edges = [round(i * n / b) for i in range(b + 1)]
    parts = [a[lo:hi] for lo, hi in zip(edges, edges[1:])]
    lower = {(i, j): jnp.matmul(parts[i], parts[j].T, precision=_HIGHEST) for i in range(b) for j in range(i + 1)}
    return jnp.concatenate([jnp.concatenate([lower[i, j] if j <= i else lower[j, i].T for j in range(b)], axis=1)
                            for i in range(b)], axis=0)


def sketched_kernel(sketches: Sequence[jax.Array], mask: jax.Array | None, row_blocks: int = 3) -> jax.Array:
    """SPEC step 5 (sketch mode): H~ = (1/C) sum_g sum_c J~_g[:, c] J~_g[:, c]^T, `[N, N]`.

    One Gram of all groups' sketches side by side `[N, G C k]`, computed on the
    `row_blocks` x `row_blocks` blocks on and below the diagonal only and
    mirrored (H~ is symmetric): 2/3 of the FLOPs for 3 blocks. Padding rows and
    columns are zero.
    """
    leaves = mask_rows(tuple(sketches), mask)
    n, c = leaves[0].shape[:2]
    dtype = compute_dtype(leaves)
    a = jnp.concatenate([s.reshape(n, -1).astype(dtype) for s in leaves], axis=1)
    h = _symmetric_gram(a, row_blocks) / c
    if mask is None:
        return h
    return jnp.where(mask[:, None] & mask[None, :], h, jnp.zeros((), h.dtype))


def back_project(P: Sequence[jax.Array], sketched_grads: Sequence[jax.Array], params, grouping: str):
    """P_g g_g for every group, reshaped into the group's leaves (SPEC step 8).

    Args:
      P: P_g `[d_g, k]`.
      sketched_grads: per group g_g `[..., k]` (e.g. `[T, k]`), in the sketch
        space (sum_c J~_g[:, c]^T R[:, c], scaled as the caller wants).
      params: the pytree whose structure and leaf shapes the output takes.
      grouping: the grouping P was drawn for.

    Returns:
      pytree like `params` with leaves `[..., *leaf_shape]`; unbiased:
      E[P_g P_g^T v] = v when g_g = P_g^T v.
    """
    layout = _layout(params, grouping)
    _check_projections(P, layout)
    if len(sketched_grads) != len(layout):
        raise ValueError(f"need one sketched gradient per group ({len(layout)}), got {len(sketched_grads)}")
    leaves, treedef = jax.tree.flatten(params)
    out = [None] * len(leaves)
    for p, g, group in zip(P, sketched_grads, layout):
        if g.shape[-1] != p.shape[1]:
            raise ValueError(f"sketched gradient has {g.shape[-1]} columns, P_g has k = {p.shape[1]}")
        full = jnp.einsum("...k,dk->...d", g.astype(compute_dtype(g, p)), p, precision=_HIGHEST)  # [..., d_g]
        for leaf in group:
            block = full[..., leaf.offset:leaf.offset + leaf.size]
            out[leaf.index] = block.reshape(g.shape[:-1] + leaf.shape).astype(leaves[leaf.index].dtype)
    return treedef.unflatten(out)


def sketched_weight_updates(sketches: Sequence[jax.Array], P: Sequence[jax.Array], params, grouping: str,
                            R: jax.Array, eta: jax.Array, mask: jax.Array):
    """SPEC step 8 (sketch mode): Delta_tau,g = -(eta/N) P_g sum_c J~_g[:, c]^T R_tau[:, c].

    Args:
      sketches: J~_g `[N, C, k]` (`sketch_jacobian`); P: P_g `[d_g, k]`.
      params: w̄_i (structure and shapes of the output); grouping: as for P.
      R: `[T, N, C]` residual sums; eta: scalar (may be traced); mask: bool
        `[N]`, N = mask.sum() (at least 1).

    Returns:
      pytree like `params` with leaves `[T, *leaf_shape]`.
    """
    grads = weight_updates_from_jacobian(tuple(sketches), R, eta, mask)  # per group [T, k], scaled
    return back_project(P, grads, params, grouping)


def back_project_update(P: Sequence[jax.Array], deltas, params, grouping: str):
    """P_g P_g^T Delta_g per group: the sketched update from an exact one (SPEC step 8).

    With Delta = -(eta/N) J^T R_tau (`ntk.weight_updates`) this equals
    `sketched_weight_updates(J P, ...)`, -(eta/N) P P^T J^T R_tau, without the
    sketches J P (which the shared-first-layer schedule never holds whole).

    Args:
      P: P_g `[d_g, k]`; deltas: pytree like `params` with leaves `[T, *leaf_shape]`.
      params: the pytree structure; grouping: the one P was drawn for.

    Returns:
      pytree like `deltas`.
    """
    layout = _layout(params, grouping)
    _check_projections(P, layout)
    leaves = jax.tree.leaves(deltas)
    t = leaves[0].shape[0]
    dtype = compute_dtype(leaves, P)
    grads = []
    for p, group in zip(P, layout):
        rows = jnp.concatenate([leaves[leaf.index].reshape(t, -1).astype(dtype) for leaf in group], axis=1)
        grads.append(jnp.matmul(rows, p, precision=_HIGHEST))  # [T, k]
    return back_project(P, grads, params, grouping)
