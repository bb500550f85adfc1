"""One NTK round (SPEC steps 1-11), built from three parts; NTK-DFL and SPARK are its settings.

Per round r, with eta_r, lambda_r, beta_r from the round schedules (traced: no recompilation):
  2. mixing       w̄_i = sum_j W_r[i, j] w_j (and the velocity, with momentum velocity 'mixed')
  3-4. messages   node i stacks its closed neighbourhood's padded data, x [N, ...], mask [N], and the
                  Jacobian information: exact J (`sketch=None`), or per group l the sketch J_l P_l
  5. kernel       H = (1/C) sum_c J_c J_c^T (or its sketched version)
  6. targets      one-hot Y (`distill=None`), or Y^ = (1 - lambda_r) Y + lambda_r softmax(F_T / T)
  7. evolution    dF/ds = -(1/N) H (softmax(F) - Y^), F(0) = f(X; w̄_i)     (`EvolutionOptions`)
  8. updates      Delta_tau = -(eta_r/N) J^T R_tau (exact, back-projected, own_exact or roundtrip)
  9. selection    tau* = argmin_tau CE(f(X; w̄_i + Delta_tau), Y^)
  10-11. commit   w_i <- w̄_i + Delta_tau* (`momentum=None`), or `optax.trace(beta_r, nesterov=True)`
                  on Delta: v <- beta_r v + Delta, w_i <- w̄_i + Delta + beta_r v

NTK-DFL is the round with exact messages, one-hot targets and the plain commit, by construction
(`ntk_dfl.ntk_dfl`); SPARK sets the parts (`spark.spark`). Nodes run through `parallel.node_map`
in chunks of `ComputeOptions.node_chunk`; the per-node phases (`NodePhases`) are what the
benchmarks time. Dtypes follow the parameters and node data (`spark_jax.dtypes.compute_dtype`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from spark_jax import guard, ntk, parallel
from spark_jax.algorithms import schedules
from spark_jax.ntk import sketch as sketching, sketch_output_layer, sketched_ntk
from spark_jax.setting import comm
from spark_jax.algorithms.base import Algorithm, RoundInputs, mix, with_matmul_precision
from spark_jax.dtypes import compute_dtype
from spark_jax.setting.models import Model, init_node_params, num_params
from spark_jax.options import ComputeOptions, DistillOptions, EvolutionOptions, MomentumOptions, SketchOptions

HYPERPARAMETERS = ("eta", "lambda", "beta")  # per-round values a caller may override (RoundInputs.hyperparams)


@flax.struct.dataclass
class State:
    params: Any  # leaves [M, ...]


@flax.struct.dataclass
class MomentumState:
    params: Any  # leaves [M, ...]
    velocity: Any  # leaves [M, ...]: optax.trace's state (SPEC step 10)


def gather_neighbourhood(node_data, neighbors_i: jax.Array, slot_mask_i: jax.Array):
    """SPEC step 4: node i's neighbourhood set from the padded node data.

    neighbors_i, slot_mask_i [S]. Returns x [S * n_max, ...], labels [S * n_max]
    and mask [S * n_max] (False on padding rows and on padding slots).
    """
    x = node_data.x[neighbors_i]
    rows = x.shape[0] * x.shape[1]
    mask = node_data.mask[neighbors_i] & slot_mask_i[:, None]
    return x.reshape((rows,) + x.shape[2:]), node_data.y[neighbors_i].reshape(rows), mask.reshape(rows)


def resolve_kernel_method(method: str, structured: bool) -> str:
    """`ComputeOptions.kernel` -> the kernel method; "auto" = "structured" for a model with the structured
    fast path (`Model.structured`, `models.supports_structured`), else "contraction"."""
    if not isinstance(structured, bool):
        raise TypeError(f"resolve_kernel_method takes the model's structured capability (a bool), "
                        f"not {structured!r}")
    if method == "auto":
        return "structured" if structured else "contraction"
    return method


def distillation_targets(labels_onehot, teacher_logits, lam, temperature: float):
    """SPEC step 6: Y^ = (1 - lambda) Y + lambda softmax(F_T / T); [N, C]."""
    return (1.0 - lam) * labels_onehot + lam * jax.nn.softmax(teacher_logits / temperature, axis=-1)


class NodePhases(NamedTuple):
    """The per-node steps of a round (one neighbourhood, N rows), composed by `ntk_round` and timed one by
    one by `benchmarks/round.py` and `benchmarks/spark_round.py`:

      targets(w_bar, x, labels, mask, teacher, lam) -> (F0 [N, C], Y^ [N, C])     steps 3, 6
      messages(w_bar, x, mask, P, first_layer) -> sketches J~_l [N, C, k], or None (exact)   step 3
      shared_messages(w_bar, neighbors, slot_mask, node_data, first_all, P_b) -> (x, mask, sketches)
        the same for one block P_b of P's columns, gathering the neighbourhood's rows of the shared
        first-layer products first_all [M, n_max, fan_out, block] (`shared_sketch`); only the groups
        whose kernel part is a Gram of sketches (not `output_kernel`'s)
      kernel(w_bar, x, mask, sketches, P) -> H [N, N]                               step 5
      gram(sketches, mask) -> (1/C) sum J~ J~^T of the given sketches [N, N] (the shared schedule's
        part per block of columns)
      output_kernel(w_bar, x, mask, P) -> the part of H~ [N, N] given in closed form (the output
        layer's, `spark_jax.ntk.sketch_output_layer`; zeros where none is)
      evolve(H, F0, Y^, mask, eta) -> ntk.Evolution                                 step 7
      update(w_bar, x, mask, own_rows, sketches, P, evolution, eta) -> Delta_tau leaves [T, ...]  step 8
        (sketches None in sketch mode: the shared-first-layer schedule, P P^T of the exact update)
      select(w_bar, x, mask, Y^, deltas, evolution) -> (tau index, losses [T])      step 9
      update_and_select(w_bar, x, mask, own_rows, sketches, P, Y^, evolution, eta)
        -> (Delta_tau*, tau index, losses [T]): steps 8-9 as one per-node program (the round's)
    """

    targets: Callable
    messages: Callable
    shared_messages: Callable
    kernel: Callable
    gram: Callable
    output_kernel: Callable
    evolve: Callable
    update: Callable
    select: Callable
    update_and_select: Callable


def node_phases(model: Model, *, taus, tau_criterion: str, sketch: SketchOptions | None,
                distill: DistillOptions | None, evolution: EvolutionOptions, compute: ComputeOptions) -> NodePhases:
    """The per-node phases of the round these parts make (see `NodePhases`)."""
    taus = ntk.check_taus(taus)
    kernel_method = resolve_kernel_method(compute.kernel, model.structured)
    # The MLP fast paths go together: a 'structured' kernel means `models.MLP` params.
    update_method = "structured" if kernel_method == "structured" else "vjp"
    sketch_method = sketching.resolve_method(compute.sketch_method, model.structured) if sketch else None
    chunk = compute.sample_chunk or None
    apply, num_classes = model.apply, model.num_classes
    batched = lambda fn: parallel.with_node_batching(fn, batching=compute.node_batching)
    evolve_kwargs = evolution.evolve_kwargs(compute.product_columns)

    @batched
    def targets(w_bar, x, labels, mask, teacher, lam):
        f0 = apply(w_bar, x)
        y = jax.nn.one_hot(labels, num_classes, dtype=compute_dtype(f0)) * mask[:, None]
        if distill is None:
            return f0, y
        teacher_logits = f0 if distill.teacher == "averaged" else teacher
        return f0, jnp.where(mask[:, None], distillation_targets(y, teacher_logits, lam, distill.temperature), 0.0)

    @batched
    def sketches(w_bar, x, mask, P, first_layer):
        return sketching.sketch_jacobian(apply, w_bar, x, mask, P, grouping=sketch.grouping, method=sketch_method,
                                         direction_chunk=compute.direction_chunk, sample_chunk=chunk,
                                         first_layer=first_layer)

    def messages(w_bar, x, mask, P, first_layer):
        return sketches(w_bar, x, mask, P, first_layer) if sketch else None

    # Gathers inside the per-node function: on CPU one neighbourhood's products at a time.
    @batched
    def shared_messages(w_bar, neighbors, slot_mask, node_data, first_all, P_b):
        x, _, mask = gather_neighbourhood(node_data, neighbors, slot_mask)
        first = first_all[neighbors].reshape((x.shape[0],) + first_all.shape[2:])  # padding rows are masked
        groups = sketch_output_layer.gram_groups(w_bar, sketch.grouping, sketch_method)
        return x, mask, sketching.sketch_jacobian(apply, w_bar, x, mask, P_b, grouping=sketch.grouping, groups=groups,
                                                  method=sketch_method, sample_chunk=chunk, first_layer=first)

    @batched
    def output_kernel(w_bar, x, mask, P):
        return sketch_output_layer.closed_form_kernel(w_bar, x, mask, P, sketch.grouping, sketch_method)

    @batched
    def gram(sk, mask):
        return sketched_ntk.sketched_kernel(sk, mask)

    @batched
    def kernel(w_bar, x, mask, sk, P):
        if sk is not None:
            return sketch_output_layer.kernel_from_sketches(w_bar, x, mask, sk, P, sketch.grouping, sketch_method)
        return ntk.neighbourhood_kernel(apply, w_bar, x, mask, method=kernel_method, chunk_size=chunk,
                                        jacobian_mode=compute.jacobian_mode)

    @batched
    def evolve(h, f0, y_hat, mask, eta):
        return ntk.evolve_logits(h, f0, y_hat, mask, eta, taus, **evolve_kwargs)

    def exact(w_bar, x, mask, residuals, eta):
        return ntk.weight_updates(apply, w_bar, x, mask, residuals, eta, method=update_method)

    def update(w_bar, x, mask, own_rows, sk, P, evo, eta):
        residuals = evo.residual_sums
        if sketch is None or sketch.update_mode == "roundtrip":
            return exact(w_bar, x, mask, residuals, eta)
        if sk is None:  # shared first layer: no whole sketch held; P P^T of the exact update instead
            if sketch.update_mode == "backproject":
                return sketched_ntk.back_project_update(P, exact(w_bar, x, mask, residuals, eta), w_bar,
                                                        sketch.grouping)
            own = own_rows[None, :, None]
            t = residuals.shape[0]
            both = exact(w_bar, x, mask, jnp.concatenate([jnp.where(own, residuals, 0.0),
                                                          jnp.where(own, 0.0, residuals)]), eta)  # one pass, 2T rows
            projected = sketched_ntk.back_project_update(P, jax.tree.map(lambda a: a[t:], both), w_bar,
                                                         sketch.grouping)
            return jax.tree.map(lambda a, b: a[:t] + b, both, projected)
        if sketch.update_mode == "backproject":
            return sketched_ntk.sketched_weight_updates(sk, P, w_bar, sketch.grouping, residuals, eta, mask)
        # own_exact: own rows exact, neighbour rows back-projected; both /N of the whole set
        own = own_rows[None, :, None]
        projected = sketched_ntk.sketched_weight_updates(sk, P, w_bar, sketch.grouping,
                                                         jnp.where(own, 0.0, residuals), eta, mask)
        return jax.tree.map(jnp.add, exact(w_bar, x, mask, jnp.where(own, residuals, 0.0), eta), projected)

    def select(w_bar, x, mask, y_hat, deltas, evo):
        return ntk.select_tau(apply, w_bar, x, mask, y_hat, deltas, criterion=tau_criterion,
                              evolved_logits=evo.logits, method=update_method)

    @batched
    def update_and_select(w_bar, x, mask, own_rows, sk, P, y_hat, evo, eta):
        deltas = update(w_bar, x, mask, own_rows, sk, P, evo, eta)
        best, losses = select(w_bar, x, mask, y_hat, deltas, evo)
        return jax.tree.map(lambda dl: dl[best], deltas), best, losses

    return NodePhases(targets, messages, shared_messages, kernel, gram, output_kernel, evolve, batched(update),
                      batched(select), update_and_select)


class RoundSchedules(NamedTuple):
    """Per-round hyper-parameters as schedules over the round index: fn(r, dtype) -> scalar (SPEC "Setting",
    "The three stages"). lam / beta are None when the round has no distillation / momentum."""

    eta: Callable
    lam: Callable | None
    beta: Callable | None


def round_schedules(eta0: float, decay: float, stages: tuple[int, int], distill: DistillOptions | None,
                    momentum: MomentumOptions | None) -> RoundSchedules:
    """eta_r = eta0 exp(-decay r); lambda_r ramps over stage 2 (stages = (b2, b3), first rounds of stages 2
    and 3); beta_r = beta from stage 3."""
    b2, b3 = stages
    eta = lambda r, dtype: schedules.learning_rate(eta0, decay, r, dtype)
    lam = None if distill is None else (
        lambda r, dtype: schedules.distill_weight(r, b2, b3, distill.lambda_max, distill.ramp, dtype))
    beta = None if momentum is None else (lambda r, dtype: schedules.momentum_beta(r, b3, momentum.beta, dtype))
    return RoundSchedules(eta, lam, beta)


def _check_hyperparameters(inputs: RoundInputs, sched: RoundSchedules) -> None:
    """Every key of inputs.hyperparams names a value this round has (no 'lambda' without distillation, no
    'beta' without momentum): an override that would do nothing is an error, not ignored."""
    given = set(inputs.hyperparams or {})
    known = [name for name, s in zip(HYPERPARAMETERS, sched) if s is not None]
    if given - set(known):
        raise ValueError(f"RoundInputs.hyperparams has unknown key(s) {sorted(given - set(known))}; this round's "
                         f"hyper-parameters are {tuple(known)}")


def _hyperparameter(inputs: RoundInputs, name: str, schedule: Callable, dtype):
    """inputs.hyperparams[name] when given (cast to dtype), else the schedule's value at the round."""
    given = inputs.hyperparams or {}
    if name in given:
        return jnp.asarray(given[name], dtype)
    return schedule(inputs.round_index, dtype)


def commit(w_bar, delta, velocity, beta):
    """SPEC steps 10-11: w̄ + Delta (velocity None), else `optax.trace(beta, nesterov=True)` on Delta:
    returns (params, new velocity)."""
    if velocity is None:
        return jax.tree.map(jnp.add, w_bar, delta), None
    trace = optax.trace(decay=beta, nesterov=True)
    step, new = trace.update(delta, optax.TraceState(trace=velocity))
    return optax.apply_updates(w_bar, step), new.trace


def ntk_round(model: Model, *, name: str, num_nodes: int, eta0: float, decay: float, taus,
              tau_criterion: str = "network", sketch: SketchOptions | None = None,
              distill: DistillOptions | None = None, momentum: MomentumOptions | None = None,
              stages: tuple[int, int] = (0, 0), evolution: EvolutionOptions = EvolutionOptions(),
              compute: ComputeOptions = ComputeOptions(), sketch_key: jax.Array | None = None,
              per_node_init: bool = False, diagnostics: bool = False, diagnose_nodes: tuple[int, ...] = (),
              mesh=None) -> Algorithm:
    """The NTK round of these parts as an `Algorithm` (see the module docstring).

    sketch_key: the `sketch` PRNG stream (P_l drawn from it, identical at every node); needed with a
    sketch. diagnostics: the round's metrics also hold per node `tau_index` [M] and `tau_losses` [M, T]
    (the selection's losses of every candidate). diagnose_nodes: node indices whose neighbourhood the
    metrics also hold as `node_diagnostics` (leaves [K, ...]: kernel H [N, N], initial_logits F0 and
    targets Y^ [N, C], evolved_logits F(s_tau) [T, N, C], mask [N]), recomputed for those K nodes after
    the round (the same phases on the same w̄ and P). mesh: a 'nodes' mesh (`parallel.node_mesh`) or None.
    """
    from spark_jax.algorithms import shared_sketch  # pylint: disable=g-import-not-at-top  # SPARK's schedule

    taus = ntk.check_taus(taus)
    if any(not 0 <= i < num_nodes for i in diagnose_nodes):
        raise ValueError(f"diagnose_nodes={tuple(diagnose_nodes)} must be node indices in [0, {num_nodes})")
    if sketch is not None and sketch_key is None:
        raise ValueError("a sketched round needs sketch_key (the 'sketch' PRNG stream)")
    ph = node_phases(model, taus=taus, tau_criterion=tau_criterion, sketch=sketch, distill=distill,
                     evolution=evolution, compute=compute)
    sched = round_schedules(eta0, decay, stages, distill, momentum)
    template = jax.eval_shape(model.init, jax.random.key(0))  # one model's shapes (layouts, sizes)
    d = num_params(template)
    k_total = sketch.k * len(sketching.group_sizes(template, sketch.grouping)) if sketch else 0
    apply, num_classes = model.apply, model.num_classes
    neighbors_teach = distill is not None and distill.teacher == "neighbors"
    batch = min(compute.node_chunk, num_nodes)

    def init(key, node_data):
        del node_data
        params = init_node_params(model, key, num_nodes, per_node_init)
        if momentum is None:
            return State(params=params)
        return MomentumState(params=params, velocity=jax.tree.map(jnp.zeros_like, params))

    def node_step(w_bar, x, labels, mask, own_rows, teacher, eta, lam, P, h):
        """Steps 3-9 for one node; returns (Delta_tau*, tau index, losses [T], finite flags).

        h: the sketched kernel when the shared-first-layer schedule already built it (then no sketch is
        held; the update back-projects the exact one). finite flags: (kernel, evolution, update) bools
        for the NaN guard (`spark_jax.guard`).
        """
        f0, y_hat = ph.targets(w_bar, x, labels, mask, teacher, lam)
        sk = None
        if h is None:
            sk = ph.messages(w_bar, x, mask, P, None)
            h = ph.kernel(w_bar, x, mask, sk, P)
        evo = ph.evolve(h, f0, y_hat, mask, eta)
        delta, best, losses = ph.update_and_select(w_bar, x, mask, own_rows, sk, P, y_hat, evo, eta)
        return delta, best, losses, (guard.all_finite(h), guard.all_finite(evo), guard.all_finite(delta))

    def diagnose(i, w_bar, node_data, inputs, own_logits, eta, lam, P) -> dict:
        """Node i's neighbourhood through steps 3-7 again: H, F0, Y^, F(s_tau) (`diagnose_nodes`)."""
        w = jax.tree.map(lambda a: a[i], w_bar)
        x, labels, mask = gather_neighbourhood(node_data, inputs.neighbors[i], inputs.mask[i])
        teacher = own_logits[inputs.neighbors[i]].reshape(x.shape[0], num_classes) if own_logits is not None else None
        f0, y_hat = ph.targets(w, x, labels, mask, teacher, lam)
        h = ph.kernel(w, x, mask, ph.messages(w, x, mask, P, None), P)
        evo = ph.evolve(h, f0, y_hat, mask, eta)
        return {"kernel": h, "initial_logits": f0, "targets": y_hat, "evolved_logits": evo.logits, "mask": mask}

    def round_fn(state, node_data, inputs: RoundInputs):
        r = inputs.round_index
        _check_hyperparameters(inputs, sched)
        dtype = compute_dtype(state.params, node_data.x)  # float32, or float64 for float64 params / data
        eta = _hyperparameter(inputs, "eta", sched.eta, dtype)
        lam = _hyperparameter(inputs, "lambda", sched.lam, dtype) if distill is not None else jnp.zeros((), dtype)
        w_bar = mix(state.params, inputs.neighbors, inputs.weights)
        # One model's shapes in the round's dtype: P and the share plan follow it.
        shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], dtype), state.params)
        P = sketching.projections(sketch_key, shapes, sketch.grouping, sketch.k, r, sketch.redraw) if sketch else None
        # Teacher 'neighbors': every node's own pre-mixing model on its own data, [M, n_max, C].
        own_logits = jax.vmap(apply)(state.params, node_data.x) if neighbors_teach else None
        kernels = None
        if sketch is not None:
            plan = shared_sketch.share_plan(sketch, compute, shapes, num_nodes, node_data.x.shape[1],
                                            inputs.neighbors.shape[1], model.structured, parallel.size(mesh))
            if plan.block:
                kernels = shared_sketch.shared_kernels(ph, template, sketch.grouping, w_bar, node_data,
                                                       inputs.neighbors, inputs.mask, P, plan, batch, mesh)

        def one_node(args, node_data, own_logits, eta, lam, P):
            w, nbr, slot_mask, h = args
            x, labels, mask = gather_neighbourhood(node_data, nbr, slot_mask)
            own_rows = jnp.repeat(jnp.zeros(slot_mask.shape[0], bool).at[0].set(True), node_data.mask.shape[1])
            teacher = own_logits[nbr].reshape(x.shape[0], num_classes) if own_logits is not None else None
            return node_step(w, x, labels, mask, own_rows, teacher, eta, lam, P, h)

        # node_data and teacher logits whole on every device: neighbours may live on other shards.
        delta, best, losses, finite = parallel.node_map(one_node, (w_bar, inputs.neighbors, inputs.mask, kernels),
                                                        batch_size=batch, mesh=mesh,
                                                        shared=(node_data, own_logits, eta, lam, P))
        loss = jnp.take_along_axis(losses, best[:, None], axis=1)[:, 0]
        metrics = {"train_loss": jnp.mean(loss), "neighbourhood_loss": jnp.mean(loss),
                   "tau_histogram": jnp.sum(jax.nn.one_hot(best, len(taus), dtype=jnp.int32), axis=0), "eta": eta}
        if distill is not None:
            metrics["lambda"] = lam
        if momentum is None:
            params, _ = commit(w_bar, delta, None, None)
            new_state = State(params=params)
        else:
            beta = _hyperparameter(inputs, "beta", sched.beta, dtype)
            velocity = (mix(state.velocity, inputs.neighbors, inputs.weights) if momentum.velocity == "mixed"
                        else state.velocity)
            params, velocity = commit(w_bar, delta, velocity, beta)
            new_state = MomentumState(params=params, velocity=velocity)
            metrics["beta"] = beta
        if diagnostics:
            metrics.update(tau_index=best, tau_losses=losses)
        if diagnose_nodes:
            metrics["node_diagnostics"] = jax.lax.map(
                lambda i: diagnose(i, w_bar, node_data, inputs, own_logits, eta, lam, P),
                jnp.asarray(diagnose_nodes, jnp.int32))
        metrics.update(zip(("finite_kernel", "finite_evolution", "finite_update"), finite))
        return parallel.constrain_nodes(new_state, mesh), metrics

    def message_bytes(neighbors, mask, counts) -> dict:
        """Step-3 messages per round: outputs, labels and the Jacobian (exact: C d floats per row) or its
        sketch (C k_total), teacher outputs ('neighbors'), roundtrip's residuals and exact products back."""
        out = comm.ntk_message_bytes(neighbors, mask, counts, num_classes=num_classes,
                                     jacobian_floats_per_row=num_classes * (k_total if sketch else d))
        rows = comm.incoming_sample_counts(neighbors, mask, counts)
        extra = rows * num_classes * comm.BYTES_PER_FLOAT if neighbors_teach else 0
        if sketch is not None and sketch.update_mode == "roundtrip":
            # residual rows out (n_j x C per tau), exact J_j^T R_j back (d floats per tau)
            edges = comm.num_directed_edges(neighbors, mask)
            extra += (rows * num_classes + edges * d) * len(taus) * comm.BYTES_PER_FLOAT
        out["message_bytes"] += extra
        return out

    return Algorithm(name=name, init=init, round=with_matmul_precision(round_fn, compute.matmul_precision),
                     message_bytes=message_bytes)
