"""The column-block schedule that shares SPARK's first-layer sketch products among neighbourhoods
(SPEC step 3, `algorithm_kw.compute.share_first_layer`).

The first layer's data side [1; x] P_0 does not depend on the weights, so a round can compute it once
per sample instead of once in each of the (degree + 1) neighbourhoods holding the sample. Sketch
columns are independent (J P[:, cols] = (J P)[:, cols]) and the sketched kernel is a sum over columns,
so the round walks P's columns in blocks, holding one block of products for every sample at a time:
`plan_shared_first_layer` picks the block within a byte bound, `projection_block` slices it.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from spark_jax.dtypes import compute_dtype
from spark_jax.ntk.sketch import _check_k, _dense_layer_index, _layout  # the sketch layout, shared
from spark_jax.options import SHARE_MODES  # "auto" = when `plan_shared_first_layer` finds it fits the byte bound



class SharePlan(NamedTuple):
    """How a round shares the first layer's data side (`plan_shared_first_layer`).

    block: P columns per block (0 = not shared); num_blocks: blocks per round
    (block * num_blocks >= k; the last block's extra columns are zero);
    held_bytes: estimated bytes the shared schedule holds at once (one block
    of [1; x] P_0 for every sample plus `fixed_bytes`).
    """

    block: int
    num_blocks: int
    held_bytes: int


def check_share_mode(share) -> str:
    """algorithm_kw.compute.share_first_layer -> a member of `SHARE_MODES` (True / False = "on" / "off")."""
    if isinstance(share, bool):
        return "on" if share else "off"
    if share not in SHARE_MODES:
        raise ValueError(f"share_first_layer must be one of {SHARE_MODES} (or a bool), got {share!r}")
    return share


def plan_shared_first_layer(share, params, grouping: str, k: int, *, samples: int, fixed_bytes: int,
                            max_bytes: float, min_block: int = 32) -> SharePlan:
    """Column blocks for sharing [1; x] P_0 among neighbourhoods, within `max_bytes` (static).

    One block of `block` columns holds samples * fan_out * block floats (of the params' dtype:
    4 bytes for float32, 8 for float64) of first-layer products besides `fixed_bytes` (e.g. every node's kernel,
    accumulated over the blocks). The block is the widest that keeps the total
    <= max_bytes, then evened out over the blocks it takes to cover k.

    Args:
      share: "auto" (share if a block of >= `min_block` columns, or all of k,
        fits), "on" (always, in blocks as wide as the bound allows, at least
        one column), "off", or a bool (on / off).
      params: one model's pytree (`models.MLP`; shapes and dtypes only).
      grouping: the grouping P is drawn for; k: its columns per group.
      samples: rows the products are computed for (all nodes' padded rows).
      fixed_bytes: the rest of what the schedule holds at once.
      max_bytes: the bound.
      min_block: narrowest block "auto" accepts (narrower ones repeat the
        per-block work, the backprops, too often to pay off).
    """
    mode = check_share_mode(share)
    k = _check_k(k)
    if mode == "off":
        return SharePlan(0, 0, 0)
    layer_of = _dense_layer_index(params)
    fan_out = None
    for group in _layout(params, grouping):
        for leaf in group:
            if layer_of[leaf.path[0]] == 0 and leaf.path[1] == "kernel":
                fan_out = leaf.shape[1]
    per_column = compute_dtype(params).itemsize * samples * fan_out
    fits = int((max_bytes - fixed_bytes) // per_column)
    if mode == "auto" and fits < min(min_block, k):
        return SharePlan(0, 0, 0)
    fits = max(fits, 1)
    num_blocks = -(-k // min(fits, k))
    block = -(-k // num_blocks)
    return SharePlan(block, num_blocks, fixed_bytes + per_column * block)


def projection_block(P: Sequence[jax.Array], index, plan: SharePlan) -> tuple[jax.Array, ...]:
    """Columns [index * block, (index + 1) * block) of every P_g `[d_g, block]` (index may be traced);
    columns past k are zero, so they add nothing to sketches, kernels or updates."""
    out = []
    for p in P:
        pad = plan.block * plan.num_blocks - p.shape[1]
        padded = jnp.pad(p, ((0, 0), (0, pad))) if pad else p
        out.append(jax.lax.dynamic_slice_in_dim(padded, index * plan.block, plan.block, axis=1))
    return tuple(out)
