"""Communication accounting in bytes (SPEC "Evaluation and accounting").

float32 = 4 bytes. A directed edge j -> i exists when j is a (non-self)
neighbour of i in the round's graph; over it j sends i its weights (d floats)
plus, for NTK methods, the step-3 message. An algorithm that sends no dense weights
(DisPFL: sparse values and a mask bitmap) counts its whole exchange in its message.
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


def sparse_weight_bytes(neighbors: np.ndarray, mask: np.ndarray, *, nnz: int, num_params: int) -> dict:
    """Bytes of one round of sparse model exchange (DisPFL): over each directed edge the sender's
    `nnz` float32 values on its mask plus the mask as a bitmap of ceil(num_params / 8) bytes.

    Returns 'message_bytes' (the total) and its 'mask_bytes' part; they replace, not add to, the
    dense `weight_bytes` (`Algorithm.sends_dense_weights=False`)."""
    edges = num_directed_edges(neighbors, mask)
    bitmap = -(-num_params // 8)
    return {"message_bytes": edges * (nnz * BYTES_PER_FLOAT + bitmap), "mask_bytes": edges * bitmap}


def incoming_sample_counts(neighbors: np.ndarray, mask: np.ndarray, counts: np.ndarray) -> int:
    """sum over directed edges j -> i (j != i) of n_j: samples sent in one round."""
    own = neighbors == np.arange(neighbors.shape[0])[:, None]
    return int(np.sum(np.where(mask & ~own, np.asarray(counts)[neighbors], 0), dtype=np.int64))


def ntk_message_bytes(neighbors: np.ndarray, mask: np.ndarray, counts: np.ndarray, *, num_classes: int,
                      jacobian_floats_per_row: int) -> dict:
    """Step-3 message bytes of one round (SPEC "Evaluation and accounting").

    Over each directed edge j -> i, j sends n_j rows of: its Jacobian (or
    sketch), `jacobian_floats_per_row` floats (C * d exact, C * k_tot
    sketched); its outputs F_j (C floats); its one-hot labels Y_j (C floats).
    """
    rows = incoming_sample_counts(neighbors, mask, counts)
    jac = rows * jacobian_floats_per_row * BYTES_PER_FLOAT
    other = rows * 2 * num_classes * BYTES_PER_FLOAT
    edges = num_directed_edges(neighbors, mask)
    return {"message_bytes": jac + other, "jacobian_bytes": jac,
            "jacobian_bytes_per_edge": jac / max(edges, 1)}


def human_bytes(n) -> str:
    """1234567 -> '1.23 MB' (decimal units, as the metrics count bytes)."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"
