"""SPARK (SPEC steps 1-11 and "The three stages"): NTK-DFL plus Jacobian
sketches, annealed distillation and stage-3 Nesterov momentum; one jitted round.

Per round r (eta_r, lambda_r, beta_r traced; see `spark_jax.schedules`):
  2. w̄_i = sum_j W_r[i, j] w_j (and the velocity, when `momentum.velocity='mixed'`)
  3. messages at w̄_i: outputs F0, labels, and per layer the sketch J_l P_l
     (P_l from the `sketch` stream, identical at every node) or exact J
  5. H = (1/C) sum_c sum_l J~_l[:, c] J~_l[:, c]^T
  6. Y^ = (1 - lambda_r) Y + lambda_r softmax(F_T / T)
  7. evolution towards Y^; 8. Delta_tau (back-projected, own_exact or exact);
  9. tau* by CE(f(X; w̄_i + Delta_tau), Y^)
  10. v_i <- beta_r v_i + Delta; w_i <- w̄_i + Delta + beta_r v_i
With sketch off, lambda_max = 0 and beta = 0 this is NTK-DFL (tested against
`algorithms.ntk_dfl`). Dtypes follow the parameters and node data (`spark_jax.dtypes.compute_dtype`):
float32 by default, float64 end to end (P, sketches, schedules, targets, updates) for float64 ones.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from spark_jax import comm, guard, ntk, parallel, schedules, sketch, sketch_share, sketched_ntk
from spark_jax.algorithms.base import Algorithm, RoundInputs, mix, with_matmul_precision
from spark_jax.algorithms.ntk_dfl import gather_neighbourhood, resolve_kernel_method
from spark_jax.dtypes import compute_dtype
from spark_jax.models import Model, init_node_params, num_params
from spark_jax.rng import stream_key


@flax.struct.dataclass
class State:
    params: Any  # leaves [M, ...]
    velocity: Any  # leaves [M, ...] (SPEC step 10)


def share_plan(config, params, n_max: int, slots: int, structured: bool) -> sketch_share.SharePlan:
    """Static, from the round's shapes: blocks of P's columns for sharing the first layer's [1; x] P_0
    among neighbourhoods (`config.sketch.share_first_layer`, bound `share_bytes`), block 0 = not shared.

    The schedule holds one block of products for all M * n_max rows and every node's kernel [N, N],
    N = slots * n_max (counted twice: the node map's input and output with a mesh; one device updates
    them in place, so the bound is then conservative), in floats of the params' dtype (4 or 8 bytes).
    `structured`: the model's capability (`Model.structured`), which decides the sketch method as in
    `make`.
    """
    sc = config.sketch
    mode = sketch_share.check_share_mode(sc.share_first_layer)
    if not sc.enabled or sketch.resolve_method(sc.method, structured) != "structured":
        mode = "off"
    m, rows = config.partition.num_nodes, slots * n_max
    return sketch_share.plan_shared_first_layer(mode, params, sc.grouping, sc.k, samples=m * n_max,
                                                fixed_bytes=2 * m * rows * rows * compute_dtype(params).itemsize,
                                                max_bytes=float(sc.share_bytes))


def distillation_targets(labels_onehot, teacher_logits, lam, temperature: float):
    """SPEC step 6: Y^ = (1 - lambda) Y + lambda softmax(F_T / T); [N, C]."""
    return (1.0 - lam) * labels_onehot + lam * jax.nn.softmax(teacher_logits / temperature, axis=-1)


class NodePhases(NamedTuple):
    """The per-node steps of a SPARK round (one neighbourhood, N rows), composed by `make`'s round and
    timed one by one by `benchmarks/spark_round.py`:

      targets(w_bar, x, labels, mask, teacher, lam) -> (F0, Y^)              steps 3, 6
      messages(w_bar, x, mask, P, first_layer) -> sketches J~_l [N, C, k]    step 3 (None: exact mode)
      shared_messages(w_bar, neighbors, slot_mask, node_data, first_all, P_b) -> (x, mask, sketches)
        the same for one block P_b of P's columns, gathering the neighbourhood's rows of the shared
        first-layer products first_all [M, n_max, fan_out, block] (node by node on CPU)
      kernel(w_bar, x, mask, sketches) -> H [N, N]                           step 5
      evolve(H, F0, Y^, mask, eta) -> ntk.Evolution                          step 7
      update(w_bar, x, mask, own_rows, sketches, P, evolution, eta) -> Delta_tau leaves [T, ...]  step 8
        (sketches None in sketch mode: the shared-first-layer schedule, P P^T of the exact update)
      select(w_bar, x, mask, Y^, deltas, evolution) -> (tau index, losses [T])                   step 9
    """

    targets: Callable
    messages: Callable
    shared_messages: Callable
    kernel: Callable
    evolve: Callable
    update: Callable
    select: Callable


def make_node_phases(config, model: Model) -> NodePhases:
    """SPARK's per-node phases from `config.ntk`, `.sketch`, `.distill` (see `NodePhases`)."""
    nc, sc, dc = config.ntk, config.sketch, config.distill
    taus = ntk.check_taus(nc.taus)
    kernel_method = resolve_kernel_method(nc.kernel, model.structured)
    sketch_method = sketch.resolve_method(sc.method, model.structured) if sc.enabled else None
    chunk = nc.sample_chunk or None
    apply, num_classes = model.apply, model.num_classes

    def targets(w_bar, x, labels, mask, teacher, lam):
        f0 = apply(w_bar, x)
        y = jax.nn.one_hot(labels, num_classes, dtype=compute_dtype(f0)) * mask[:, None]
        teacher_logits = f0 if dc.teacher == "averaged" else teacher
        return f0, jnp.where(mask[:, None], distillation_targets(y, teacher_logits, lam, dc.temperature), 0.0)

    @functools.partial(parallel.with_node_batching, batching=nc.node_batching)
    def sketches(w_bar, x, mask, P, first_layer):
        return sketch.sketch_jacobian(apply, w_bar, x, mask, P, grouping=sc.grouping, method=sketch_method,
                                      direction_chunk=sc.direction_chunk, sample_chunk=chunk,
                                      first_layer=first_layer)

    def messages(w_bar, x, mask, P, first_layer):
        return sketches(w_bar, x, mask, P, first_layer) if sc.enabled else None

    # Gathers inside the per-node function: on CPU one neighbourhood's products at a time.
    @functools.partial(parallel.with_node_batching, batching=nc.node_batching)
    def shared_messages(w_bar, neighbors, slot_mask, node_data, first_all, P_b):
        x, _, mask = gather_neighbourhood(node_data, neighbors, slot_mask)
        first = first_all[neighbors].reshape((x.shape[0],) + first_all.shape[2:])  # padding rows are masked
        return x, mask, sketch.sketch_jacobian(apply, w_bar, x, mask, P_b, grouping=sc.grouping,
                                               method=sketch_method, sample_chunk=chunk, first_layer=first)

    @functools.partial(parallel.with_node_batching, batching=nc.node_batching)
    def kernel(w_bar, x, mask, sk):
        if sk is not None:
            return sketched_ntk.sketched_kernel(sk, mask)
        return ntk.neighbourhood_kernel(apply, w_bar, x, mask, method=kernel_method, chunk_size=chunk,
                                        jacobian_mode=nc.jacobian_mode)

    @functools.partial(parallel.with_node_batching, batching=nc.node_batching)
    def evolve(h, f0, y_hat, mask, eta):
        return ntk.evolve_logits(h, f0, y_hat, mask, eta, taus, **ntk.integrator_options(nc))

    def update(w_bar, x, mask, own_rows, sk, P, evo, eta):
        residuals = evo.residual_sums
        if not sc.enabled or sc.update_mode == "roundtrip":
            return ntk.weight_updates(apply, w_bar, x, mask, residuals, eta)
        if sk is None:  # shared first layer: no whole sketch held; P P^T of the exact update instead
            if sc.update_mode == "backproject":
                return sketched_ntk.back_project_update(P, ntk.weight_updates(apply, w_bar, x, mask, residuals, eta),
                                                  w_bar, sc.grouping)
            own = own_rows[None, :, None]
            t = residuals.shape[0]
            both = ntk.weight_updates(apply, w_bar, x, mask, jnp.concatenate(
                [jnp.where(own, residuals, 0.0), jnp.where(own, 0.0, residuals)]), eta)  # one VJP, 2T rows
            projected = sketched_ntk.back_project_update(P, jax.tree.map(lambda a: a[t:], both), w_bar, sc.grouping)
            return jax.tree.map(lambda a, b: a[:t] + b, both, projected)
        if sc.update_mode == "backproject":
            return sketched_ntk.sketched_weight_updates(sk, P, w_bar, sc.grouping, residuals, eta, mask)
        # own_exact: own rows exact VJP, neighbour rows back-projected; both /N of the whole set
        own = own_rows[None, :, None]
        exact = ntk.weight_updates(apply, w_bar, x, mask, jnp.where(own, residuals, 0.0), eta)
        projected = sketched_ntk.sketched_weight_updates(sk, P, w_bar, sc.grouping, jnp.where(own, 0.0, residuals),
                                                   eta, mask)
        return jax.tree.map(jnp.add, exact, projected)

    def select(w_bar, x, mask, y_hat, deltas, evo):
        return ntk.select_tau(apply, w_bar, x, mask, y_hat, deltas, criterion=nc.tau_criterion,
                              evolved_logits=evo.logits)

    return NodePhases(targets, messages, shared_messages, kernel, evolve, update, select)


