"""Per-round schedules of SPARK (SPEC "Setting" and "The three stages").

All functions take the round index as a traced int and return traced floats,
so moving between stages never recompiles anything. Stage boundaries are
static Python ints (rounds, 0-based): stage 1 is r < b2, stage 2 is
b2 <= r < b3, stage 3 is r >= b3. The values are float32 unless the caller asks for the
dtype of its parameters (`dtype=`, e.g. float64 under x64: `spark_jax.dtypes.compute_dtype`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from spark_jax.options import RAMPS, stage_boundaries  # noqa: F401  (re-exported)


def distill_weight(round_index: jax.Array, b2: int, b3: int, lambda_max: float, ramp: str = "linear",
                   dtype=jnp.float32) -> jax.Array:
    """lambda_r (a `dtype` scalar): 0 in stage 1, ramps 0 -> lambda_max over stage 2, lambda_max in stage 3."""
    if ramp not in RAMPS:
        raise ValueError(f"ramp={ramp!r} is not one of {RAMPS}")
    r = jnp.asarray(round_index, dtype)
    progress = jnp.clip((r - b2) / max(b3 - b2, 1), 0.0, 1.0)
    if ramp == "cosine":
        progress = 0.5 * (1.0 - jnp.cos(jnp.pi * progress))
    lam = jnp.where(r < b2, 0.0, lambda_max * progress)
    return jnp.where(r >= b3, lambda_max, lam).astype(dtype)


def momentum_beta(round_index: jax.Array, b3: int, beta: float, dtype=jnp.float32) -> jax.Array:
    """beta_r (a `dtype` scalar): 0 before stage 3, beta from it on."""
    return jnp.where(jnp.asarray(round_index) >= b3, jnp.asarray(beta, dtype), 0.0)


def learning_rate(eta0: float, decay: float, round_index: jax.Array, dtype=jnp.float32) -> jax.Array:
    """eta_r = eta_0 * exp(-decay * r) (SPEC "Setting"), computed and returned in `dtype`."""
    return (eta0 * jnp.exp(-decay * jnp.asarray(round_index, dtype))).astype(dtype)


def geometric(lr: float, decay: float, round_index: jax.Array, dtype=jnp.float32) -> jax.Array:
    """lr_r = lr * decay^r in `dtype` (DFedSAM's and DisPFL's per-round learning rate)."""
    return lr * jnp.power(jnp.asarray(decay, dtype), jnp.asarray(round_index).astype(dtype))
