"""Sweep presets: named override sets, crossed with `--sweep` axes and seeds.

Each preset maps a setting name (the run's directory under the sweep) to the
config paths it overrides. Add a preset here as data.
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
        settings={
            "spark": {},
            "no_sketch": {"sketch.enabled": False},
            "no_distill": {"distill.lambda_max": 0.0},
            "no_momentum": {"momentum.beta": 0.0},
            "ntk_dfl": {"sketch.enabled": False, "distill.lambda_max": 0.0, "momentum.beta": 0.0},
        }),
}

COMPARE_METHODS = ("spark", "ntk_dfl", "dfedavg", "dfedavgm", "dpsgd", "dfedsam")


def _comparison_settings(alphas, topologies) -> dict[str, dict[str, Any]]:
    """method x alpha x topology, each a named override set (SPEC "Baselines")."""
    return {f"{method},alpha={alpha},{topology}": {"algorithm": method, "partition.alpha": alpha,
                                                   "topology.kind": topology}
            for method in COMPARE_METHODS for alpha in alphas for topology in topologies}


PRESETS["compare_fmnist"] = Preset(
    description="SPARK, NTK-DFL, DFedAvg, DFedAvgM, D-PSGD, DFedSAM x alpha {0.1, 0.3, 0.5} x "
                "{dynamic 5-regular, ring} on the same partitions, graphs and evaluation",
    settings=_comparison_settings((0.1, 0.3, 0.5), ("regular", "ring")))