def make(config, model: Model, mesh=None) -> Algorithm:
    """SPARK from `config.ntk`, `.sketch`, `.distill`, `.momentum`, `.stages`.

    With a 'nodes' `mesh`, each device runs its own nodes (`parallel.node_map`).
    """
    nc, sc, dc, mc = config.ntk, config.sketch, config.distill, config.momentum
    num_nodes = config.partition.num_nodes
    num_classes = model.num_classes
    taus = ntk.check_taus(nc.taus)
    b2, b3 = schedules.stage_boundaries(tuple(config.stages.boundaries), config.stages.unit, config.rounds)
    template = model.init(jax.random.key(0))
    d = num_params(template)
    sketch_method = sketch.resolve_method(sc.method, model.structured) if sc.enabled else None
    sketch_key = stream_key(config.seed, "sketch")
    k_total = sc.k * len(sketch.group_sizes(template, sc.grouping)) if sc.enabled else 0
    apply = model.apply
    ph = make_node_phases(config, model)
    sketch_share.check_share_mode(sc.share_first_layer)

    def init(key, node_data) -> State:
        del node_data
        params = init_node_params(model, key, num_nodes, config.model.per_node_init)
        return State(params=params, velocity=jax.tree.map(jnp.zeros_like, params))

    def node_step(w_bar, x, labels, mask, own_rows, teacher, eta, lam, P, h=None):
        """Steps 3-9 for one node; returns (Delta_tau*, tau index, loss, finite flags).

        h: the sketched kernel when the shared-first-layer schedule already built it (then no sketch
        is held; the update back-projects the exact one). finite flags: (kernel, evolution, update)
        bools for the NaN guard (`spark_jax.guard`).
        """
        f0, y_hat = ph.targets(w_bar, x, labels, mask, teacher, lam)
        sk = None
        if h is None:
            sk = ph.messages(w_bar, x, mask, P, None)
            h = ph.kernel(w_bar, x, mask, sk)
        evo = ph.evolve(h, f0, y_hat, mask, eta)
        deltas = ph.update(w_bar, x, mask, own_rows, sk, P, evo, eta)
        best, losses = ph.select(w_bar, x, mask, y_hat, deltas, evo)
        delta = jax.tree.map(lambda dl: dl[best], deltas)
        return delta, best, losses[best], (guard.all_finite(h), guard.all_finite(evo), guard.all_finite(delta))

    def shared_kernels(w_bar, node_data, neighbors, slot_mask, P, plan, batch):
        """Every node's sketched kernel H~ `[M, N, N]` with [1; x] P_0 computed once per sample.

        Walks P's columns in `plan.num_blocks` blocks: per block, the first-layer products of all
        samples `[M, n_max, fan_out, block]`, then every node's sketch columns and partial kernel
        (kernels add over columns). Holds one block of products and the kernels (updated in place
        on one device; with a mesh, the node map's input and output).
        """
        m, n_max = node_data.x.shape[:2]
        flat_x = node_data.x.reshape((m * n_max,) + node_data.x.shape[2:])
        rows = neighbors.shape[1] * n_max

        def add_block(args, node_data, first_all, P_b):
            w, nbr, smask, h = args
            x, mask, sk = ph.shared_messages(w, nbr, smask, node_data, first_all, P_b)
            return h + ph.kernel(w, x, mask, sk)

        def add_in_place(h, shared):
            """h[i] += node i's partial kernel, chunk by chunk, updating the carry in place (one copy
            of all kernels, where a map would hold its input and output)."""
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
            first_all = sketch.first_layer_products(template, flat_x, P_b, sc.grouping)
            first_all = first_all.reshape((m, n_max) + first_all.shape[1:])
            if mesh is None:
                return add_in_place(h, (node_data, first_all, P_b))
            # node_data and the products whole on every device: neighbours may live on other shards.
            return parallel.node_map(add_block, (w_bar, neighbors, slot_mask, h), batch_size=batch, mesh=mesh,
                                     shared=(node_data, first_all, P_b))

        h0 = parallel.constrain_nodes(jnp.zeros((num_nodes, rows, rows), compute_dtype(P)), mesh)
        return jax.lax.fori_loop(0, plan.num_blocks, block, h0)

    def round_fn(state: State, node_data, inputs: RoundInputs):
        r = inputs.round_index
        dtype = compute_dtype(state.params, node_data.x)  # float32, or float64 for float64 params / data
        # One model's shapes in the round's dtype: P and the share plan follow it.
        shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], dtype), state.params)
        eta = schedules.learning_rate(nc.eta0, nc.decay, r, dtype)
        lam = schedules.distill_weight(r, b2, b3, dc.lambda_max, config.stages.ramp, dtype)
        beta = schedules.momentum_beta(r, b3, mc.beta, dtype)
        w_bar = mix(state.params, inputs.neighbors, inputs.weights)
        velocity = mix(state.velocity, inputs.neighbors, inputs.weights) if mc.velocity == "mixed" else state.velocity
        P = (sketch.projections(sketch_key, shapes, sc.grouping, sc.k, r, sc.redraw) if sc.enabled else None)
        # Teacher 'neighbors': every node's own pre-mixing model on its own data, [M, n_max, C].
        own_logits = (jax.vmap(apply)(state.params, node_data.x) if dc.teacher == "neighbors" else None)

        batch = min(nc.node_chunk, num_nodes)
        plan = share_plan(config, shapes, node_data.x.shape[1], inputs.neighbors.shape[1], model.structured)
        kernels = None
        if plan.block:
            kernels = shared_kernels(w_bar, node_data, inputs.neighbors, inputs.mask, P, plan, batch)

        def one_node(args, node_data, own_logits, eta, lam, P):
            w, nbr, slot_mask, h = args
            x, labels, mask = gather_neighbourhood(node_data, nbr, slot_mask)
            own_rows = jnp.zeros(slot_mask.shape[0], bool).at[0].set(True)
            own_rows = jnp.repeat(own_rows, node_data.mask.shape[1])
            teacher = own_logits[nbr].reshape(x.shape[0], num_classes) if own_logits is not None else None
            return node_step(w, x, labels, mask, own_rows, teacher, eta, lam, P, h)

        # node_data and teacher logits whole on every device: neighbours may live on other shards.
        delta, best, loss, finite = parallel.node_map(one_node, (w_bar, inputs.neighbors, inputs.mask, kernels),
                                              batch_size=batch, mesh=mesh,
                                              shared=(node_data, own_logits, eta, lam, P))
        velocity = jax.tree.map(lambda v, dl: beta * v + dl, velocity, delta)
        params = jax.tree.map(lambda w, dl, v: w + dl + beta * v, w_bar, delta, velocity)
        hist = jnp.sum(jax.nn.one_hot(best, len(taus), dtype=jnp.int32), axis=0)
        return parallel.constrain_nodes(State(params=params, velocity=velocity), mesh), {
            "train_loss": jnp.mean(loss), "neighbourhood_loss": jnp.mean(loss), "tau_histogram": hist,
            "eta": eta, "lambda": lam, "beta": beta,
            **dict(zip(("finite_kernel", "finite_evolution", "finite_update"), finite))}

    def message_bytes(neighbors, mask, counts) -> dict:
        floats_per_row = num_classes * (k_total if sc.enabled else d)
        out = comm.ntk_message_bytes(neighbors, mask, counts, num_classes=num_classes,
                                     jacobian_floats_per_row=floats_per_row)
        rows = comm.incoming_sample_counts(neighbors, mask, counts)
        edges = comm.num_directed_edges(neighbors, mask)
        extra = 0
        if dc.teacher == "neighbors":
            extra += rows * num_classes * comm.BYTES_PER_FLOAT
        if sc.enabled and sc.update_mode == "roundtrip":
            # residual rows out (n_j x C per tau), exact J_j^T R_j back (d floats per tau)
            extra += (rows * num_classes + edges * d) * len(taus) * comm.BYTES_PER_FLOAT
        out["message_bytes"] += extra
        out["exact_jacobian_bytes"] = rows * num_classes * d * comm.BYTES_PER_FLOAT
        return out

    return Algorithm(name="spark", init=init, round=with_matmul_precision(round_fn, config.ntk.matmul_precision),
                     message_bytes=message_bytes)
