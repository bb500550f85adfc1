"""The NTK round driven as a library: docs/LIBRARY.md's snippet against a float64 reference, per-node
diagnostics, hyper-parameter overrides, and options that check themselves."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from spark_jax import algorithms, checks, config_options
from spark_jax.algorithms import schedules
from spark_jax.algorithms.ntk_dfl import ntk_dfl
from spark_jax.algorithms.spark import spark
from spark_jax.setting.models import make_model
from spark_jax.options import ComputeOptions, EvolutionOptions, ImexOptions, SketchOptions
from spark_jax.setting.topology import padded_graph
from tests.conftest import FUSION_EMITTERS, NTK_COUNTS, REPO, ntk_adjacency, ntk_config, random_node_data, round_inputs
from tests.references import mixed_neighbourhood, ntk_dfl_reference_round, ntk_reference_evolution


def _snippets() -> list[str]:
    text = (REPO / "docs" / "LIBRARY.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
def test_library_snippet_drives_a_round_that_matches_the_float64_reference():
    first, second = _snippets()[:2]
    assert len(first.strip().splitlines()) <= 20  # "about 15 lines"
    ns = {}
    exec(compile(first, "docs/LIBRARY.md", "exec"), ns)  # pylint: disable=exec-used
    m, node_data, model = ns["m"], ns["node_data"], ns["model"]
    adj = np.asarray(ns["ring"] | ns["ring"].T)
    expected, bests = ntk_dfl_reference_round(model.apply, ns["state"].params, node_data, adj, 0.5, (1, 4, 12),
                                              integrator="ode")
    metrics = ns["metrics"]
    for i in range(m):
        got = np.asarray(ravel_pytree(jax.tree.map(lambda a: a[i], ns["new_state"].params))[0])
        np.testing.assert_allclose(got, expected[i], rtol=2e-4, atol=2e-5, err_msg=f"node {i}")
    np.testing.assert_array_equal(metrics["tau_index"], bests)
    losses = np.asarray(metrics["tau_losses"])
    assert losses.shape == (m, 3)
    np.testing.assert_array_equal(np.argmin(losses, axis=1), metrics["tau_index"])
    assert np.isclose(float(metrics["train_loss"]), losses[np.arange(m), bests].mean(), rtol=1e-6)
    exec(compile(second, "docs/LIBRARY.md", "exec"), ns)  # pylint: disable=exec-used
    assert all(ns[k].name == "spark" for k in ("v1", "v2", "teacher"))


def _one_round(alg, r, hyperparams=None):
    nd = jax.tree.map(jnp.asarray, random_node_data())
    state = alg.init(jax.random.key(0), nd)
    inputs = round_inputs(padded_graph(ntk_adjacency(), "uniform"), r)._replace(hyperparams=hyperparams)
    # bit for bit across two programs (the schedule's value computed inside, or given): XLA:CPU's fusion
    # emitters, not the suite's faster-compiling ones (tests/conftest.py)
    return jax.jit(alg.round, compiler_options=FUSION_EMITTERS)(state, nd, inputs)


@pytest.mark.slow  # 5-15 s (2026-12-02): in the full suite, not the fast loop
def test_hyperparameters_given_as_round_inputs_replace_the_schedules():
    """Round 0 with eta (and SPARK's lambda, beta) of round 5 given as inputs is round 5, bit for bit."""
    model = make_model("mlp", hidden=(8,))
    m, r = len(NTK_COUNTS), 5
    alg = ntk_dfl(model, num_nodes=m, eta0=0.5, taus=(1, 4), evolution=EvolutionOptions(integrator="euler"),
                  per_node_init=True)
    eta = schedules.learning_rate(0.5, 0.07, jnp.int32(r))
    want, _ = _one_round(alg, r)
    got, metrics = _one_round(alg, 0, {"eta": eta})
    assert float(metrics["eta"]) == float(eta)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    alg = spark(model, num_nodes=m, stages=(2, 4), eta0=0.5, taus=(1, 4), sketch=None, per_node_init=True,
                evolution=EvolutionOptions(integrator="euler"))
    want, m5 = _one_round(alg, r)
    assert float(m5["lambda"]) == 0.5 and float(m5["beta"]) == pytest.approx(0.9)
    got, m0 = _one_round(alg, 0, {"eta": m5["eta"], "lambda": m5["lambda"], "beta": m5["beta"]})
    assert float(m0["beta"]) == float(m5["beta"])
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['gamma'\]"):
        _one_round(alg, 0, {"gamma": 1.0})
    plain = ntk_dfl(model, num_nodes=m, eta0=0.5, taus=(1, 4), evolution=EvolutionOptions(integrator="euler"))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['beta', 'lambda'\]; this round's hyper-parameters "
                                         r"are \('eta',\)"):
        _one_round(plain, 0, {"lambda": 0.5, "beta": 0.9})
    with pytest.raises(ValueError, match=r"diagnose_nodes=\(6,\) must be node indices in \[0, 6\)"):
        ntk_dfl(model, num_nodes=m, diagnose_nodes=(6,))
    with pytest.raises(ValueError, match=r"stages=\(0.3, 0.6\) must be the first rounds"):
        spark(model, num_nodes=m, stages=(0.3, 0.6))


