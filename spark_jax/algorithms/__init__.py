"""Algorithm registry: name -> factory(config, model[, mesh]) -> Algorithm (a run config's adapter).

The NTK algorithms are also plain constructors with keyword options (`ntk_dfl.ntk_dfl`, `spark.spark`,
options in `spark_jax.options`); their factories map the run config's sections onto them
(`spark_jax.config_options`). A new algorithm: one file with its factory, its `check_config` and its
config section's defaults (`CONFIG`, a dict), and one `register` line here; every run config then has
that section (`config_sections`, read by `experiments/configs/base.py`), so `--config.<name>.<key>=...`
works at once.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from spark_jax.algorithms import dfedavg, dispfl, local_baselines, ntk_dfl, spark
from spark_jax.algorithms.base import Algorithm, RoundInputs, mix

class _Entry(NamedTuple):
    factory: Callable  # (config, model[, mesh]) -> Algorithm
    check_config: Callable | None  # (config) -> None, raises checks.OptionError
    config: dict | None  # the defaults of the algorithm's own config section


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, factory: Callable, check_config: Callable | None = None,
             config: dict | None = None) -> None:
    """factory(config, model[, mesh]) -> Algorithm; check_config(config) raises `checks.OptionError`
    naming the first bad field of the algorithm's own config section (run by `check_configs`);
    config: that section's defaults (plain values), added to every run config as `config.<name>`.

    A config section named `name` (if any) is the algorithm's own: no other algorithm reads it, so runs
    of the others leave it out when configs are compared (`runner.run_io.flatten_config`)."""
    if name in _REGISTRY:
        raise ValueError(f"algorithm {name!r} is already registered")
    _REGISTRY[name] = _Entry(factory, check_config, None if config is None else dict(config))


def config_sections() -> dict[str, dict]:
    """name -> defaults of the algorithms' own config sections, in registration order (copies)."""
    return {name: dict(e.config) for name, e in _REGISTRY.items() if e.config is not None}


def check_configs(config) -> None:
    """Every registered algorithm's own config section, whichever algorithm runs (a typo in a sweep or a
    config file fails at once), in registration order."""
    for e in _REGISTRY.values():
        if e.check_config is not None:
            e.check_config(config)


def available() -> list[str]:
    return sorted(_REGISTRY)


def make_algorithm(config, model, mesh=None) -> Algorithm:
    """Builds `config.algorithm` from the registry (ValueError if unknown).

    mesh: a 'nodes' mesh (`spark_jax.parallel.node_mesh`) to split the node
    axis over devices, or None (one device; factories need not accept it).
    """
    name = config.algorithm
    if name not in _REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; available: {', '.join(available())}")
    factory = _REGISTRY[name].factory
    return factory(config, model) if mesh is None else factory(config, model, mesh=mesh)


register("dfedavg", dfedavg.make, dfedavg.check_local_training("dfedavg"), dfedavg.CONFIG)
register("ntk_dfl", ntk_dfl.from_config)  # its sections (ntk, ...) are shared: config_options.check_all
register("spark", spark.from_config)
register("dfedavgm", local_baselines.make_dfedavgm, dfedavg.check_local_training("dfedavgm"),
         local_baselines.CONFIG_DFEDAVGM)
register("dpsgd", local_baselines.make_dpsgd, dfedavg.check_local_training("dpsgd"), local_baselines.CONFIG_DPSGD)
register("dfedsam", local_baselines.make_dfedsam, local_baselines.check_dfedsam, local_baselines.CONFIG_DFEDSAM)
register("dispfl", dispfl.make, dispfl.check_config, dispfl.CONFIG)

__all__ = ["Algorithm", "RoundInputs", "mix", "register", "available", "make_algorithm", "check_configs",
           "config_sections"]
