"""Masked losses shared by the algorithms (padding rows contribute nothing)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def masked_mean_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean softmax CE over real rows: logits [n, C], integer labels [n], mask [n].

    A batch with no real row gives 0 (and a zero gradient).
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    ce = jnp.where(mask, ce, 0.0)
    return jnp.sum(ce) / jnp.maximum(jnp.sum(mask), 1)