def test_options_check_themselves_and_the_adapter_names_the_config_path():
    with pytest.raises(checks.OptionError, match=r"^integrator='rk5' is not one of 'rk4', "):
        EvolutionOptions(integrator="rk5")
    with pytest.raises(checks.OptionError, match=r"^split_modes=65 must be an integer in \[0, 64\]"):
        ImexOptions(split_modes=65)
    with pytest.raises(checks.OptionError, match=r"^k=0 must be an integer >= 1"):
        SketchOptions(k=0)
    with pytest.raises(checks.OptionError, match=r"^node_batching='loop' is not one of"):
        ComputeOptions(node_batching="loop")
    c = ntk_config()
    c.algorithm_kw.evolution.imex.rtol = 0.0
    with pytest.raises(checks.OptionError,
                       match=r"^algorithm_kw\.evolution\.imex\.rtol=0\.0 must be a finite number in \(0, 1\]"):
        config_options.check_ntk_dfl(c)
    c = ntk_config()
    c.algorithm_kw.compute.sketch_method = "dense"
    with pytest.raises(checks.OptionError, match=r"^algorithm_kw\.compute\.sketch_method='dense' is not one of"):
        config_options.check_ntk_dfl(c)
    c = algorithms.with_algorithm(ntk_config(), "spark")
    c.algorithm_kw.distill.ramp = "step"
    with pytest.raises(checks.OptionError, match=r"^algorithm_kw\.distill\.ramp='step' is not one of 'linear', 'cosine'"):
        config_options.check_spark(c)
    c = algorithms.with_algorithm(ntk_config(), "spark")
    c.algorithm_kw.sketch.enabled, c.algorithm_kw.sketch.k = False, 0  # checked even when off
    with pytest.raises(checks.OptionError, match=r"^algorithm_kw\.sketch\.k=0 must be an integer >= 1"):
        config_options.check_spark(c)


def test_the_adapter_gives_the_constructors_the_config_values():
    c = algorithms.with_algorithm(ntk_config(integrator="imex"), "spark")
    kw = c.algorithm_kw
    kw.evolution.imex.split_modes, kw.sketch.k, kw.compute.node_chunk, kw.sketch.enabled = 4, 64, 3, False
    kw = config_options.spark_kwargs(c)
    assert kw["evolution"].imex.split_modes == 4 and kw["evolution"].evolve_kwargs(0)["split_modes"] == 4
    assert kw["sketch"] is None and kw["compute"].node_chunk == 3 and kw["taus"] == tuple(c.algorithm_kw.taus)
    c.algorithm_kw.sketch.enabled = True
    assert config_options.spark_kwargs(c)["sketch"] == SketchOptions(k=64)


@pytest.mark.slow  # 5-15 s (2026-12-02): in the full suite, not the fast loop
def test_diagnosed_nodes_hold_their_kernel_and_evolution():
    """`diagnose_nodes`: each chosen node's H, F0, Y and F(s_tau) against a float64 NumPy/scipy reference."""
    model = make_model("mlp", hidden=(8,))
    nd, adj, taus, chosen = random_node_data(), ntk_adjacency(), (1, 4, 12), (0, 3)
    alg = ntk_dfl(model, num_nodes=len(NTK_COUNTS), eta0=0.5, taus=taus, diagnose_nodes=chosen, per_node_init=True)
    state = alg.init(jax.random.key(0), nd)
    _, metrics = jax.jit(alg.round)(state, jax.tree.map(jnp.asarray, nd),
                                    round_inputs(padded_graph(adj, "uniform"), 0))
    d = metrics["node_diagnostics"]
    assert d["kernel"].shape[0] == len(chosen) and d["evolved_logits"].shape[1] == len(taus)
    for k, i in enumerate(chosen):
        w_bar, x, y = mixed_neighbourhood(state.params, nd, adj, i)
        H, F0, Y, F = ntk_reference_evolution(model.apply, w_bar, x, y, 0.5, taus)
        real = np.asarray(d["mask"][k])
        assert real.sum() == len(y)
        np.testing.assert_allclose(np.asarray(d["kernel"][k])[real][:, real], H, rtol=1e-4, atol=1e-4 * np.abs(H).max())
        np.testing.assert_allclose(np.asarray(d["initial_logits"][k])[real], F0, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(d["targets"][k])[real], Y)
        np.testing.assert_allclose(np.asarray(d["evolved_logits"][k])[:, real], F, rtol=1e-4, atol=1e-4)
