"""Algorithm registry: name -> (factory, default keyword arguments, check); a run config names its
algorithm and gives its keyword arguments (`config.algorithm`, `config.algorithm_kw`: big_vision's
name + kwargs, mapped onto the constructors by `spark_jax.config_options`).

The NTK algorithms are plain constructors with keyword options (`ntk_dfl.ntk_dfl`, `spark.spark`,
options in `spark_jax.options`). A new algorithm: one file with its factory(config, model[, mesh]),
its default keyword arguments (a dict) and its check, and one `register` line here; then
`--config.algorithm=<name>` works at once, with `--config.algorithm_kw.<key>=...` overrides.
"""

from __future__ import annotations

import copy
from typing import Callable, NamedTuple

import ml_collections

from spark_jax import config_options
from spark_jax.algorithms import dfedavg, dispfl, local_baselines, ntk_dfl, spark
from spark_jax.algorithms.base import Algorithm, RoundInputs, mix


class _Entry(NamedTuple):
    factory: Callable  # (config, model[, mesh]) -> Algorithm
    check_config: Callable | None  # (config) -> None, raises checks.OptionError
    kw: dict  # the default keyword arguments (config.algorithm_kw)
    family: str | None  # algorithms of one family share the meaning of their common keyword arguments


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, factory: Callable, check_config: Callable | None = None, kw: dict | None = None,
             family: str | None = None) -> None:
    """factory(config, model[, mesh]) -> Algorithm, reading `config.algorithm_kw`; check_config(config)
    raises `checks.OptionError` naming the first bad `algorithm_kw` field; kw: the default keyword
    arguments (plain values, nested dicts for option groups); family: when switching between two
    algorithms of one family (`with_algorithm`), the keyword arguments they share keep their values."""
    if name in _REGISTRY:
        raise ValueError(f"algorithm {name!r} is already registered")
    _REGISTRY[name] = _Entry(factory, check_config, copy.deepcopy(kw or {}), family)


def available() -> list[str]:
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def default_kw(name: str) -> dict:
    """The default keyword arguments of algorithm `name` (a deep copy; ValueError if unknown)."""
    return copy.deepcopy(_entry(name).kw)


def _carried(new: dict, old: dict) -> dict:
    """`new` with the values of `old` at every key path both have (the same kind of value: dict or not)."""
    out = {}
    for k, v in new.items():
        if k in old and isinstance(v, dict) == isinstance(old[k], dict):
            out[k] = _carried(v, old[k]) if isinstance(v, dict) else old[k]
        else:
            out[k] = v
    return out


def with_algorithm(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """`config` (changed in place, and returned) running algorithm `name`: `algorithm_kw` becomes `name`'s
    defaults, except that within one family (spark <-> ntk_dfl) the keyword arguments both take keep their
    values (taus, evolution, ...); `name` already running: unchanged. ValueError if `name` is unknown."""
    entry = _entry(name)
    if name == config.algorithm:
        return config
    kw = default_kw(name)
    old = _REGISTRY.get(config.algorithm)
    if old is not None and entry.family is not None and old.family == entry.family:
        kw = _carried(kw, config.algorithm_kw.to_dict())
    with config.unlocked():
        config.algorithm = name
        config.algorithm_kw = ml_collections.ConfigDict(kw)
    return config


def check_config(config) -> None:
    """The run's `algorithm_kw` against its algorithm (`checks.OptionError` naming the first bad field)."""
    entry = _entry(config.algorithm)
    if entry.check_config is not None:
        entry.check_config(config)


def moved_path(path: str) -> str | None:
    """The replacement of a config path of the layout before 2026-12-01 (`config_options.moved_path`)."""
    return config_options.moved_path(path, _REGISTRY)


def make_algorithm(config, model, mesh=None) -> Algorithm:
    """Builds `config.algorithm` from the registry (ValueError if unknown).

    mesh: a 'nodes' mesh (`spark_jax.parallel.node_mesh`) to split the node
    axis over devices, or None (one device; factories need not accept it).
    """
    factory = _entry(config.algorithm).factory
    return factory(config, model) if mesh is None else factory(config, model, mesh=mesh)


register("dfedavg", dfedavg.make, dfedavg.check_local_training, dfedavg.CONFIG)
register("ntk_dfl", ntk_dfl.from_config, config_options.check_ntk_dfl, config_options.NTK_DFL_KW, family="ntk")
register("spark", spark.from_config, config_options.check_spark, config_options.SPARK_KW, family="ntk")
register("dfedavgm", local_baselines.make_dfedavgm, dfedavg.check_local_training, local_baselines.CONFIG_DFEDAVGM)
register("dpsgd", local_baselines.make_dpsgd, dfedavg.check_local_training, local_baselines.CONFIG_DPSGD)
register("dfedsam", local_baselines.make_dfedsam, local_baselines.check_dfedsam, local_baselines.CONFIG_DFEDSAM)
register("dispfl", dispfl.make, dispfl.check_config, dispfl.CONFIG)

__all__ = ["Algorithm", "RoundInputs", "mix", "register", "available", "default_kw", "with_algorithm",
           "check_config", "make_algorithm", "moved_path"]
