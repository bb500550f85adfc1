"""NTK-DFL (SPEC steps 1-9 and 11 in exact mode): the NTK round with exact messages, one-hot targets and
the plain commit (`ntk_round`), by construction.

Per round r, with eta_r = eta_0 exp(-decay r):
  2. mixing            w̄_i = sum_j W_r[i, j] w_j
  3-4. neighbourhood   node i stacks the padded data of its closed neighbourhood: x [S * n_max, ...]
  5. kernel            H = (1/C) sum_c J_c J_c^T at w̄_i (`ComputeOptions.kernel`)
  7. evolution         dF/ds = -(1/N) H (softmax(F) - Y), F(0) = f(X; w̄_i)   (`EvolutionOptions`)
  8. updates           Delta_tau = -(eta_r/N) J^T R_tau for every candidate tau (VJPs)
  9. selection         tau* = argmin_tau CE(f(X; w̄_i + Delta_tau), Y)
  11. commit           w_i <- w̄_i + Delta_tau*, all nodes at once

    algorithm = ntk_dfl(model, num_nodes=30, eta0=0.01, decay=0.07, taus=(100, 200))
    state = algorithm.init(key, node_data); state, metrics = jax.jit(algorithm.round)(state, node_data, inputs)
"""

from __future__ import annotations

from spark_jax import config_options
from spark_jax.algorithms.base import Algorithm
from spark_jax.algorithms.ntk_round import ntk_round
from spark_jax.setting.models import Model
from spark_jax.options import DEFAULT_DECAY, DEFAULT_ETA0, DEFAULT_TAUS, ComputeOptions, EvolutionOptions


def ntk_dfl(model: Model, *, num_nodes: int, eta0: float = DEFAULT_ETA0, decay: float = DEFAULT_DECAY, taus=DEFAULT_TAUS,
            tau_criterion: str = "network", evolution: EvolutionOptions = EvolutionOptions(),
            compute: ComputeOptions = ComputeOptions(), per_node_init: bool = False, diagnostics: bool = False,
            diagnose_nodes: tuple[int, ...] = (), mesh=None) -> Algorithm:
    """NTK-DFL for `num_nodes` nodes of `model` (see the module docstring; `ntk_round.ntk_round` for the
    arguments). With a 'nodes' `mesh`, each device runs its own nodes (`parallel.node_map`)."""
    return ntk_round(model, name="ntk_dfl", num_nodes=num_nodes, eta0=eta0, decay=decay, taus=taus,
                     tau_criterion=tau_criterion, evolution=evolution, compute=compute, per_node_init=per_node_init,
                     diagnostics=diagnostics, diagnose_nodes=diagnose_nodes, mesh=mesh)


def from_config(config, model: Model, mesh=None) -> Algorithm:
    """NTK-DFL from a run config (`config.algorithm_kw`, `spark_jax.config_options`)."""
    return ntk_dfl(model, mesh=mesh, **config_options.ntk_kwargs(config))
