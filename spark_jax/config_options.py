"""The one adapter from a run config's `algorithm` + `algorithm_kw` to an algorithm constructor (no JAX).

A run config names its algorithm and gives the constructor's keyword hyper-parameters (big_vision's
name + kwargs): `config.algorithm = 'spark'`, `config.algorithm_kw = dict(...)`. For the NTK
algorithms (`ntk_dfl.ntk_dfl`, `spark.spark`) each option dataclass (`spark_jax.options`) is one
nested dict of its fields:

  eta0, decay, taus, tau_criterion              the schedule and the candidate step counts (both)
  evolution.{integrator, ..., imex.{...}}       EvolutionOptions (ImexOptions)               (both)
  compute.{node_chunk, ..., share_bytes}        ComputeOptions: speed and memory only         (both)
  sketch.{enabled, k, grouping, redraw, update_mode}   SketchOptions; None unless enabled     (spark)
  distill.{lambda_max, teacher, temperature, ramp}     DistillOptions                          (spark)
  momentum.{beta, velocity}                     MomentumOptions                               (spark)
  stages.{boundaries, unit}                     stages=(b2, b3) against config.rounds         (spark)

The local-training baselines take LocalTrainingOptions' fields (lr, batch_size, local_epochs, ...)
flat, plus their own (`spark_jax.algorithms.dfedavg`, ...). The run supplies the rest (num_nodes from
`partition.num_nodes`, per_node_init from `model`, the seed, the mesh). Defaults come from the option
dataclasses (`NTK_DFL_KW`, `SPARK_KW`), so they are defined once. An invalid value is an `OptionError`
naming the config path (`algorithm_kw.evolution.imex.rtol=0.0 must be ...`).

Runs and commands from before 2026-12-01 kept one config section per part (`ntk`, `sketch`, `distill`,
`momentum`, `stages`, and one per baseline): `moved_path` names an old path's replacement, and
`spark_jax.runner.run_io.current_layout` reads a config recorded in the old layout.
"""

from __future__ import annotations

import dataclasses
import math

from spark_jax import checks
from spark_jax.checks import OptionError
from spark_jax.options import (DEFAULT_DECAY, DEFAULT_ETA0, DEFAULT_STAGES, DEFAULT_TAUS, TAU_CRITERIA,
                               ComputeOptions, DistillOptions, EvolutionOptions, ImexOptions, LocalTrainingOptions,
                               MomentumOptions, SketchOptions, stage_boundaries)

KW = "algorithm_kw."  # the config path of the keyword arguments

NTK_DFL_KW = dict(eta0=DEFAULT_ETA0, decay=DEFAULT_DECAY, taus=DEFAULT_TAUS, tau_criterion="network",
                  evolution=dataclasses.asdict(EvolutionOptions()), compute=dataclasses.asdict(ComputeOptions()))
SPARK_KW = dict(NTK_DFL_KW, sketch=dict(enabled=True, **dataclasses.asdict(SketchOptions())),
                distill=dataclasses.asdict(DistillOptions()), momentum=dataclasses.asdict(MomentumOptions()),
                stages=dict(boundaries=DEFAULT_STAGES, unit="fraction"))


def _build(cls, prefix: str, values):
    """cls(**values) (a dict or ConfigDict), an OptionError re-worded with the config path prefix + field."""
    try:
        return cls(**{k: values[k] for k in values.keys()})
    except OptionError as e:
        raise e.renamed(f"{prefix}{e.field}") from None


def evolution_options(section, prefix: str = KW + "evolution.") -> EvolutionOptions:
    """`algorithm_kw.evolution` (with its `imex` dict) as EvolutionOptions."""
    imex = _build(ImexOptions, prefix + "imex.", section["imex"])
    return _build(EvolutionOptions, prefix, {**{k: section[k] for k in section.keys()}, "imex": imex})


def compute_options(section, prefix: str = KW + "compute.") -> ComputeOptions:
    return _build(ComputeOptions, prefix, section)


def sketch_options(section, *, check_only: bool = False, prefix: str = KW + "sketch.") -> SketchOptions | None:
    """SketchOptions, or None (exact Jacobians) unless `enabled`; check_only: checked either way."""
    checks.boolean(section["enabled"], prefix + "enabled")
    options = _build(SketchOptions, prefix, {k: section[k] for k in section.keys() if k != "enabled"})
    return options if section["enabled"] or check_only else None


def distill_options(section, prefix: str = KW + "distill.") -> DistillOptions:
    return _build(DistillOptions, prefix, section)


def momentum_options(section, prefix: str = KW + "momentum.") -> MomentumOptions:
    return _build(MomentumOptions, prefix, section)


