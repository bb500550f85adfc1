"""Sweep presets: named override sets, crossed with `--sweep` axes and seeds.

Each preset maps a setting name (the run's directory under the sweep) to the
config paths it overrides (`algorithm` first: it switches the keyword arguments
too, `algorithms.with_algorithm`). Add a preset here as data.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Preset:
    """Named override sets; each setting maps config paths to typed values."""

    description: str
    settings: dict[str, dict[str, Any]]


# More presets (e.g. a method comparison) are added here as data.
PRESETS: dict[str, Preset] = {
    "spark_ablations": Preset(
        description="SPARK with each of sketch / distillation / momentum turned off, and all three (= NTK-DFL)",
        settings={  # SPARK on any base config (from an NTK-DFL one it keeps taus, evolution, compute)
            "spark": {"algorithm": "spark"},
            "no_sketch": {"algorithm": "spark", "algorithm_kw.sketch.enabled": False},
            "no_distill": {"algorithm": "spark", "algorithm_kw.distill.lambda_max": 0.0},
            "no_momentum": {"algorithm": "spark", "algorithm_kw.momentum.beta": 0.0},
            "ntk_dfl": {"algorithm": "spark", "algorithm_kw.sketch.enabled": False,
                        "algorithm_kw.distill.lambda_max": 0.0, "algorithm_kw.momentum.beta": 0.0},
        }),
}

PRESETS["device_slice"] = Preset(
    description="the GPU suite's study slice (benchmarks/device_suite.py): NTK-DFL, SPARK (SPEC defaults), "
                "exact-Jacobian SPARK (v2 reading) and DFedAvgM on the same partition, graphs and evaluation",
    settings={"ntk_dfl": {"algorithm": "ntk_dfl"}, "spark": {"algorithm": "spark"},
              "spark_exact": {"algorithm": "spark", "algorithm_kw.sketch.enabled": False},
              "dfedavgm": {"algorithm": "dfedavgm"}})

COMPARE_METHODS = ("spark", "ntk_dfl", "dfedavg", "dfedavgm", "dpsgd", "dfedsam", "dispfl")


def _comparison_settings(alphas, topologies) -> dict[str, dict[str, Any]]:
    """method x alpha x topology, each a named override set (SPEC "Baselines")."""
    return {f"{method},alpha={alpha},{topology}": {"algorithm": method, "partition.alpha": alpha,
                                                   "topology.kind": topology}
            for method in COMPARE_METHODS for alpha in alphas for topology in topologies}


PRESETS["compare_fmnist"] = Preset(
    description="SPARK, NTK-DFL, DFedAvg, DFedAvgM, D-PSGD, DFedSAM, DisPFL x alpha {0.1, 0.3, 0.5} x "
                "{dynamic 5-regular, ring} on the same partitions, graphs and evaluation",
    settings=_comparison_settings((0.1, 0.3, 0.5), ("regular", "ring")))


# The SPARK readings (docs/RESULTS.md): one row per reading of the paper's open choices (SPEC "v1/v2").
_SPARK = {"algorithm": "spark"}  # every spark_* row runs SPARK, whatever the base config
_V2 = {**_SPARK, "algorithm_kw.sketch.enabled": False}  # exact Jacobians: distillation + momentum (paper v2)
READINGS: dict[str, dict[str, Any]] = {
    "ntk_dfl": {"algorithm": "ntk_dfl"},
    "spark_v2": {**_V2},
    "spark_v2_no_momentum": {**_V2, "algorithm_kw.momentum.beta": 0.0},
    "spark_v2_no_distill": {**_V2, "algorithm_kw.distill.lambda_max": 0.0},
    "spark_v1": {**_SPARK},  # SPEC defaults: k = 512 per layer, back-projection, P redrawn every round
    "spark_v1_fixed_P": {**_SPARK, "algorithm_kw.sketch.redraw": False},
    "spark_v1_own_exact": {**_SPARK, "algorithm_kw.sketch.update_mode": "own_exact"},
    "spark_v1_roundtrip": {**_SPARK, "algorithm_kw.sketch.update_mode": "roundtrip"},
    "spark_v1_k128": {**_SPARK, "algorithm_kw.sketch.k": 128},
    # Per layer, k = 2,048 would exceed the output layer's 1,010 parameters: one global group instead.
    "spark_v1_k2048_global": {**_SPARK, "algorithm_kw.sketch.k": 2048, "algorithm_kw.sketch.grouping": "global"},
    "spark_v1_teacher_neighbors": {**_SPARK, "algorithm_kw.distill.teacher": "neighbors"},
    "spark_v1_velocity_mixed": {**_SPARK, "algorithm_kw.momentum.velocity": "mixed"},
    "dfedavg": {"algorithm": "dfedavg"},
    "dfedavgm": {"algorithm": "dfedavgm"},
}
# The rows every study runs with 3 seeds at alpha 0.1, and the rows also run at alpha 0.5.
READINGS_CORE = ("ntk_dfl", "spark_v1", "spark_v1_own_exact", "spark_v1_roundtrip", "spark_v2", "dfedavgm")
READINGS_ALPHA_05 = ("ntk_dfl", "spark_v1", "spark_v1_roundtrip", "spark_v2", "dfedavgm")


def _readings(rows, alphas) -> dict[str, dict[str, Any]]:
    """Each reading at each alpha: setting '<reading>,alpha=<alpha>'."""
    return {f"{row},alpha={alpha}": {**READINGS[row], "partition.alpha": alpha} for alpha in alphas for row in rows}


PRESETS["spark_readings"] = Preset(
    description="every SPARK reading (v1 sketch variants, v2 exact-Jacobian variants), NTK-DFL, DFedAvg and "
                "DFedAvgM x alpha {0.1, 0.5}: the paper-scale study (docs/RESULTS.md)",
    settings=_readings(READINGS, (0.1, 0.5)))
PRESETS["spark_readings_core"] = Preset(
    description="the study's core rows at alpha 0.1 (run with 3 seeds; docs/RESULTS.md)",
    settings=_readings(READINGS_CORE, (0.1,)))
PRESETS["spark_readings_more"] = Preset(
    description="the study's other rows at alpha 0.1 and its alpha-0.5 rows (the CPU study runs them with "
                "fewer seeds; docs/RESULTS.md)",
    settings={**_readings([r for r in READINGS if r not in READINGS_CORE], (0.1,)),
              **_readings(READINGS_ALPHA_05, (0.5,))})
PRESETS["spark_readings_alpha05"] = Preset(
    description="the study's alpha-0.5 rows alone (to add seeds to them; docs/RESULTS.md)",
    settings=_readings(READINGS_ALPHA_05, (0.5,)))
# The readings that clearly beat the SPEC default in the CPU study (docs/RESULTS.md): the sketch with the exact
# update by a round trip (v1 traffic + 19% bytes per round), and exact Jacobians with distillation + momentum (v2).
PRESETS["spark_readings_winners"] = Preset(
    description="the readings that beat the SPEC default spark_v1 in docs/RESULTS.md: spark_v1_roundtrip and "
                "spark_v2, x alpha {0.1, 0.5}",
    settings=_readings(("spark_v1_roundtrip", "spark_v2"), (0.1, 0.5)))
