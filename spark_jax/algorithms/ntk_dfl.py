"""NTK-DFL (SPEC steps 1-9 and 11 in exact mode): one jitted round.

Per round r, with eta_r = eta_0 exp(-decay r):
  2. mixing            w̄_i = sum_j W_r[i, j] w_j
  3-4. neighbourhood   node i stacks the padded data of its closed
                       neighbourhood: x [S * n_max, ...], mask [S * n_max]
  5. kernel            H = (1/C) sum_c J_c J_c^T at w̄_i (config.ntk.kernel)
  7. evolution         dF/ds = -(1/N) H (softmax(F) - Y), F(0) = f(X; w̄_i)
  8. updates           Delta_tau = -(eta_r/N) J^T R_tau for every candidate tau (VJPs)
  9. selection         tau* = argmin_tau CE(f(X; w̄_i + Delta_tau), Y)
  11. commit           w_i <- w̄_i + Delta_tau*, all nodes at once

Nodes run through `lax.map` in chunks of `config.ntk.node_chunk` (vmapped
inside a chunk), so at most that many neighbourhoods (and, with the
contraction kernel, that many [N, C, d] Jacobians) are live at once.

Dtypes follow the parameters and node data (`spark_jax.dtypes.compute_dtype`): float32 by default;
with x64 enabled and float64 params (and data, and mixing weights) every float of the round is float64.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from spark_jax import comm, guard, ntk, parallel
from spark_jax.dtypes import compute_dtype
from spark_jax.algorithms.base import Algorithm, RoundInputs, mix, with_matmul_precision
from spark_jax.models import Model, init_node_params, num_params
from spark_jax.schedules import learning_rate


@flax.struct.dataclass
class State:
    params: Any  # leaves [M, ...]


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
    """`config.ntk.kernel` -> the kernel method; "auto" = "structured" for a model with the structured
    fast path (`Model.structured`, `models.supports_structured`), else "contraction"."""
    if not isinstance(structured, bool):
        raise TypeError(f"resolve_kernel_method takes the model's structured capability (a bool), "
                        f"not {structured!r}")
    if method == "auto":
        return "structured" if structured else "contraction"
    return method


class NodePhases(NamedTuple):
    """The per-node steps of a round, separately callable (benchmarks time them).

    messages(w_bar, x, labels, mask) -> (F0 [N, C], Y [N, C])        steps 3-4
    kernel(w_bar, x, mask) -> H [N, N]                                step 5
    evolve(H, F0, Y, mask, eta) -> ntk.Evolution                      step 7
    update(w_bar, x, mask, Y, evolution, eta) -> (w_new, tau index, loss)  steps 8-9, 11
    """

    messages: Callable
    kernel: Callable
    evolve: Callable
    update: Callable


def make_node_phases(apply, num_classes: int, cfg, kernel_method: str) -> NodePhases:
    taus = ntk.check_taus(cfg.taus)
    chunk = cfg.sample_chunk or None

    # The MLP fast paths go together: a 'structured' kernel means `models.MLP` params.
    update_method = "structured" if kernel_method == "structured" else "vjp"

    @functools.partial(parallel.with_node_batching, batching=cfg.node_batching)
    def messages(w_bar, x, labels, mask):
        f0 = apply(w_bar, x)
        return f0, jax.nn.one_hot(labels, num_classes, dtype=compute_dtype(f0)) * mask[:, None]

    @functools.partial(parallel.with_node_batching, batching=cfg.node_batching)
    def kernel(w_bar, x, mask):
        return ntk.neighbourhood_kernel(apply, w_bar, x, mask, method=kernel_method, chunk_size=chunk,
                                        jacobian_mode=cfg.jacobian_mode)

    @functools.partial(parallel.with_node_batching, batching=cfg.node_batching)
    def evolve(h, f0, y, mask, eta):
        return ntk.evolve_logits(h, f0, y, mask, eta, taus, **ntk.integrator_options(cfg))

    @functools.partial(parallel.with_node_batching, batching=cfg.node_batching)
    def update(w_bar, x, mask, y, evo, eta):
        deltas = ntk.weight_updates(apply, w_bar, x, mask, evo.residual_sums, eta, method=update_method)
        best, losses = ntk.select_tau(apply, w_bar, x, mask, y, deltas, criterion=cfg.tau_criterion,
                                      evolved_logits=evo.logits, method=update_method)
        return jax.tree.map(lambda w, d: w + d[best], w_bar, deltas), best, losses[best]

    return NodePhases(messages, kernel, evolve, update)


def make_node_step(apply, num_classes: int, cfg, kernel_method: str):
    """The per-node NTK-DFL update (steps 3-9, 11) for one node's neighbourhood."""
    ph = make_node_phases(apply, num_classes, cfg, kernel_method)

    def node_step(w_bar, x, labels, mask, eta):
        """Returns (w_new, tau index, loss, (finite kernel, evolution, update) bools; `spark_jax.guard`)."""
        f0, y = ph.messages(w_bar, x, labels, mask)
        h = ph.kernel(w_bar, x, mask)
        evo = ph.evolve(h, f0, y, mask, eta)
        w_new, best, loss = ph.update(w_bar, x, mask, y, evo, eta)
        return w_new, best, loss, (guard.all_finite(h), guard.all_finite(evo), guard.all_finite(w_new))

    return node_step


def make(config, model: Model, mesh=None) -> Algorithm:
    """NTK-DFL from `config.ntk`; with a 'nodes' `mesh`, each device runs its own nodes (`parallel.node_map`)."""
    cfg = config.ntk
    num_nodes = config.partition.num_nodes
    kernel_method = resolve_kernel_method(cfg.kernel, model.structured)
    node_step = make_node_step(model.apply, model.num_classes, cfg, kernel_method)
    num_taus = len(cfg.taus)
    d = num_params(model.init(jax.random.key(0)))

    def init(key, node_data) -> State:
        del node_data
        return State(params=init_node_params(model, key, num_nodes, config.model.per_node_init))

    def round_fn(state: State, node_data, inputs: RoundInputs):
        eta = learning_rate(cfg.eta0, cfg.decay, inputs.round_index, compute_dtype(state.params, node_data.x))
        w_bar = mix(state.params, inputs.neighbors, inputs.weights)

        def one_node(args, node_data, eta):
            w, nbr, slot_mask = args
            x, labels, mask = gather_neighbourhood(node_data, nbr, slot_mask)
            return node_step(w, x, labels, mask, eta)

        # node_data whole on every device: neighbours may live on other shards.
        new, best, loss, finite = parallel.node_map(one_node, (w_bar, inputs.neighbors, inputs.mask),
                                            batch_size=min(cfg.node_chunk, num_nodes), mesh=mesh,
                                            shared=(node_data, eta))
        hist = jnp.sum(jax.nn.one_hot(best, num_taus, dtype=jnp.int32), axis=0)
        return parallel.constrain_nodes(State(params=new), mesh), {
            "train_loss": jnp.mean(loss), "neighbourhood_loss": jnp.mean(loss), "tau_histogram": hist, "eta": eta,
            **dict(zip(("finite_kernel", "finite_evolution", "finite_update"), finite))}

    def message_bytes(neighbors, mask, counts) -> dict:
        return comm.ntk_message_bytes(neighbors, mask, counts, num_classes=model.num_classes,
                                      jacobian_floats_per_row=model.num_classes * d)

    return Algorithm(name="ntk_dfl", init=init, round=with_matmul_precision(round_fn, config.ntk.matmul_precision),
                     message_bytes=message_bytes)