def stages(section, rounds: int, prefix: str = KW + "stages.") -> tuple[int, int]:
    """(b2, b3): the first rounds of stages 2 and 3 (`schedules.stage_boundaries`) of a `rounds`-round run."""
    boundaries, unit = section["boundaries"], section["unit"]
    checks.require(isinstance(boundaries, (tuple, list)) and all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in boundaries),
        f"{prefix}boundaries={boundaries!r} must be a pair of numbers")
    try:  # the unit and the boundaries' ranges (one line naming the field)
        return stage_boundaries(tuple(boundaries), unit, rounds)
    except ValueError as e:
        raise OptionError(str(e).replace("stages.", prefix)) from None


def ntk_kwargs(config) -> dict:
    """The keyword arguments of `ntk_dfl.ntk_dfl` (every NTK algorithm takes them) from the run config."""
    kw = config.algorithm_kw
    checks.number(kw.eta0, KW + "eta0", 0.0, lo_open=True)
    checks.number(kw.decay, KW + "decay", 0.0)
    checks.ascending_taus(kw.taus, KW + "taus")
    checks.one_of(kw.tau_criterion, KW + "tau_criterion", TAU_CRITERIA)
    return dict(num_nodes=config.partition.num_nodes, eta0=kw.eta0, decay=kw.decay, taus=tuple(kw.taus),
                tau_criterion=kw.tau_criterion, evolution=evolution_options(kw.evolution),
                compute=compute_options(kw.compute), per_node_init=config.model.per_node_init)


def spark_kwargs(config) -> dict:
    """`ntk_kwargs` plus SPARK's parts: sketch (None unless enabled), distill, momentum, stages."""
    kw = config.algorithm_kw
    return dict(ntk_kwargs(config), sketch=sketch_options(kw.sketch), distill=distill_options(kw.distill),
                momentum=momentum_options(kw.momentum), stages=stages(kw.stages, config.rounds))


def check_ntk_dfl(config) -> None:
    """Raises OptionError naming the first bad `algorithm_kw` field of an NTK-DFL run."""
    ntk_kwargs(config)


def check_spark(config) -> None:
    """Raises OptionError naming the first bad `algorithm_kw` field of a SPARK run (the sketch's fields are
    checked even when it is off, so a sweep's typo fails at once)."""
    spark_kwargs(config)
    sketch_options(config.algorithm_kw.sketch, check_only=True)


def local_training_options(kw) -> LocalTrainingOptions:
    """A local-training baseline's `algorithm_kw` (lr, batch_size, local_epochs and, where it has them,
    momentum, weight_decay, lr_decay) as `LocalTrainingOptions`, errors naming `algorithm_kw.field`."""
    names = ("lr", "batch_size", "local_epochs", "momentum", "weight_decay", "lr_decay")
    return _build(LocalTrainingOptions, KW, {k: kw[k] for k in names if k in kw})


# ------------------------------------------------------------------ the layout before 2026-12-01

_EVOLUTION = ("integrator", "substeps", "stride", "warmup", "rtol", "atol", "max_stride")
_COMPUTE = ("node_chunk", "node_batching", "product_columns", "kernel", "jacobian_mode", "sample_chunk",
            "matmul_precision")
# Old path (one section per part of the NTK methods) -> path under algorithm_kw.
OLD_NTK_PATHS = {
    "ntk.eta0": "eta0", "ntk.decay": "decay", "ntk.taus": "taus", "ntk.tau_criterion": "tau_criterion",
    **{f"ntk.{k}": f"evolution.{k}" for k in _EVOLUTION},
    **{f"ntk.imex.{f.name}": f"evolution.imex.{f.name}" for f in dataclasses.fields(ImexOptions)},
    **{f"ntk.{k}": f"compute.{k}" for k in _COMPUTE},
    "sketch.method": "compute.sketch_method",
    **{f"sketch.{k}": f"compute.{k}" for k in ("direction_chunk", "share_first_layer", "share_bytes")},
    **{f"sketch.{k}": f"sketch.{k}" for k in ("enabled", "k", "grouping", "redraw", "update_mode")},
    **{f"distill.{k}": f"distill.{k}" for k in ("lambda_max", "teacher", "temperature")},
    "stages.ramp": "distill.ramp",
    **{f"momentum.{k}": f"momentum.{k}" for k in ("beta", "velocity")},
    "stages.boundaries": "stages.boundaries", "stages.unit": "stages.unit",
}
OLD_NTK_SECTIONS = ("ntk", "sketch", "distill", "momentum", "stages")


def moved_path(path: str, algorithm_names) -> str | None:
    """The replacement of a config path of the old layout ('ntk.taus' -> 'algorithm_kw.taus'; a baseline's
    'dfedavg.lr' -> 'algorithm_kw.lr (with algorithm=dfedavg)'), or None for a current or unknown path."""
    if path in OLD_NTK_PATHS:
        return KW + OLD_NTK_PATHS[path]
    section, dot, key = path.partition(".")
    if dot and section in algorithm_names:
        return f"{KW}{key} (with algorithm={section})"
    return None
