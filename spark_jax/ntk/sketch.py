"""Random-projection sketches of the Jacobian (SPEC step 3 sketch mode, steps 5 and 8).

Node j sends, per group g of parameters (d_g scalars), J~_g = J_g P_g with
P_g `[d_g, k]` of i.i.d. N(0, 1/k) entries, so E[P_g P_g^T] = I. Every node
draws the same P_g from the run's sketch stream (`projection_key`); the caller
generates `projections(...)` once per round outside its map over nodes and
closes over them.

Conventions (static, from the parameter pytree's structure only):
  * A leaf's path is the tuple of its keys in `jax.tree_util.tree_flatten_with_path`
    (dict key -> the key, sequence -> the int index, attribute -> its name),
    e.g. ('Dense_0', 'bias'). Leaves are in flatten order: dict keys sorted,
    so a flax Dense layer is ('bias', 'kernel').
  * Groups (`GROUPINGS`): "layer" = the leaves sharing a top-level key (one
    module's weight and bias), "tensor" = each leaf alone, "global" = all
    leaves. Groups are numbered in flatten order (sorted top-level keys:
    'Dense_0', 'Dense_1', ..., 'Dense_10' before 'Dense_2'); concatenating the
    groups gives the flatten order of all leaves.
  * Rows of P_g follow `jax.flatten_util.ravel_pytree` of the group's leaves
    (a list, in flatten order): each leaf C-order raveled, concatenated. For a
    dense layer, rows [0, fan_out) are the bias and row fan_out + i*fan_out + o
    is kernel[i, o]; i.e. P_g.reshape(fan_in + 1, fan_out, k) indexes the
    augmented input [1; a] (bias first). The "global" group's rows are
    `ravel_pytree(params)` order, as in `ntk.flatten_jacobian`.

Sketch implementations (`METHODS`, all tested against "materialize"):
  * "materialize": the exact per-sample Jacobian (sample chunks), then J_g P_g.
    The reference; holds a `[chunk, C, d]` Jacobian.
  * "forward": k Jacobian-vector products per group, the tangents being the
    columns of P_g (the JVP of z -> f(x; w + unravel_g(P_g z)) along e_j),
    `direction_chunk` columns vectorized at once; never forms J.
  * "structured": dense ReLU MLPs (`models.MLP`) only. Layer l's Jacobian rows
    are J_{l,c}(x) = [1; a_l(x)] ⊗ D_{l,c}(x) (input activations a_l, backprops
    D_l = d f / d z_l), so J~ = sum_o D[n, c, o] Q[n, o, :] with
    Q = [1; a_l] P_g reshaped `[fan_in + 1, fan_out, k]`: cost N (fan_in + 1)
    fan_out k for Q, then N C fan_out k. Works for every grouping (a group's
    rows are blocks of whole bias/kernel leaves).

Sharing the first layer across neighbourhoods ("structured"): Q0 = [1; x] P_0
depends on the samples and P only, so a round can compute it once per sample
(`first_layer_products`) instead of once in each of the (degree + 1)
neighbourhoods holding the sample. All samples' Q0 at once is too large
(M n_max fan_out k floats: 12 GB at 300 nodes, k = 512), but the sketch's
columns are independent: J P[:, cols] = (J P)[:, cols], and the sketched
kernel is a sum over columns. So a round walks P's columns in blocks
(`spark_jax.ntk.sketch_share`): per block, Q0 of every
sample, then every node's partial kernel; only one block's Q0 and the nodes'
kernels are held. The back-projected update P P^T J^T R needs no sketch:
`sketched_ntk.back_project_update` projects the exact update instead.
The kernel and updates from sketches (SPEC steps 5, 8) are in `spark_jax.ntk.sketched_ntk`; the output
layer's part of the kernel in closed form (no sketch needed) in `spark_jax.ntk.sketch_output_layer`.

Dtypes follow the parameters (`spark_jax.dtypes.compute_dtype`): P_g and the sketches are float32, or
float64 for float64 parameters (P_g's float64 entries are the float32 draw cast, then scaled in float64:
a float64 run sketches with the same projection as its float32 twin).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from spark_jax.dtypes import compute_dtype
from spark_jax.ntk.jacobian import Apply, mask_rows, per_sample_jacobian, zero_padding
from spark_jax.ntk.kernel import mlp_activations_and_backprops
from spark_jax.options import SKETCH_GROUPINGS as GROUPINGS  # the option list, defined once

METHODS = ("structured", "forward", "materialize")

_HIGHEST = jax.lax.Precision.HIGHEST


class _Leaf(NamedTuple):
    index: int  # position in tree_flatten(params)
    path: tuple
    shape: tuple
    offset: int  # first row of this leaf in P_g

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _key_entry(k):
    for attr in ("key", "idx", "name"):  # DictKey / FlattenedIndexKey, SequenceKey, GetAttrKey
        if hasattr(k, attr):
            return getattr(k, attr)
    return str(k)


def _check_grouping(grouping: str):
    if grouping not in GROUPINGS:
        raise ValueError(f"unknown sketch grouping {grouping!r}; choose one of {GROUPINGS}")


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"sketch size k must be an int >= 1 (columns per group), got {k!r}")
    return int(k)


def _layout(params, grouping: str) -> tuple[tuple[_Leaf, ...], ...]:
    """Per group, its leaves with their row offsets in P_g (static)."""
    _check_grouping(grouping)
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    if not flat:
        raise ValueError("params has no leaves to sketch")
    paths = [tuple(_key_entry(k) for k in kp) for kp, _ in flat]
    shapes = [tuple(leaf.shape) for _, leaf in flat]
    if grouping == "tensor":
        members = [[i] for i in range(len(flat))]
    elif grouping == "global":
        members = [list(range(len(flat)))]
    else:  # flatten is depth-first, so one module's leaves are contiguous
        by_module: dict = {}
        for i, p in enumerate(paths):
            by_module.setdefault(p[:1], []).append(i)
        members = list(by_module.values())
    layout = []
    for idx in members:
        offsets = [0]
        for i in idx:
            offsets.append(offsets[-1] + math.prod(shapes[i]))
        layout.append(tuple(_Leaf(i, paths[i], shapes[i], o) for i, o in zip(idx, offsets)))
    return tuple(layout)


def sketch_groups(params, grouping: str) -> tuple[tuple[tuple, ...], ...]:
    """Static groups: per group, its leaves' path tuples (e.g. ('Dense_0', 'bias')) in row order."""
    return tuple(tuple(leaf.path for leaf in group) for group in _layout(params, grouping))


