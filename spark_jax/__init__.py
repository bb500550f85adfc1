"""spark_jax: SPARK and NTK-DFL decentralized federated learning in JAX.

The packages, in data-flow order (no module imports a later one):

  (core)       checks, options, config_options, dtypes, rng, parallel, guard
  setting/     data, partition, topology, models, metrics, comm: the federated world every method shares
  ntk/         Jacobians, kernels, the evolution, updates; Jacobian sketches (SPEC steps 3-9)
  algorithms/  one NTK round from three parts (NTK-DFL, SPARK), the baselines, schedules, the registry
  runner/      one run from a config: build, the round loop, validation, run directories, checkpoints
  lab/         sweeps, presets, reports and docs/RESULTS.md

The names below are the public API (imported on first use, so `import spark_jax` stays light):

    from spark_jax import ntk_dfl, spark, SketchOptions, RoundInputs, make_model
"""

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    # algorithms: constructors, the interface, the registry
    "ntk_dfl": "spark_jax.algorithms.ntk_dfl", "spark": "spark_jax.algorithms.spark",
    "ntk_round": "spark_jax.algorithms.ntk_round", "Algorithm": "spark_jax.algorithms.base",
    "RoundInputs": "spark_jax.algorithms.base", "mix": "spark_jax.algorithms.base",
    "make_algorithm": "spark_jax.algorithms", "available": "spark_jax.algorithms",
    # options of the NTK rounds
    "EvolutionOptions": "spark_jax.options", "ImexOptions": "spark_jax.options",
    "ComputeOptions": "spark_jax.options", "SketchOptions": "spark_jax.options",
    "DistillOptions": "spark_jax.options", "MomentumOptions": "spark_jax.options",
    "OptionError": "spark_jax.checks",
    # the setting
    "make_model": "spark_jax.setting.models", "MODELS": "spark_jax.setting.models",
    "DATASETS": "spark_jax.setting.data", "load_dataset": "spark_jax.setting.data",
    "NodeData": "spark_jax.setting.partition", "padded_graph": "spark_jax.setting.topology",
    "TopologyStream": "spark_jax.setting.topology",
    # running
    "run": "spark_jax.runner.experiment", "prepare": "spark_jax.runner.build",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'spark_jax' has no attribute {name!r}")
