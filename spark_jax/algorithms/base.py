"""The algorithm interface: a pair of pure functions (STYLE.md "Shape of the code").

An algorithm is `Algorithm(init, round)`:

  init(key, node_data) -> state          state.params leaves are [M, ...]
  round(state, node_data, inputs) -> (state, metrics)

`round` is jitted once per run. Everything that changes per round (the graph,
the round index, keys, learning rate) arrives in `RoundInputs` as arrays, and
the node data is an argument (not a closed-over constant), so no round ever
recompiles.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from spark_jax.options import MATMUL_PRECISIONS  # the option list, defined once


class RoundInputs(NamedTuple):
    """Per-round arguments of `Algorithm.round` (all arrays; fixed shapes).

    neighbors: int32 [M, S] closed neighbourhood, slot 0 = the node itself;
      padding slots hold the node's own index.
    weights: float32 [M, S] mixing weights W_r[i, neighbors[i, s]] (0 on padding); float64 for a
      float64 run (`topology.padded_graph(..., dtype=np.float64)`), cast to each leaf's dtype in `mix`.
    mask: bool [M, S] real (non-padding) slots.
    round_index: int32 [] the round r (0-based).
    key: PRNG key for this round (the `train` stream folded with r); read by the local-training
      baselines (mini-batch shuffles), None for the NTK rounds, which draw nothing per node.
    hyperparams: None, or a dict overriding the round's scheduled values ('eta', 'lambda', 'beta' of the
      NTK rounds, `ntk_round.HYPERPARAMETERS`): scalars, cast to the round's dtype. Giving a dict where
      there was None (or other keys) compiles the round once more; changing its values does not.
    """

    neighbors: jax.Array
    weights: jax.Array
    mask: jax.Array
    round_index: jax.Array
    key: jax.Array | None = None
    hyperparams: dict | None = None


class Algorithm(NamedTuple):
    """init(key, node_data) -> state; round(state, node_data, inputs) -> (state, metrics).

    `state` must have a `params` attribute whose leaves carry a leading node
    axis; `metrics` is a dict of arrays (scalars or small per-node vectors).
    """

    name: str
    init: Callable[..., Any]
    round: Callable[..., Any]
    # Host-side accounting of the step-3 messages, beyond the averaging weights:
    # message_bytes(neighbors [M, S], mask [M, S], counts [M]) -> dict of byte
    # counts for the round (keys 'message_bytes' and e.g. 'jacobian_bytes').
    message_bytes: Callable[..., dict] | None = None
    # False: no dense weights travel (DisPFL's sparse models); the round's bytes are then its
    # message_bytes only and 'weight_bytes' is 0 (`spark_jax.runner.experiment.round_bytes`).
    sends_dense_weights: bool = True



def with_matmul_precision(fn: Callable, precision: str) -> Callable:
    """`fn` traced under `jax.default_matmul_precision(precision)`.

    'float32': every float32 product in full float32, on every backend (on
    NVIDIA GPUs the default may be TF32, 10-bit mantissa: too coarse for the
    1e-4 evolution tolerance, SPEC step 7); 'tensorfloat32' / 'bfloat16':
    faster, coarser products; 'default': the backend's choice. No effect on
    CPU, whose float32 products are always full precision.
    """
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"unknown matmul precision {precision!r}; choose one of {MATMUL_PRECISIONS}")
    if precision == "default":
        return fn

    def with_precision(*args, **kwargs):
        with jax.default_matmul_precision(precision):
            return fn(*args, **kwargs)

    return with_precision


def mix(tree, neighbors: jax.Array, weights: jax.Array):
    """SPEC step 2: w̄_i = sum_s weights[i, s] * w[neighbors[i, s]].

    tree leaves [M, ...]; neighbors, weights [M, S] (weights cast to each leaf's dtype: float32 or
    float64, exact for float64 weights and leaves). Loops over the S slots
    (static, small), gathering one [M, ...] array per slot, so the [M, S, ...]
    stack of neighbour weights is never built.
    """

    def mix_leaf(leaf):
        out = jnp.zeros(leaf.shape, leaf.dtype)
        for s in range(neighbors.shape[1]):
            w = weights[:, s].astype(leaf.dtype).reshape((-1,) + (1,) * (leaf.ndim - 1))
            out = out + w * leaf[neighbors[:, s]]
        return out

    return jax.tree.map(mix_leaf, tree)