def group_sizes(params, grouping: str) -> tuple[int, ...]:
    """d_g, the number of parameters (rows of P_g) in each group."""
    return tuple(sum(leaf.size for leaf in group) for group in _layout(params, grouping))


def resolve_method(method: str, structured: bool) -> str:
    """`ComputeOptions.sketch_method` -> a member of `METHODS`; "auto" = "structured" for a model with the
    structured fast path (`Model.structured`, `models.supports_structured`), else "forward"."""
    if not isinstance(structured, bool):
        raise TypeError(f"resolve_method takes the model's structured capability (a bool), not {structured!r}")
    if method == "auto":
        return "structured" if structured else "forward"
    if method not in METHODS:
        raise ValueError(f"unknown sketch method {method!r}; choose 'auto' or one of {METHODS}")
    return method


def projection_key(sketch_key: jax.Array, group_index: int, round_index, redraw: bool) -> jax.Array:
    """Key of P_g: fold_in(sketch_key, g), then fold_in(., r) if `redraw` (r may be traced).

    Depends on nothing node-specific, so every node derives the same P_g.
    """
    key = jax.random.fold_in(sketch_key, group_index)
    return jax.random.fold_in(key, round_index) if bool(redraw) else key


def projections(sketch_key: jax.Array, params, grouping: str, k: int, round_index,
                redraw: bool) -> tuple[jax.Array, ...]:
    """SPEC step 3: P_g `[d_g, k]`, i.i.d. N(0, 1/k), one per group (rows: module docstring), in the
    params' compute dtype (float32, or float64: the same float32 draw, cast, then scaled).

    Args:
      sketch_key: the run's "sketch" stream key (`rng.stream_key(seed, 'sketch')`).
      params: one model's pytree (only shapes and dtypes are read; abstract values work).
      grouping: one of `GROUPINGS`.
      k: static columns per group.
      round_index: round r (int or traced int32 scalar); used only if `redraw`.
      redraw: static; True = a new P every round, False = one P for the run.
    """
    k = _check_k(k)
    scale = 1.0 / math.sqrt(k)
    dtype = compute_dtype(params)

    def draw(g, d):
        z = jax.random.normal(projection_key(sketch_key, g, round_index, redraw), (d, k), jnp.float32)
        # The barrier stops XLA folding `scale` into the sampler's own constant
        # multiply, so P is bitwise the same in every program (jit, vmap, eager).
        return jax.lax.optimization_barrier(z).astype(dtype) * scale

    return tuple(draw(g, d) for g, d in enumerate(group_sizes(params, grouping)))


