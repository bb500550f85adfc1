"""The table that drives the algorithm contract: one row per setting, every registered algorithm at least once.

Used by `tests/test_algorithm_contract.py` (one device) and `tests/contract_mesh_check.py` (the node
axis over 2 simulated devices, in a subprocess). Every registered algorithm gets a row with its
defaults (`algorithms.available()`), so a new algorithm is under the contract as soon as its
`register` line exists; add rows here only for further settings of it.
"""

import jax
import numpy as np

from spark_jax import algorithms
from spark_jax.lab.sweep_grid import set_field
from spark_jax.setting.topology import TopologyStream
from tests.conftest import NTK_COUNTS, ntk_config

ROUNDS = 3
SPARK = {"algorithm": "spark", "algorithm_kw.sketch.k": 8, "algorithm_kw.stages.unit": "round",
         "algorithm_kw.stages.boundaries": (1, 2)}

# The further SPARK rows vary its messages, targets and commit, not the evolution: they integrate with
# Euler (the default 'imex', whose program takes ~5x longer to compile, runs in the ntk_dfl and spark_v1 rows).
EULER = {"algorithm_kw.evolution.integrator": "euler"}
# Further settings, name -> dotted config overrides (SPARK's parts at a sketch size the test MLP allows).
SETTINGS = {
    "spark_v1": SPARK,
    "spark_v2": {**SPARK, **EULER, "algorithm_kw.sketch.enabled": False},
    "spark_own_exact_teacher_neighbors_velocity_mixed": {
        **SPARK, **EULER, "algorithm_kw.sketch.update_mode": "own_exact", "algorithm_kw.distill.teacher": "neighbors",
        "algorithm_kw.momentum.velocity": "mixed"},
    "spark_roundtrip_fixed_P": {**SPARK, **EULER, "algorithm_kw.sketch.update_mode": "roundtrip",
                                "algorithm_kw.sketch.redraw": False},
}
# Every registered algorithm with its defaults, unless further settings cover it; then those settings.
CASES = {
    **{name: {"algorithm": name} for name in algorithms.available()
       if name not in {row["algorithm"] for row in SETTINGS.values()}},
    **SETTINGS,
}


def case_config(case: str):
    """The run config of row `case`: six nodes of `conftest.NTK_COUNTS` samples, the imex integrator
    (unless the row says otherwise), `ROUNDS` rounds, local-training algorithms with one short epoch of
    small batches (the contract, not the training)."""
    c = ntk_config(integrator="imex")
    c.rounds = ROUNDS
    for path, value in sorted(CASES[case].items(), key=lambda o: o[0] != "algorithm"):  # the algorithm first
        set_field(c, path, value)
    if {"local_epochs", "batch_size"} <= set(c.algorithm_kw.keys()):
        c.algorithm_kw.local_epochs, c.algorithm_kw.batch_size = 1, 4
    return c


def redrawn_graphs():
    """`ROUNDS` padded graphs of a dynamic 3-regular topology on the six nodes (re-drawn every round)."""
    stream = TopologyStream("regular", len(NTK_COUNTS), degree=3, dynamic=True,
                            seed_rng_fn=lambda r: np.random.default_rng(r))
    return [stream.graph(r) for r in range(ROUNDS)]


def flat_rounds(case: str, states, metrics) -> dict[str, np.ndarray]:
    """{'CASE/state|metrics/ROUND/LEAF': array} of per-round host states and metrics (for an .npz)."""
    out = {}
    for kind, per_round in (("state", states), ("metrics", metrics)):
        for r, tree in enumerate(per_round):
            for i, leaf in enumerate(jax.tree.leaves(tree)):
                out[f"{case}/{kind}/{r}/{i}"] = np.asarray(leaf)
    return out
