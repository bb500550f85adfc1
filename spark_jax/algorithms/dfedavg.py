"""DFedAvg: local SGD on each node's own data, then mixing (SPEC "Baselines").

Defaults: lr 0.1, batch 25, 20 local epochs. Nodes are a vmapped axis; one
jitted round. Unequal n_i are handled exactly: each epoch a node shuffles its
real rows to the front (padding last), so its mini-batches are those of a
shuffled loader over its n_i samples; padding rows are masked out of the loss,
and a batch of padding only is a zero-gradient no-op step. Dtypes follow the parameters (float32, or
float64 under x64); the shuffles are drawn in float32 either way, so a float64 run sees the batches of
its float32 twin.
"""

from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from spark_jax import config_options, guard, parallel
from spark_jax.algorithms.base import Algorithm, RoundInputs, mix
from spark_jax.dtypes import compute_dtype
from spark_jax.setting.losses import masked_mean_cross_entropy
from spark_jax.setting.models import Model, init_node_params

# DFedAvg's default keyword arguments (`config.algorithm_kw` of a run with algorithm 'dfedavg').
CONFIG = dict(lr=0.1, batch_size=25, local_epochs=20)


@flax.struct.dataclass
class State:
    params: Any  # leaves [M, ...]


def epoch_batches(key: jax.Array, mask: jax.Array, batch_size: int) -> jax.Array:
    """Row indices [num_batches, batch_size] of one shuffled epoch.

    mask [n_max]: real rows are shuffled to the front, padding rows go last, and
    the index array is extended with padding-row copies up to a whole number
    of batches (those slots are masked out by the caller).
    """
    n_max = mask.shape[0]
    num_batches = math.ceil(n_max / batch_size)
    sort_key = jnp.where(mask, jax.random.uniform(key, (n_max,), jnp.float32), 2.0)
    order = jnp.argsort(sort_key)
    pad = num_batches * batch_size - n_max
    order = jnp.concatenate([order, jnp.full((pad,), order[-1])]) if pad else order
    return order.reshape(num_batches, batch_size)


def local_sgd(apply, optimizer, params, x, y, mask, key, local_epochs: int, batch_size: int,
              value_and_grad=None):
    """One node's local training (SPEC "Baselines", DFedAvg).

    x [n_max, ...], y [n_max], mask [n_max]. Returns (params, mean loss of the
    last epoch over its real batches). The optimizer state starts fresh
    (`optimizer.init`) every call, i.e. every round.

    value_and_grad: (f, p) -> (f(p), gradient to feed the optimizer) for the
    batch loss f; default `jax.value_and_grad(f)(p)` (DFedSAM passes its SAM
    gradient). A batch made of padding only leaves params and optimizer state
    untouched (for plain SGD its zero gradient is a no-op anyway; a momentum or
    weight-decay optimizer would otherwise still move).
    """
    if value_and_grad is None:
        value_and_grad = lambda f, p: jax.value_and_grad(f)(p)
    n_max = mask.shape[0]
    num_batches = math.ceil(n_max / batch_size)
    slot_valid = (jnp.arange(num_batches * batch_size) < n_max).reshape(num_batches, batch_size)

    def loss_fn(p, idx, valid):
        return masked_mean_cross_entropy(apply(p, x[idx]), y[idx], mask[idx] & valid)

    def step(carry, batch):
        p, opt_state = carry
        idx, valid = batch
        loss, grads = value_and_grad(lambda q: loss_fn(q, idx, valid), p)
        updates, new_opt_state = optimizer.update(grads, opt_state, p)
        has_rows = jnp.any(mask[idx] & valid)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(has_rows, a, b), new, old)
        return (keep(optax.apply_updates(p, updates), p), keep(new_opt_state, opt_state)), (loss, has_rows)

    def epoch(carry, ekey):
        carry, (losses, has_rows) = jax.lax.scan(step, carry, (epoch_batches(ekey, mask, batch_size), slot_valid))
        return carry, jnp.sum(losses) / jnp.maximum(jnp.sum(has_rows), 1)

    keys = jax.random.split(key, local_epochs)
    (params, _), epoch_losses = jax.lax.scan(epoch, (params, optimizer.init(params)), keys)
    return params, epoch_losses[-1]


def make_local_training(name: str, config, model: Model, mesh, make_optimizer, value_and_grad=None) -> Algorithm:
    """A local-training baseline `name` from `config.algorithm_kw` (batch_size, local_epochs).

    Each round every node runs `local_sgd` with `make_optimizer(round_index, dtype)` (an
    optax optimizer built inside the traced round, so a decaying lr compiles
    once; dtype: the params' compute dtype, for a traced lr), then the weights
    are mixed. With a 'nodes' `mesh`, each device trains its own nodes
    (`parallel.node_map`).
    """
    cfg = config.algorithm_kw
    num_nodes = config.partition.num_nodes

    def init(key, node_data) -> State:
        del node_data
        return State(params=init_node_params(model, key, num_nodes, config.model.per_node_init))

    def round_fn(state: State, node_data, inputs: RoundInputs):
        node_keys = jax.vmap(lambda i: jax.random.fold_in(inputs.key, i))(jnp.arange(num_nodes))

        def train(args, round_index):
            optimizer = make_optimizer(round_index, compute_dtype(args[0]))
            return local_sgd(model.apply, optimizer, *args, cfg.local_epochs, cfg.batch_size,
                             value_and_grad=value_and_grad)

        # batch_size=0: one vmap over all (local) nodes; r comes through `shared`.
        params, losses = parallel.node_map(train, (state.params, node_data.x, node_data.y, node_data.mask,
                                                   node_keys), batch_size=0, mesh=mesh,
                                           shared=(jnp.asarray(inputs.round_index, jnp.int32),))
        finite = guard.nodes_finite(params)  # before mixing spreads a NaN to the neighbours
        params = mix(params, inputs.neighbors, inputs.weights)
        return parallel.constrain_nodes(State(params=params), mesh), {"train_loss": jnp.mean(losses),
                                                                      "finite_update": finite}

    return Algorithm(name=name, init=init, round=round_fn)


def make(config, model: Model, mesh=None) -> Algorithm:
    """DFedAvg from `config.algorithm_kw` (lr, batch_size, local_epochs)."""
    lr = config.algorithm_kw.lr
    return make_local_training("dfedavg", config, model, mesh, lambda r, dtype: optax.sgd(lr))


def check_local_training(config) -> None:
    """A local-training baseline's check: `config.algorithm_kw` as `LocalTrainingOptions`."""
    config_options.local_training_options(config.algorithm_kw)
