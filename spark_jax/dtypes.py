"""The floating dtype the maths runs in: it follows the parameters and inputs, never a global flag.

Every NTK step (SPEC steps 2-11: mixing, Jacobians, kernels, evolution, residual sums, schedules,
sketches, updates, losses) computes in `compute_dtype(...)` of its floating inputs: float32 (the
default, today's arithmetic bit for bit) unless an input is float64, which needs
`jax.config.update("jax_enable_x64", True)` or the `jax.enable_x64(True)` context and float64
parameters / data (flax initialises float32 parameters even then: cast them, e.g.
`jax.tree.map(lambda a: a.astype(jnp.float64), params)`). Lower precisions (bfloat16, float16) are
promoted to float32, as the float32-only code did. Integer and bool arrays are never touched. Host-side
formats (data files, byte accounting per SPEC: 4 bytes a float) stay float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def compute_dtype(*trees) -> np.dtype:
    """float32 promoted with the dtype of every floating leaf of `trees` (arrays, pytrees, abstract
    `jax.ShapeDtypeStruct`s; None, Python scalars and non-floating leaves are ignored).

    float64 leaves count only where x64 is enabled (they are float32 arrays otherwise)."""
    dtype = np.dtype(np.float32)
    for leaf in jax.tree.leaves(trees):
        dt = getattr(leaf, "dtype", None)
        if dt is not None and jnp.issubdtype(dt, jnp.floating):
            dtype = jnp.promote_types(dtype, jax.dtypes.canonicalize_dtype(dt))
    return np.dtype(dtype)
