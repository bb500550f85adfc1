"""Communication accounting in bytes (SPEC "Evaluation and accounting").

float32 = 4 bytes. A directed edge j -> i exists when j is a (non-self)
neighbour of i in the round's graph; over it j sends i its weights (d floats)
plus, for NTK methods, the step-3 message.
"""

from __future__ import annotations

import numpy as np

BYTES_PER_FLOAT = 4


def num_directed_edges(neighbors: np.ndarray, mask: np.ndarray) -> int:
    """Number of (i, j) with j a real neighbour of i, j != i; inputs [M, S]."""
    own = neighbors == np.arange(neighbors.shape[0])[:, None]
    return int(np.sum(mask & ~own))


def weight_bytes(neighbors: np.ndarray, mask: np.ndarray, num_params: int) -> int:
    """Bytes of model averaging in one round: d floats per directed edge."""
    return num_directed_edges(neighbors, mask) * num_params * BYTES_PER_FLOAT
