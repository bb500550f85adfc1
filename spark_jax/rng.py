"""Named PRNG streams derived from one seed (STYLE.md "Randomness").

`config.seed` gives one root key; each stream is `fold_in(root, stream_id)`
with a fixed id per name, so adding or changing the use of one stream never
shifts another's draws. Per round use `fold_in(stream, round)`, per node
`fold_in(key, node)`.
"""

from __future__ import annotations

import jax
import numpy as np

# Fixed ids: never renumber (that would change every published run).
STREAM_IDS = {
    "data": 0,
    "init": 1,
    "topology": 2,
    "sketch": 3,
    "train": 4,
    "eval": 5,
}


def stream_key(seed: int, name: str) -> jax.Array:
    """Returns the PRNG key of stream `name` for run seed `seed`."""
    if name not in STREAM_IDS:
        raise KeyError(f"unknown PRNG stream {name!r}; known: {sorted(STREAM_IDS)}")
    return jax.random.fold_in(jax.random.key(seed), STREAM_IDS[name])


def numpy_rng(key: jax.Array, *fold: int) -> np.random.Generator:
    """A NumPy generator seeded from a JAX key (optionally folded with ints).

    Host-side draws (partitions, graphs) use this so that they too come from
    the named streams.
    """
    for f in fold:
        key = jax.random.fold_in(key, f)
    words = np.asarray(jax.random.key_data(key)).astype(np.uint64).ravel()
    return np.random.default_rng([int(w) for w in words])
