"""The one adapter from a run config's sections to the NTK algorithms' keyword options (no JAX).

The run config (`experiments/configs/base.py`) keeps one section per part of the method, so sweeps
override `--config.sketch.k=128` and every config file keeps working; the algorithm constructors take
option dataclasses (`spark_jax.options`). This module maps one to the other, once:

  ntk.{integrator, substeps, stride, warmup, rtol, atol, max_stride}, ntk.imex.*   -> EvolutionOptions
  ntk.{node_chunk, node_batching, product_columns, kernel, jacobian_mode, sample_chunk,
       matmul_precision}, sketch.{method, direction_chunk, share_first_layer, share_bytes} -> ComputeOptions
  sketch.{k, grouping, redraw, update_mode} (None unless sketch.enabled)          -> SketchOptions
  distill.*, stages.ramp                                                           -> DistillOptions
  momentum.*                                                                       -> MomentumOptions
  ntk.{eta0, decay, taus, tau_criterion}, stages -> (b2, b3), partition.num_nodes, model.per_node_init

An invalid value is an `OptionError` naming the config path (`ntk.imex.rtol=0.0 must be ...`).
"""

from __future__ import annotations

import math

from spark_jax import checks
from spark_jax.checks import OptionError
from spark_jax.options import (TAU_CRITERIA, ComputeOptions, DistillOptions, EvolutionOptions, ImexOptions,
                               LocalTrainingOptions, MomentumOptions, SketchOptions, stage_boundaries)


def _build(cls, prefix: str, renames: dict | None = None, **values):
    """cls(**values), an OptionError re-worded with the config path (prefix + field, or renames[field])."""
    try:
        return cls(**values)
    except OptionError as e:
        raise e.renamed((renames or {}).get(e.field, f"{prefix}{e.field}")) from None


def evolution_options(nc) -> EvolutionOptions:
    ic = nc.imex
    imex = _build(ImexOptions, "ntk.imex.", rtol=ic.rtol, atol=ic.atol, max_stride=ic.max_stride,
                  split_modes=ic.split_modes, split_iterations=ic.split_iterations)
    return _build(EvolutionOptions, "ntk.", integrator=nc.integrator, substeps=nc.substeps, stride=nc.stride,
                  warmup=nc.get("warmup", 50), rtol=nc.rtol, atol=nc.atol, max_stride=nc.max_stride, imex=imex)


_SKETCH_COMPUTE = {"sketch_method": "sketch.method", "direction_chunk": "sketch.direction_chunk",
                   "share_first_layer": "sketch.share_first_layer", "share_bytes": "sketch.share_bytes"}


def compute_options(config) -> ComputeOptions:
    nc, sc = config.ntk, config.sketch
    return _build(ComputeOptions, "ntk.", _SKETCH_COMPUTE, node_chunk=nc.node_chunk, node_batching=nc.node_batching,
                  product_columns=nc.product_columns, kernel=nc.kernel, jacobian_mode=nc.jacobian_mode,
                  sample_chunk=nc.sample_chunk, matmul_precision=nc.matmul_precision, sketch_method=sc.method,
                  direction_chunk=sc.direction_chunk, share_first_layer=sc.share_first_layer,
                  share_bytes=sc.share_bytes)


def sketch_options(sc, *, check_only: bool = False) -> SketchOptions | None:
    """SketchOptions, or None (exact Jacobians) unless sketch.enabled; check_only: checked either way."""
    checks.boolean(sc.enabled, "sketch.enabled")
    options = _build(SketchOptions, "sketch.", k=sc.k, grouping=sc.grouping, redraw=sc.redraw,
                     update_mode=sc.update_mode)
    return options if sc.enabled or check_only else None


def distill_options(config) -> DistillOptions:
    dc = config.distill
    return _build(DistillOptions, "distill.", {"ramp": "stages.ramp"}, lambda_max=dc.lambda_max, teacher=dc.teacher,
                  temperature=dc.temperature, ramp=config.stages.ramp)


def momentum_options(mc) -> MomentumOptions:
    return _build(MomentumOptions, "momentum.", beta=mc.beta, velocity=mc.velocity)


def stages(config) -> tuple[int, int]:
    """(b2, b3): the first rounds of stages 2 and 3 (`schedules.stage_boundaries`)."""
    st = config.stages
    checks.require(isinstance(st.boundaries, (tuple, list)) and all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in st.boundaries),
        f"stages.boundaries={st.boundaries!r} must be a pair of numbers")
    try:  # the unit and the boundaries' ranges (one line naming the field)
        return stage_boundaries(tuple(st.boundaries), st.unit, config.rounds)
    except ValueError as e:
        raise OptionError(str(e)) from None


def ntk_kwargs(config) -> dict:
    """The keyword arguments every NTK algorithm constructor takes (`ntk_dfl.ntk_dfl`)."""
    nc = config.ntk
    checks.number(nc.eta0, "ntk.eta0", 0.0, lo_open=True)
    checks.number(nc.decay, "ntk.decay", 0.0)
    checks.ascending_taus(nc.taus, "ntk.taus")
    checks.one_of(nc.tau_criterion, "ntk.tau_criterion", TAU_CRITERIA)
    return dict(num_nodes=config.partition.num_nodes, eta0=nc.eta0, decay=nc.decay, taus=tuple(nc.taus),
                tau_criterion=nc.tau_criterion, evolution=evolution_options(nc), compute=compute_options(config),
                per_node_init=config.model.per_node_init)


def spark_kwargs(config) -> dict:
    """`ntk_kwargs` plus SPARK's parts: sketch (None unless enabled), distill, momentum, stages."""
    return dict(ntk_kwargs(config), sketch=sketch_options(config.sketch), distill=distill_options(config),
                momentum=momentum_options(config.momentum), stages=stages(config))


def check_all(config) -> None:
    """Builds every NTK option from the config (all sections, whichever algorithm runs, so a typo in a
    sweep fails at once); raises OptionError naming the first bad field."""
    ntk_kwargs(config)
    sketch_options(config.sketch, check_only=True)
    distill_options(config)
    momentum_options(config.momentum)
    stages(config)


def local_training_options(section, name: str) -> LocalTrainingOptions:
    """A local-training baseline's section (`config.<name>`: lr, batch_size, local_epochs and, where the
    section has them, momentum, weight_decay, lr_decay) as `LocalTrainingOptions`, errors naming `name.field`."""
    optional = {k: section[k] for k in ("momentum", "weight_decay", "lr_decay") if k in section}
    return _build(LocalTrainingOptions, f"{name}.", lr=section.lr, batch_size=section.batch_size,
                  local_epochs=section.local_epochs, **optional)
