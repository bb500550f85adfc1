"""DisPFL: decentralized sparse training with personalised masks (SPEC "Baselines").

Dai et al., "DisPFL: Towards Communication-Efficient Personalized Federated
Learning via Decentralized Sparse Training", ICML 2022 (reference code:
github.com/rong-dai/DisPFL, `fedml_api/standalone/DisPFL`). Every node k keeps
a binary mask m_k (a pytree like the params, bool leaves [M, ...]) and weights
w_k that are zero off m_k. Round r (0-based) of R = config.rounds:

1. Sparse aggregation on the round's graph (`RoundInputs.neighbors`, `.mask`:
   node k's closed neighbourhood N_k, padding slots inert). Node k receives
   m_j ⊙ w_j and m_j from every j in N_k and sets, per coordinate,
     w_k <- m_k ⊙ (sum_{j in N_k} m_j w_j / sum_{j in N_k} m_j),
   i.e. the uniform mean over the neighbours that hold the coordinate
   (reference `dispfl_api._aggregate_func`), NOT the mixing weights W_r. k itself is in N_k, so every coordinate of m_k
   has a count >= 1; a count of 0 (only possible off m_k) keeps k's own value
   before the final masking, which zeroes it anyway. The message is the mask
   the sender holds now: the reference code instead counts a sender's
   coordinates by the mask its weights were last trained under (so there a
   freshly regrown zero is not averaged in and a freshly pruned value is);
   the two differ only at the coordinates the sender's last mask update moved.
2. Local training on the node's own data: `dfedavg.local_sgd` (shuffled
   masked mini-batches, `local_epochs` epochs) with the reference optimizer,
   PyTorch SGD with coupled weight decay and global-norm clipping to
   `grad_clip` (reference `my_model_trainer.train`: `clip_grad_norm_(.., 10)`),
   lr_r = lr * lr_decay^r; the gradient is masked by m_k first, so weights
   off the mask stay exactly 0 (the reference re-masks the weights after each
   step and clips the dense gradient; with zero weights off the mask the steps
   agree up to that clipping norm).
3. Mask update (RigL-style, reference `fire_mask` / `regrow_mask`), per leaf
   with K active weights: alpha_r = (anneal_factor / 2)(1 + cos(pi r / R)),
   c = ceil(alpha_r K); drop the c active weights of smallest |w|, then grow
   the c inactive ones (after the drop, so just-dropped ones are candidates,
   as in the reference) of largest |g|, g = the dense gradient of the local
   loss at the trained weights on one shuffled batch of `batch_size` rows of
   the node's data (reference `screen_gradients`: one batch). New connections
   start at 0 (RigL); one dropped and grown again keeps its value, so a dense
   leaf (K = its size, e.g. the biases under ERK) never changes. K per leaf
   is fixed for the run; the count c comes from the traced r through rank
   thresholds (stable sorts), so no round recompiles. Growth by gradient is
   the reference code's default (its example scripts pass
   `--dis_gradient_check`, random growth, which is not offered here).

Initial masks: per-leaf densities from the ERK (Erdos-Renyi-kernel)
distribution at overall density `dense_ratio` (`erk_densities`, the
reference `calculate_sparsities` with erk_power_scale 1, on every leaf,
biases included), K = floor(density * size), the K positions drawn uniformly
per node and leaf (`fold_in(fold_in(init_key, MASK_FOLD), node)`), i.e.
personalised masks (reference `--different_initial`); the initial weights are
the shared (or per-node) init of every algorithm times the node's mask.

Defaults (`CONFIG`, its `config.algorithm_kw`; the paper's / its code's): lr 0.1, lr_decay 0.998,
momentum 0, weight decay 5e-4, grad_clip 10, 5 local epochs, dense_ratio 0.5,
anneal_factor 0.5; batch 50 instead of 128: the paper's 128 on ~500 samples
per client is 4 steps per epoch, and 50 keeps 4 steps per epoch (20 local
steps per round) on the ~200 samples per node of the NTK-DFL partition.

State: params (leaves [M, ...], zero off the mask) and masks (bool [M, ...]);
per-node accuracy is that of the sparse personalised model, the aggregated
model is the mean of params as for every algorithm. Bytes: over each directed
edge j -> i, the K_tot = sum K float32 values of m_j ⊙ w_j plus the mask as a
bitmap of ceil(d / 8) bytes (`comm.sparse_weight_bytes`); no dense weights are
sent (`Algorithm.sends_dense_weights=False`). Dtypes follow the params (float32,
or float64 under x64). With a 'nodes' mesh each device trains its own nodes
(`parallel.node_map`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from spark_jax import checks, guard, parallel
from spark_jax.algorithms import schedules
from spark_jax.setting import comm
from spark_jax.algorithms.base import Algorithm, RoundInputs
from spark_jax.algorithms.dfedavg import check_local_training, epoch_batches, local_sgd
from spark_jax.dtypes import compute_dtype
from spark_jax.setting.losses import masked_mean_cross_entropy
from spark_jax.setting.models import Model, init_node_params, num_params

# DisPFL's default keyword arguments (`config.algorithm_kw` of a run with algorithm 'dispfl'):
# the paper's values (and its code's momentum 0 and clip 10), except the batch: the paper's 128 on ~500
# samples per client is 4 steps per epoch, and 50 keeps 4 steps per epoch (20 local steps per round) on
# the ~200 samples per node of the NTK-DFL partition.
CONFIG = dict(
    lr=0.1,  # lr_r = lr * lr_decay^r
    lr_decay=0.998,
    momentum=0.0,  # plain SGD
    weight_decay=5e-4,  # PyTorch-style, coupled
    grad_clip=10.0,  # global-norm clip (0 = off)
    batch_size=50,
    local_epochs=5,
    dense_ratio=0.5,  # overall density of every mask (ERK per layer)
    anneal_factor=0.5,  # drop fraction alpha_r = anneal_factor/2 (1 + cos(pi r / rounds))
)

MASK_FOLD = 0x6D61736B  # init-key fold for the masks ('mask'): beyond any node index of per-node params


@flax.struct.dataclass
class State:
    params: Any  # leaves [M, ...], exactly zero off the mask
    masks: Any  # bool leaves [M, ...], K_l True per node in leaf l


def erk_densities(shapes: Sequence[Sequence[int]], dense_ratio: float, power_scale: float = 1.0) -> list[float]:
    """ERK density per leaf (Evci et al. 2020; DisPFL `calculate_sparsities`).

    density_l = eps * ((sum of dims_l) / size_l)^power_scale, eps chosen so that
    sum_l density_l size_l = dense_ratio * sum_l size_l; a leaf whose density
    would exceed 1 is made dense (density 1, counted in the budget) and eps is
    solved again, until every density is <= 1.
    """
    if not 0.0 < dense_ratio <= 1.0:
        raise ValueError(f"dense_ratio={dense_ratio!r} must be in (0, 1]")
    sizes = [float(np.prod(s)) for s in shapes]
    raw = [(float(np.sum(s)) / n) ** power_scale for s, n in zip(shapes, sizes)]
    dense: set[int] = set()
    while True:
        sparse = [i for i in range(len(sizes)) if i not in dense]
        if not sparse:
            return [1.0] * len(sizes)
        rhs = sum(sizes[i] * dense_ratio for i in sparse) - sum(sizes[i] * (1 - dense_ratio) for i in dense)
        eps = rhs / sum(raw[i] * sizes[i] for i in sparse)
        top = max(raw[i] for i in sparse)
        if top * eps <= 1.0:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(sizes))]
        dense |= {i for i in sparse if raw[i] == top}


def erk_counts(params, dense_ratio: float) -> list[int]:
    """Active weights K_l = floor(density_l * size_l) per leaf of one node's `params` (leaf order)."""
    leaves = jax.tree.leaves(params)
    dens = erk_densities([np.shape(a) for a in leaves], dense_ratio)
    return [min(int(math.floor(p * np.size(a))), int(np.size(a))) for p, a in zip(dens, leaves)]


