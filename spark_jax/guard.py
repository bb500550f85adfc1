"""The NaN/Inf guard: per-node finiteness flags, checked on the host after every round.

Round functions return small bool arrays [M] in their metrics dict, one per
phase, True where node i's values were all finite:

  finite_kernel      the neighbourhood kernel H (SPEC step 5; NTK methods)
  finite_evolution   the evolved outputs F(s_t) and residual sums (step 7)
  finite_update      the chosen weight update (steps 8-9), or for the local
                     baselines the locally trained weights before mixing
  finite_state       every leaf of the committed state (parameters, velocity),
                     added by the runner (`spark_jax.runner.experiment`)

`check` names the first phase (in that order) that failed, so a NaN is traced
to where it was born rather than to the neighbours mixing spread it to. The
flags are stripped from the metrics before they are written (`split_flags`).
`check_record` then checks every number the round would write (its
metrics.jsonl line: losses, consensus distance, accuracies, byte counts), so
no round with a NaN/Inf anywhere is committed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

PREFIX = "finite_"
PHASES = (("finite_kernel", "kernel"), ("finite_evolution", "evolved outputs"),
          ("finite_update", "weight update"), ("finite_state", "parameters/state"))


class NonFiniteError(RuntimeError):
    """A round produced NaN/Inf; the message names the round, the nodes and the phase."""


def all_finite(tree) -> jax.Array:
    """bool []: every entry of every leaf of `tree` is finite (one node's values)."""
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves])) if leaves else jnp.bool_(True)


def nodes_finite(tree) -> jax.Array:
    """bool [M]: node i's entries of every leaf (leaves [M, ...]) are all finite."""
    leaves = jax.tree.leaves(tree)
    per_leaf = [jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1) for leaf in leaves]
    return jnp.all(jnp.stack(per_leaf), axis=0)


def split_flags(metrics: dict) -> tuple[dict, dict]:
    """(metrics without the finite_* flags, the flags as NumPy bool arrays [M])."""
    flags = {k: np.asarray(v, bool) for k, v in metrics.items() if k.startswith(PREFIX)}
    return {k: v for k, v in metrics.items() if not k.startswith(PREFIX)}, flags


def check(flags: dict, round_number: int, max_nodes: int = 5) -> None:
    """Raises NonFiniteError for the first phase with a non-finite node in round `round_number` (1-based)."""
    known = dict(PHASES)
    order = [k for k, _ in PHASES] + sorted(k for k in flags if k not in known)
    for key in order:
        phase = known.get(key, key[len(PREFIX):])
        if key in flags and not flags[key].all():
            bad = np.flatnonzero(~flags[key])
            shown = ", ".join(map(str, bad[:max_nodes])) + (", ..." if len(bad) > max_nodes else "")
            raise NonFiniteError(f"round {round_number}: non-finite {phase} at node(s) {shown} "
                                 f"({len(bad)} of {flags[key].size} nodes)")


def nonfinite_values(record, prefix: str = "") -> list[tuple[str, float]]:
    """(dotted key, value) of every non-finite number in a (nested) JSON-able record."""
    if isinstance(record, dict):
        return [bad for k, v in record.items() for bad in nonfinite_values(v, f"{prefix}{k}.")]
    if isinstance(record, (list, tuple)):
        return [bad for i, v in enumerate(record) for bad in nonfinite_values(v, f"{prefix}{i}.")]
    if isinstance(record, (float, np.floating)) and not np.isfinite(record):
        return [(prefix.rstrip("."), float(record))]
    return []


def check_record(record: dict, round_number: int, max_values: int = 5) -> None:
    """Raises NonFiniteError naming the round and the metrics when any value of `record` is NaN/Inf."""
    bad = nonfinite_values(record)
    if bad:
        shown = ", ".join(f"{k}={v}" for k, v in bad[:max_values]) + (", ..." if len(bad) > max_values else "")
        raise NonFiniteError(f"round {round_number}: non-finite metrics ({shown})")
