"""Every named config (and its ':small' variant) loads and passes validation."""

import importlib

import pytest

from experiments.config_names import named_configs
from experiments.configs import base
from spark_jax import algorithms
from spark_jax.runner.validation import validate_config


@pytest.mark.parametrize("name", named_configs())
def test_named_config_and_small_variant_validate(name):
    module = importlib.import_module(f"experiments.configs.{name}")
    assert "python -m experiments.run --config=" in module.__doc__  # the docstring is the command
    for arg in ("", "small"):
        config = module.get_config(arg)
        validate_config(config, algorithms.available())
        assert config.name.startswith(name)
    with pytest.raises(ValueError, match="unknown argument"):
        module.get_config("no_such_variant")


def test_small_variants_are_cpu_sized():
    for name in ("fmnist_ring", "fmnist_regular", "fmnist_er", "mnist_ring", "fmnist_ntk_dfl"):
        small = importlib.import_module(f"experiments.configs.{name}").get_config("small")
        assert small.partition.num_nodes <= 100 and small.rounds <= 15
        # the paper's method (the default integrator), never silently Euler (a different method: SPEC step 7)
        assert small.algorithm_kw.evolution.integrator == base.base_config("ntk_dfl").algorithm_kw.evolution.integrator \
            == "imex"