def _ranks(order: jax.Array) -> jax.Array:
    """rank[i] = position of i in the permutation `order` [n]."""
    return jnp.zeros(order.shape, jnp.int32).at[order].set(jnp.arange(order.shape[0], dtype=jnp.int32))


def random_mask(key: jax.Array, shape: Sequence[int], count: int) -> jax.Array:
    """bool `shape` with exactly `count` True entries at uniformly random positions (drawn in float32,
    so a float64 run has the masks of its float32 twin)."""
    n = int(np.prod(shape))
    rank = _ranks(jnp.argsort(jax.random.uniform(key, (n,), jnp.float32)))
    return (rank < count).reshape(shape)


def init_masks(key: jax.Array, params, counts: Sequence[int], num_nodes: int):
    """Masks of all nodes, bool leaves [M, ...]: node i's leaf l from fold_in(fold_in(key, i), l)."""
    leaves, treedef = jax.tree.flatten(params)

    def one_node(i):
        k = jax.random.fold_in(key, i)
        return [random_mask(jax.random.fold_in(k, l), np.shape(a), c) for l, (a, c) in enumerate(zip(leaves, counts))]

    return jax.tree.unflatten(treedef, jax.vmap(one_node)(jnp.arange(num_nodes)))


def drop_fraction(round_index, rounds: int, anneal_factor: float, dtype=jnp.float32) -> jax.Array:
    """alpha_r = (anneal_factor / 2) (1 + cos(pi r / R)) for the (traced) round index r, R = `rounds`."""
    r = jnp.asarray(round_index).astype(dtype)
    return jnp.asarray(anneal_factor / 2, dtype) * (1 + jnp.cos(jnp.asarray(math.pi, dtype) * r / rounds))


