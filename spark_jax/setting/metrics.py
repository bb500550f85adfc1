"""What is measured each round (SPEC "Evaluation and accounting").

All functions are jit-able; node parameters have leaves [M, ...].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from spark_jax import parallel


def mean_params(node_params):
    """The aggregated model: uniform mean over the node axis (leaves [...])."""
    return jax.tree.map(lambda p: jnp.mean(p, axis=0), node_params)


def consensus_distance(node_params) -> jax.Array:
    """mean_i ||w_i - mean_j w_j||^2 over all parameters (scalar)."""
    mean = mean_params(node_params)
    sq = jax.tree.map(lambda p, m: jnp.sum((p - m[None]) ** 2, axis=tuple(range(1, p.ndim))), node_params, mean)
    return jnp.mean(sum(jax.tree.leaves(sq)))


def accuracy(apply, params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Fraction of x [n, ...] whose argmax logit equals the label y [n]."""
    return jnp.mean(jnp.argmax(apply(params, x), axis=-1) == y)


def node_accuracies(apply, node_params, x: jax.Array, y: jax.Array, node_chunk: int, mesh=None) -> jax.Array:
    """Per-node accuracy [M] on the same x [n, ...], `node_chunk` nodes at a time; with a 'nodes' mesh
    each device evaluates its own nodes (`parallel.node_map`)."""
    return parallel.node_map(lambda p, x, y: accuracy(apply, p, x, y), node_params, node_chunk, mesh, shared=(x, y))


def accuracy_summary(acc: jax.Array) -> dict:
    """mean, std, min and 10th percentile of per-node accuracies acc [M]."""
    return {
        "node_accuracy_mean": jnp.mean(acc),
        "node_accuracy_std": jnp.std(acc),
        "node_accuracy_min": jnp.min(acc),
        "node_accuracy_p10": jnp.percentile(acc, 10.0),
    }


def make_evaluate(apply, node_chunk: int, mesh=None):
    """A jitted `evaluate(node_params, test_x, test_y, node_x, node_y) -> dict`.

    test_x/test_y: the aggregated model's test set; node_x/node_y: the (possibly
    subset) test set for per-node accuracies; mesh: the run's 'nodes' mesh or None.
    """

    @jax.jit
    def evaluate(node_params, test_x, test_y, node_x, node_y):
        acc = node_accuracies(apply, node_params, node_x, node_y, node_chunk, mesh)
        out = {"test_accuracy": accuracy(apply, mean_params(node_params), test_x, test_y),
               "consensus_distance": consensus_distance(node_params)}
        out.update(accuracy_summary(acc))
        return out

    return evaluate


def top_m_model(apply, node_params, val_x, val_y, m: int, node_chunk: int):
    """NTK-DFL final model: average of the m nodes best on the validation half.

    Returns (params of the averaged top-m model, indices [m] of those nodes).
    """
    acc = node_accuracies(apply, node_params, val_x, val_y, node_chunk)
    best = jnp.argsort(-acc)[:m]
    return mean_params(jax.tree.map(lambda p: p[best], node_params)), best


def rounds_to_target(accuracies, target: float):
    """First 1-based round count at which accuracy >= target, or None."""
    for r, a in enumerate(accuracies):
        if a >= target:
            return r + 1
    return None
