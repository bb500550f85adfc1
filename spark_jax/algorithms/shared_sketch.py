"""SPARK's per-round prepare hook: every node's sketched kernel with the first layer's data side
[1; x] P_0 computed once per sample (SPEC step 3, `ComputeOptions.share_first_layer`).

The first layer's [1; x] P_0 does not depend on the weights, yet each sample sits in (degree + 1)
neighbourhoods. `share_plan` picks blocks of P's columns within a byte bound (`spark_jax.ntk.sketch_share`);
`shared_kernels` starts every node's kernel from the output layer's part in closed form
(`spark_jax.ntk.sketch_output_layer`) and walks the blocks: per block, the products of all samples, then
every node's hidden-layer sketch columns and their Gram (kernels add over columns).
"""

from __future__ import annotations

import functools

import jax
from jax.sharding import PartitionSpec

from spark_jax import parallel
from spark_jax.algorithms import ntk_round
from spark_jax.ntk import sketch as sketching, sketch_output_layer, sketch_share
from spark_jax.dtypes import compute_dtype
from spark_jax.options import ComputeOptions, SketchOptions


def share_plan(sketch: SketchOptions | None, compute: ComputeOptions, params, num_nodes: int, n_max: int,
               slots: int, structured: bool, devices: int = 1) -> sketch_share.SharePlan:
    """Static, from the round's shapes: blocks of P's columns for sharing the first layer's [1; x] P_0
    among neighbourhoods (`compute.share_first_layer`, bound `compute.share_bytes`), block 0 = not shared.

    The schedule holds every node's kernel [N, N], N = slots * n_max, counted twice, and one block of
    products for all M * n_max rows on each of the `devices` devices of the 'nodes' mesh (each gathers
    every sample's products: neighbours may live on other shards), in floats of the params' dtype (4 or
    8 bytes). An estimate, not the process's peak (measured against it: BUILD.md "Multiple devices").
    `structured`: the model's capability (`Model.structured`), which decides the sketch method.
    """
    mode = sketch_share.check_share_mode(compute.share_first_layer)
    if sketch is None:  # exact messages: nothing to share
        return sketch_share.SharePlan(0, 0, 0)
    method = sketching.resolve_method(compute.sketch_method, structured)
    if method != "structured" or not sketch_output_layer.gram_groups(params, sketch.grouping, method):
        mode = "off"  # nothing to share: no structured sketch, or no hidden layer (the kernel in closed form)
    kernels = num_nodes * (slots * n_max) ** 2 * compute_dtype(params).itemsize
    return sketch_share.plan_shared_first_layer(mode, params, sketch.grouping, sketch.k,
                                                samples=devices * num_nodes * n_max, fixed_bytes=2 * kernels,
                                                max_bytes=float(compute.share_bytes))


def shared_kernels(ph, template, grouping: str, w_bar, node_data, neighbors, slot_mask, P, plan, batch: int,
                   mesh=None):
    """Every node's sketched kernel H~ `[M, N, N]` with [1; x] P_0 computed once per sample.

    ph: the round's `ntk_round.NodePhases` (shared_messages, gram, output_kernel); template: one model's
    params. Starts from the part of H~ given in closed form (the output layer's, from all of P;
    `output_kernel`), then walks P's columns in `plan.num_blocks` blocks: per block, the first-layer
    products of all samples `[M, n_max, fan_out, block]`, then every node's sketch columns of the other
    groups and their Gram, added to its kernel in place. With a 'nodes' mesh the whole walk is one
    `shard_map`: each device computes the products of its own nodes' samples, all-gathers every
    sample's (neighbourhoods cross shards) and updates its own nodes' kernels.
    """
    if mesh is None:
        return _walk_blocks(ph, template, grouping, plan, batch, None, w_bar, neighbors, slot_mask, node_data, P)
    walk = functools.partial(_walk_blocks, ph, template, grouping, plan, batch, parallel.NODES)
    nodes, whole = PartitionSpec(parallel.NODES), PartitionSpec()
    return jax.shard_map(walk, mesh=mesh, in_specs=(nodes, nodes, nodes, whole, whole), out_specs=nodes,
                         check_vma=False)(w_bar, neighbors, slot_mask, node_data, P)


def _walk_blocks(ph, template, grouping, plan, batch, axis, w_bar, neighbors, slot_mask, node_data, P):
    """`shared_kernels` for the nodes of w_bar / neighbors / slot_mask `[m, ...]` (all of them, or one
    device's inside the shard_map over mesh axis `axis`); node_data and P whole."""
    m, n_max = jax.tree.leaves(w_bar)[0].shape[0], node_data.x.shape[1]
    x_own = node_data.x
    if axis is not None:  # this device's own nodes' samples
        x_own = jax.lax.dynamic_slice_in_dim(node_data.x, jax.lax.axis_index(axis) * m, m)
    flat_x = x_own.reshape((m * n_max,) + x_own.shape[2:])
    batch = min(batch, m)

    def add_block(args, node_data, first_all, P_b):
        w, nbr, smask, h = args
        x, mask, sk = ph.shared_messages(w, nbr, smask, node_data, first_all, P_b)  # the Gram groups' sketches
        return h + ph.gram(sk, mask)

    def closed_form_part(args):  # the output layer's part, from all of P at once
        w, nbr, smask = args
        x, _, mask = ntk_round.gather_neighbourhood(node_data, nbr, smask)
        return ph.output_kernel(w, x, mask, P)

    def add_in_place(h, shared):
        """h[i] += node i's partial kernel, chunk by chunk, updating the carry in place (one copy of all
        kernels, where a map would hold its input and output)."""
        def chunk(start, size, h):
            part = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, size),
                                (w_bar, neighbors, slot_mask, h))
            new = jax.vmap(lambda args: add_block(args, *shared))(part)
            return jax.lax.dynamic_update_slice_in_dim(h, new, start, 0)

        full = m // batch
        h = jax.lax.fori_loop(0, full, lambda i, h: chunk(i * batch, batch, h), h)
        return chunk(full * batch, m - full * batch, h) if m % batch else h

    def block(b, h):
        P_b = sketch_share.projection_block(P, b, plan)
        first = sketching.first_layer_products(template, flat_x, P_b, grouping)
        if axis is not None:  # every sample's products on every device
            first = jax.lax.all_gather(first, axis, tiled=True)
        first_all = first.reshape((-1, n_max) + first.shape[1:])
        return add_in_place(h, (node_data, first_all, P_b))

    h0 = jax.lax.map(closed_form_part, (w_bar, neighbors, slot_mask), batch_size=batch)
    return jax.lax.fori_loop(0, plan.num_blocks, block, h0)