def prune_and_regrow(mask: jax.Array, weights: jax.Array, grads: jax.Array, num_change: jax.Array) -> jax.Array:
    """One leaf's mask update (one node): drop `num_change` active entries of smallest |weights|,
    then grow as many inactive ones (just-dropped included) of largest |grads|.

    mask bool [...], weights, grads [...] (same shape), num_change int32 [] (traced, <= active
    count). Ties go to the lower flat index; a non-finite gradient scores 0. The number of True
    entries is unchanged.
    """
    shape = mask.shape
    m = mask.reshape(-1)
    w = jnp.abs(weights.reshape(-1))
    g = jnp.nan_to_num(jnp.abs(grads.reshape(-1)), nan=0.0, posinf=0.0)
    # lexsort: last key primary. Active entries first, by |w| ascending; inactive after, whatever |w|.
    kept = m & (_ranks(jnp.lexsort((w, (~m).astype(jnp.int8)))) >= num_change)
    # Candidates (not kept) first, by |g| descending; kept entries after.
    grown = ~kept & (_ranks(jnp.lexsort((-g, kept.astype(jnp.int8)))) < num_change)
    return (kept | grown).reshape(shape)


def update_masks(masks, weights, grads, counts: Sequence[int], alpha: jax.Array):
    """Every leaf of one node: c_l = ceil(alpha K_l) changes (`prune_and_regrow`); dense leaves kept."""
    m_leaves, treedef = jax.tree.flatten(masks)
    out = []
    for m, w, g, k in zip(m_leaves, jax.tree.leaves(weights), jax.tree.leaves(grads), counts):
        if k == m.size:  # dense: every dropped entry is the only candidate to grow back
            out.append(m)
            continue
        c = jnp.minimum(jnp.ceil(alpha * k).astype(jnp.int32), k)
        out.append(prune_and_regrow(m, w, g, c))
    return jax.tree.unflatten(treedef, out)


def sparse_aggregate(params, masks, neighbors: jax.Array, slot_mask: jax.Array):
    """Step 1: w_k <- m_k ⊙ (sum_s real_s m_{j_s} w_{j_s} / sum_s real_s m_{j_s}), j_s = neighbors[k, s].

    params leaves [M, ...] (any float dtype), masks bool leaves [M, ...]; neighbors int32 [M, S],
    slot_mask bool [M, S] (padding slots count nothing). Where the count is 0, k's own value is
    kept before masking. Loops over the S slots like `base.mix` (no [M, S, ...] stack).
    """

    def agg_leaf(w, m):
        expand = lambda v: v.reshape((-1,) + (1,) * (w.ndim - 1))
        total = jnp.zeros(w.shape, w.dtype)
        count = jnp.zeros(w.shape, w.dtype)
        for s in range(neighbors.shape[1]):
            has = m[neighbors[:, s]] & expand(slot_mask[:, s])
            total = total + jnp.where(has, w[neighbors[:, s]], 0)
            count = count + has.astype(w.dtype)
        avg = jnp.where(count > 0, total / jnp.maximum(count, 1), w)
        return jnp.where(m, avg, 0).astype(w.dtype)

    return jax.tree.map(agg_leaf, params, masks)


def masked_sgd(masks, lr, momentum: float, weight_decay: float, grad_clip: float) -> optax.GradientTransformation:
    """Gradient masked by `masks`, clipped to global norm `grad_clip` (0 = off), coupled weight decay,
    SGD (heavy-ball `momentum`, 0 = none): PyTorch `SGD(lr, momentum, weight_decay)` after
    `clip_grad_norm_`, on the sparse network's active weights only."""
    keep = optax.stateless(lambda u, p: jax.tree.map(lambda a, m: jnp.where(m, a, jnp.zeros_like(a)), u, masks))
    parts = [keep] + ([optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else [])
    parts += [optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=momentum or None)]
    return optax.chain(*parts)


