"""SPARK (SPEC steps 1-11 and "The three stages"): the NTK round (`ntk_round`) with Jacobian sketches,
annealed distillation and stage-3 Nesterov momentum.

Per round r (eta_r, lambda_r, beta_r traced; see `spark_jax.algorithms.schedules`):
  2. w̄_i = sum_j W_r[i, j] w_j (and the velocity, when `MomentumOptions.velocity='mixed'`)
  3. messages at w̄_i: outputs F0, labels, and per layer the sketch J_l P_l
     (P_l from the `sketch` stream, identical at every node) or exact J (`sketch=None`)
  5. H = (1/C) sum_c sum_l J~_l[:, c] J~_l[:, c]^T
  6. Y^ = (1 - lambda_r) Y + lambda_r softmax(F_T / T)
  7. evolution towards Y^; 8. Delta_tau (back-projected, own_exact or exact);
  9. tau* by CE(f(X; w̄_i + Delta_tau), Y^)
  10. v_i <- beta_r v_i + Delta; w_i <- w̄_i + Delta + beta_r v_i  (`optax.trace(beta_r, nesterov=True)`)
With sketch=None, distill=None and momentum=None this is NTK-DFL (`ntk_dfl`), by construction; with
sketch off, lambda_max = 0 and beta = 0 it computes the same numbers (tested).

    algorithm = spark(model, num_nodes=30, rounds=15, sketch=SketchOptions(k=128), sketch_key=key)
"""

from __future__ import annotations

import jax

from spark_jax import config_options
from spark_jax.algorithms import schedules
from spark_jax.setting import comm
from spark_jax.algorithms.base import Algorithm
from spark_jax.algorithms.ntk_round import distillation_targets, ntk_round  # noqa: F401  (re-exported)
from spark_jax.algorithms.shared_sketch import share_plan  # noqa: F401  (re-exported)
from spark_jax.setting.models import Model, num_params
from spark_jax.options import (DEFAULT_DECAY, DEFAULT_ETA0, DEFAULT_STAGES, DEFAULT_TAUS, ComputeOptions,
                               DistillOptions, EvolutionOptions, MomentumOptions, SketchOptions)
from spark_jax.rng import stream_key


def spark(model: Model, *, num_nodes: int, rounds: int | None = None, stages: tuple[int, int] | None = None,
          eta0: float = DEFAULT_ETA0, decay: float = DEFAULT_DECAY, taus=DEFAULT_TAUS, tau_criterion: str = "network",
          sketch: SketchOptions | None = SketchOptions(), distill: DistillOptions | None = DistillOptions(),
          momentum: MomentumOptions | None = MomentumOptions(), evolution: EvolutionOptions = EvolutionOptions(),
          compute: ComputeOptions = ComputeOptions(), sketch_key: jax.Array | None = None, seed: int = 0,
          per_node_init: bool = False, diagnostics: bool = False, diagnose_nodes: tuple[int, ...] = (),
          mesh=None) -> Algorithm:
    """SPARK for `num_nodes` nodes of `model` (see the module docstring and `ntk_round.ntk_round`).

    stages: (b2, b3), the first rounds (0-based) of stages 2 and 3; or None with `rounds`: the SPEC
    default thirds of `rounds`. sketch_key: the `sketch` PRNG stream; None = `stream_key(seed, 'sketch')`,
    as in a run. The byte accounting adds `exact_jacobian_bytes` (what exact Jacobians would have cost,
    for the traffic reduction of claim (a)).
    """
    if stages is None:
        if rounds is None:
            raise ValueError("spark needs stages=(b2, b3) or rounds (for the default thirds)")
        stages = schedules.stage_boundaries(DEFAULT_STAGES, "fraction", rounds)
    if len(stages) != 2 or not all(isinstance(b, int) and not isinstance(b, bool) for b in stages) \
            or not 0 <= stages[0] <= stages[1]:
        raise ValueError(f"stages={stages!r} must be the first rounds of stages 2 and 3, ints 0 <= b2 <= b3 "
                         "(fractions of the run: schedules.stage_boundaries(fractions, 'fraction', rounds))")
    if sketch is not None and sketch_key is None:
        sketch_key = stream_key(seed, "sketch")
    algorithm = ntk_round(model, name="spark", num_nodes=num_nodes, eta0=eta0, decay=decay, taus=taus,
                          tau_criterion=tau_criterion, sketch=sketch, distill=distill, momentum=momentum,
                          stages=stages, evolution=evolution, compute=compute, sketch_key=sketch_key,
                          per_node_init=per_node_init, diagnostics=diagnostics,
                          diagnose_nodes=diagnose_nodes, mesh=mesh)
    d = num_params(jax.eval_shape(model.init, jax.random.key(0)))

    def message_bytes(neighbors, mask, counts) -> dict:
        out = algorithm.message_bytes(neighbors, mask, counts)
        rows = comm.incoming_sample_counts(neighbors, mask, counts)
        out["exact_jacobian_bytes"] = rows * model.num_classes * d * comm.BYTES_PER_FLOAT
        return out

    return algorithm._replace(message_bytes=message_bytes)


def from_config(config, model: Model, mesh=None) -> Algorithm:
    """SPARK from a run config (`config.algorithm_kw`, `spark_jax.config_options`); P from the run's
    `sketch` stream."""
    return spark(model, mesh=mesh, seed=config.seed, **config_options.spark_kwargs(config))