def _check_projections(P, layout) -> int:
    if not isinstance(P, (tuple, list)) or len(P) != len(layout):
        raise ValueError(f"P must be a tuple of {len(layout)} projection matrices (one per group)")
    ks = set()
    for g, (p, group) in enumerate(zip(P, layout)):
        d = sum(leaf.size for leaf in group)
        if p.ndim != 2 or p.shape[0] != d:
            raise ValueError(f"P[{g}] must be [d_g={d}, k], got shape {p.shape}")
        ks.add(p.shape[1])
    if len(ks) != 1:
        raise ValueError(f"all P_g must have the same k, got {sorted(ks)}")
    return ks.pop()


def _map_sample_chunks(fn, xs, chunk: int | None):
    """fn(xs) -> pytree of [B, ...] on chunks of `chunk` samples of every leaf of `xs` (leading axis N;
    None or 0: all at once)."""
    n = jax.tree.leaves(xs)[0].shape[0]
    if not chunk or chunk >= n:
        return fn(xs)
    if chunk < 0:
        raise ValueError(f"sample_chunk must be >= 0, got {chunk}")
    full = n // chunk * chunk
    head = jax.lax.map(fn, jax.tree.map(lambda a: a[:full].reshape((n // chunk, chunk) + a.shape[1:]), xs))
    head = jax.tree.map(lambda a: a.reshape((full,) + a.shape[2:]), head)
    if full == n:
        return head
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), head, fn(jax.tree.map(lambda a: a[full:], xs)))


def _materialized(apply: Apply, params, x, P, layout):
    jac = jax.tree.leaves(per_sample_jacobian(apply, params, x))  # leaves [B, C, *shape]
    n, c = jac[0].shape[:2]
    dtype = compute_dtype(jac, P)
    out = []
    for p, group in zip(P, layout):
        s = jnp.zeros((n, c, p.shape[1]), dtype)
        for leaf in group:
            block = p[leaf.offset:leaf.offset + leaf.size]  # rows of this leaf
            s = s + jnp.matmul(jac[leaf.index].reshape(n, c, -1), block, precision=_HIGHEST)
        out.append(s)
    return tuple(out)


def _forward(apply: Apply, params, x, P, layout, direction_chunk: int):
    leaves, treedef = jax.tree.flatten(params)
    out = []
    for p, group in zip(P, layout):
        idx = [leaf.index for leaf in group]

        def logits(group_leaves, idx=idx):  # only this group's leaves carry tangents
            new = list(leaves)
            for i, a in zip(idx, group_leaves):
                new[i] = a
            return apply(treedef.unflatten(new), x)  # [B, C]

        def column(col, group=group, logits=logits, idx=idx):  # col [d_g]: one column of P_g
            tangent = [col[l.offset:l.offset + l.size].reshape(l.shape).astype(leaves[l.index].dtype)
                       for l in group]
            return jax.jvp(logits, ([leaves[i] for i in idx],), (tangent,))[1]

        k = p.shape[1]
        cols = jax.lax.map(column, p.T, batch_size=min(direction_chunk, k))  # [k, B, C]
        out.append(jnp.transpose(cols, (1, 2, 0)).astype(compute_dtype(cols, p)))
    return tuple(out)


def _dense_layer_index(params) -> dict:
    """{'Dense_l': l} for `models.MLP` params; ValueError for anything else."""
    names = sorted(params, key=lambda s: (len(s), s)) if isinstance(params, Mapping) else []
    if not names or names != [f"Dense_{l}" for l in range(len(names))] or any(
            set(params[n]) != {"kernel", "bias"} or params[n]["kernel"].ndim != 2 for n in names):
        got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(f"sketch method 'structured' supports dense ReLU MLPs (`models.MLP` params "
                         f"Dense_0..Dense_L, each with 2-D kernel and bias) only; got {got} — "
                         f"use method='forward'")
    return {n: l for l, n in enumerate(names)}


def _layer_blocks(P, group, layer_of) -> dict:
    """{layer: {'kernel': rows of P_g, 'bias': rows, 'augmented': bias and kernel rows}} for one group
    ('augmented' when the bias rows directly precede the kernel's, as in a layer's flatten order)."""
    blocks: dict = {}
    leaves: dict = {}
    for leaf in group:
        blocks.setdefault(layer_of[leaf.path[0]], {})[leaf.path[1]] = P[leaf.offset:leaf.offset + leaf.size]
        leaves.setdefault(layer_of[leaf.path[0]], {})[leaf.path[1]] = leaf
    for l, named in leaves.items():
        if {"bias", "kernel"} <= set(named) and named["bias"].offset + named["bias"].size == named["kernel"].offset:
            blocks[l]["augmented"] = P[named["bias"].offset:named["kernel"].offset + named["kernel"].size]
    return blocks


def _input_products(a, blk, k):
    """Q[n, o, :] = sum_i [1; a][n, i] P[i, o, :] for one dense layer: `[B, fan_out, k]`.

    One GEMM [B, fan_in + 1] x [fan_in + 1, fan_out k] when the bias rows precede the kernel's in P_g
    (row 0 of [1; a] is the bias), so no separate pass adds the bias.
    """
    fan_in = a.shape[1]
    fan_out = blk["kernel"].shape[0] // fan_in
    dtype = compute_dtype(a, blk)
    a = a.astype(dtype)
    if "augmented" in blk:
        ones = jnp.ones((a.shape[0], 1), dtype)
        q = jnp.matmul(jnp.concatenate([ones, a], axis=1), blk["augmented"].reshape(fan_in + 1, fan_out * k),
                       precision=_HIGHEST)
        return q.reshape(a.shape[0], fan_out, k)
    q = jnp.matmul(a, blk["kernel"].reshape(fan_in, fan_out * k), precision=_HIGHEST)
    q = q.reshape(a.shape[0], fan_out, k)
    return q + blk["bias"][None] if "bias" in blk else q


def first_layer_products(params, x: jax.Array, P: Sequence[jax.Array], grouping: str) -> jax.Array:
    """The data side of the first dense layer's sketch: Q0 = [1; x] P_0 `[B, fan_out, k]` ("structured").

    Depends on the samples and P only, not on the weights, so it can be computed
    once per sample per round and shared by every neighbourhood holding the
    sample (`sketch_jacobian(..., first_layer=...)`): the N (fan_in + 1) fan_out k
    FLOPs that dominate the structured sketch are paid once instead of once per
    neighbourhood (degree + 1 times). `x` `[B, 28, 28, 1]` (any shape whose
    trailing axes flatten to fan_in).
    """
    layer_of = _dense_layer_index(params)
    layout = _layout(params, grouping)
    _check_projections(P, layout)
    for p, group in zip(P, layout):
        blk = _layer_blocks(p, group, layer_of).get(0, {})
        if "kernel" in blk:
            return _input_products(x.reshape(x.shape[0], -1), blk, p.shape[1])
    raise ValueError("no group holds the first layer's kernel")


def _structured(params, x, P, layout, first_layer=None, groups=None):
    layer_of = _dense_layer_index(params)
    inputs, backprops = mlp_activations_and_backprops(params, x)  # [B, fan_in], [B, C, fan_out]
    n, c = backprops[-1].shape[:2]
    dtype = compute_dtype(backprops, P, first_layer)
    out = []
    for g, (p, group) in enumerate(zip(P, layout)):
        if groups is not None and g not in groups:
            continue
        k = p.shape[1]
        s = jnp.zeros((n, c, k), dtype)
        for l, blk in _layer_blocks(p, group, layer_of).items():
            d = backprops[l].astype(dtype)
            if "kernel" in blk:  # contract [1; a] with P first
                q = first_layer if (l == 0 and first_layer is not None) else _input_products(inputs[l], blk, k)
                s = s + jnp.einsum("nco,nok->nck", d, q, precision=_HIGHEST)
            else:
                s = s + jnp.einsum("nco,ok->nck", d, blk["bias"], precision=_HIGHEST)
        out.append(s)
    return tuple(out)


def sketch_jacobian(apply: Apply, params, x: jax.Array, mask: jax.Array | None, P: Sequence[jax.Array], *,
                    grouping: str, method: str = "structured", direction_chunk: int = 128,
                    sample_chunk: int | None = None, first_layer: jax.Array | None = None,
                    groups: Sequence[int] | None = None) -> tuple[jax.Array, ...]:
    """SPEC step 3 (sketch mode): J~_g = J_g P_g for every group g.

    Args:
      apply: `apply(params, x [B, 28, 28, 1]) -> logits [B, C]` ("structured"
        ignores it and assumes `models.MLP`).
      params: one model's pytree (w̄_i).
      x: `[N, 28, 28, 1]` samples; mask: bool `[N]` (None = all real).
      P: `projections(...)`, P_g `[d_g, k]`; the same for every node.
      grouping: one of `GROUPINGS` (the one P was drawn for).
      method: one of `METHODS` (`resolve_method` maps "auto").
      direction_chunk: "forward": P columns (JVPs) vectorized at once.
      sample_chunk: samples per vectorized chunk (None or 0: all at once);
        bounds memory, e.g. "materialize" holds a `[sample_chunk, C, d]` J.
      first_layer: "structured" only: `first_layer_products(params, x, P,
        grouping)` `[N, fan_out, k]` precomputed for these rows (e.g. shared by
        all neighbourhoods); None = computed here.
      groups: the indices of the groups to sketch (None = all); "structured"
        skips the others' work (e.g. the output layer's, whose part of the
        kernel `spark_jax.ntk.sketch_output_layer` gives in closed form).

    Returns:
      tuple over the (chosen) groups, in group order, of J~_g `[N, C, k]` (float32, or float64 for
      float64 params / samples / P); padding rows are zero.
    """
    layout = _layout(params, grouping)
    _check_projections(P, layout)
    if direction_chunk < 1:
        raise ValueError(f"direction_chunk must be >= 1, got {direction_chunk}")
    if first_layer is not None and method != "structured":
        raise ValueError(f"first_layer products are only used by method 'structured', not {method!r}")
    if method == "structured":
        _dense_layer_index(params)
        fn = lambda xq: _structured(params, xq[0], P, layout, xq[1], groups)
    elif method == "forward":
        fn = lambda xq: _forward(apply, params, xq[0], P, layout, direction_chunk)
    elif method == "materialize":
        fn = lambda xq: _materialized(apply, params, xq[0], P, layout)
    else:
        raise ValueError(f"unknown sketch method {method!r}; choose one of {METHODS} (or resolve 'auto' "
                         f"with resolve_method)")
    sketches = _map_sample_chunks(fn, (zero_padding(x, mask), first_layer), sample_chunk)
    if groups is not None and method != "structured":
        sketches = tuple(s for g, s in enumerate(sketches) if g in groups)
    return tuple(mask_rows(sketches, mask))