def screen_gradient(apply, params, x, y, mask, key, batch_size: int):
    """Dense gradient of the mean CE on the first batch of a fresh shuffle of the node's real rows
    (x [n_max, ...], y, mask [n_max]); padding rows (and slots past n_max) count nothing."""
    idx = epoch_batches(key, mask, batch_size)[0]
    valid = mask[idx] & (jnp.arange(batch_size) < mask.shape[0])
    return jax.grad(lambda p: masked_mean_cross_entropy(apply(p, x[idx]), y[idx], valid))(params)


def apply_masks(params, masks):
    """m ⊙ w per leaf, in the weights' dtype (exact zeros off the mask)."""
    return jax.tree.map(lambda w, m: jnp.where(m, w, 0).astype(w.dtype), params, masks)


def make(config, model: Model, mesh=None) -> Algorithm:
    """DisPFL from `config.algorithm_kw` (lr, lr_decay, momentum, weight_decay, grad_clip, batch_size,
    local_epochs, dense_ratio, anneal_factor); R = config.rounds sets the drop schedule."""
    cfg = config.algorithm_kw
    num_nodes, rounds = config.partition.num_nodes, config.rounds
    one = jax.eval_shape(model.init, jax.random.key(0))
    counts = erk_counts(one, cfg.dense_ratio)
    d = num_params(one)

    draw_masks = jax.jit(lambda key: init_masks(jax.random.fold_in(key, MASK_FOLD), one, counts, num_nodes))

    def init(key, node_data) -> State:
        del node_data
        params = init_node_params(model, key, num_nodes, config.model.per_node_init)
        masks = draw_masks(key)
        return State(params=apply_masks(params, masks), masks=masks)

    def node_round(args, round_index):
        params, masks, x, y, mask, key = args
        dtype = compute_dtype(params)
        lr = schedules.geometric(cfg.lr, cfg.lr_decay, round_index, dtype)
        optimizer = masked_sgd(masks, lr, cfg.momentum, cfg.weight_decay, cfg.grad_clip)
        train_key, grad_key = jax.random.split(key)
        trained, loss = local_sgd(model.apply, optimizer, params, x, y, mask, train_key, cfg.local_epochs,
                                  cfg.batch_size)
        grads = screen_gradient(model.apply, trained, x, y, mask, grad_key, cfg.batch_size)
        new_masks = update_masks(masks, trained, grads, counts, drop_fraction(round_index, rounds,
                                                                              cfg.anneal_factor, dtype))
        return apply_masks(trained, new_masks), new_masks, loss, guard.all_finite(trained)

    def round_fn(state: State, node_data, inputs: RoundInputs):
        params = sparse_aggregate(state.params, state.masks, inputs.neighbors, inputs.mask)
        node_keys = jax.vmap(lambda i: jax.random.fold_in(inputs.key, i))(jnp.arange(num_nodes))
        r = jnp.asarray(inputs.round_index, jnp.int32)
        params, masks, losses, finite = parallel.node_map(
            node_round, (params, state.masks, node_data.x, node_data.y, node_data.mask, node_keys),
            batch_size=0, mesh=mesh, shared=(r,))
        alpha = drop_fraction(r, rounds, cfg.anneal_factor, compute_dtype(params))
        return parallel.constrain_nodes(State(params=params, masks=masks), mesh), {
            "train_loss": jnp.mean(losses), "drop_fraction": alpha, "finite_update": finite}

    def message_bytes(neighbors, mask, counts_per_node) -> dict:
        del counts_per_node
        return comm.sparse_weight_bytes(neighbors, mask, nnz=sum(counts), num_params=d)

    return Algorithm(name="dispfl", init=init, round=round_fn, message_bytes=message_bytes,
                     sends_dense_weights=False)


def check_config(config) -> None:
    """`config.algorithm_kw`: the local training options, then grad_clip >= 0, dense_ratio in (0, 1] and
    anneal_factor in [0, 1]."""
    dp = config.algorithm_kw
    check_local_training(config)
    checks.number(dp.grad_clip, "algorithm_kw.grad_clip", 0.0, why=" (0 = no clipping)")
    checks.number(dp.dense_ratio, "algorithm_kw.dense_ratio", 0.0, 1.0, lo_open=True, why=" (overall mask density)")
    checks.number(dp.anneal_factor, "algorithm_kw.anneal_factor", 0.0, 1.0, why=" (the drop fraction of round 0)")
