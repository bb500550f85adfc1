"""Models and PRNG streams."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spark_jax.ntk import sketch
from spark_jax.setting import models
from spark_jax.algorithms.ntk_round import resolve_kernel_method
from spark_jax.setting.models import init_node_params, make_model, num_params
from spark_jax.rng import STREAM_IDS, numpy_rng, stream_key


def test_mlp_size_and_kaiming_init():
    model = make_model("mlp")
    params = model.init(jax.random.key(0))
    assert num_params(params) == 784 * 100 + 100 + 100 * 10 + 10 == 79_510
    w = np.asarray(params["Dense_0"]["kernel"])
    assert abs(w.std() - np.sqrt(2 / 784)) < 0.02 * np.sqrt(2 / 784)
    assert abs(w.mean()) < 1e-3
    assert np.abs(w).max() > 3 * np.sqrt(2 / 784)  # untruncated normal: tails beyond 2 sigma exist
    np.testing.assert_array_equal(params["Dense_0"]["bias"], 0.0)
    np.testing.assert_array_equal(params["Dense_1"]["bias"], 0.0)


def test_mlp_apply_matches_numpy():
    model = make_model("mlp", hidden=(7,))
    params = model.init(jax.random.key(1))
    x = np.random.default_rng(0).normal(size=(3, 28, 28, 1)).astype(np.float32)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h = np.maximum(x.reshape(3, -1) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
    ref = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    np.testing.assert_allclose(model.apply(params, jnp.asarray(x)), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.slow
def test_apply_vmaps_over_nodes(name):
    model = make_model(name)
    node_params = init_node_params(model, jax.random.key(2), 3, per_node=True)
    x = jax.random.normal(jax.random.key(3), (3, 5, 28, 28, 1))
    out = jax.vmap(model.apply)(node_params, x)
    chex.assert_shape(out, (3, 5, 10))
    for i in range(3):
        chex.assert_trees_all_close(out[i], model.apply(jax.tree.map(lambda a: a[i], node_params), x[i]),
                                    rtol=1e-5, atol=1e-5)


def test_same_init_at_every_node_by_default():
    model = make_model("mlp")
    same = init_node_params(model, jax.random.key(0), 4)
    for leaf in jax.tree.leaves(same):
        np.testing.assert_array_equal(leaf[0], leaf[3])
    diff = init_node_params(model, jax.random.key(0), 4, per_node=True)
    assert not np.array_equal(diff["Dense_0"]["kernel"][0], diff["Dense_0"]["kernel"][1])


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        make_model("resnet")


def test_registry_capability_drives_the_fast_path(monkeypatch):
    """The structured fast path follows the registry entry, not the model's name."""
    assert models.supports_structured("mlp") and not models.supports_structured("cnn")
    assert make_model("mlp").structured and not make_model("cnn").structured
    with pytest.raises(ValueError, match="unknown model 'resnet'; choose 'mlp' or 'cnn'"):
        models.supports_structured("resnet")
    # A new model is one entry: here a dense MLP registered without the capability ...
    monkeypatch.setitem(models.MODELS, "plain_mlp", models.ModelSpec(models.MODELS["mlp"].build, structured=False))
    model = make_model("plain_mlp", hidden=(8,), num_classes=3)
    assert not model.structured and not models.supports_structured("plain_mlp")
    assert model.apply(model.init(jax.random.key(0)), jnp.zeros((2, 28, 28, 1))).shape == (2, 3)
    assert sketch.resolve_method("auto", model.structured) == "forward"
    assert resolve_kernel_method("auto", model.structured) == "contraction"
    # ... and a CNN falsely declared structured would get the closed forms: the flag alone decides.
    monkeypatch.setitem(models.MODELS, "cnn", models.ModelSpec(models.MODELS["cnn"].build, structured=True))
    assert sketch.resolve_method("auto", make_model("cnn").structured) == "structured"
    assert resolve_kernel_method("auto", models.supports_structured("cnn")) == "structured"
    assert resolve_kernel_method("ntvp", True) == "ntvp"


def test_named_streams_are_distinct_and_stable():
    keys = {name: np.asarray(jax.random.key_data(stream_key(0, name))) for name in STREAM_IDS}
    assert len({k.tobytes() for k in keys.values()}) == len(STREAM_IDS)
    # A stream depends only on (seed, its own fixed id): recomputing gives the same key.
    np.testing.assert_array_equal(keys["topology"], jax.random.key_data(stream_key(0, "topology")))
    assert not np.array_equal(keys["init"], jax.random.key_data(stream_key(1, "init")))
    a = numpy_rng(stream_key(0, "data"), 3).integers(0, 1 << 30, 5)
    b = numpy_rng(stream_key(0, "data"), 3).integers(0, 1 << 30, 5)
    c = numpy_rng(stream_key(0, "data"), 4).integers(0, 1 << 30, 5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(KeyError, match="unknown PRNG stream"):
        stream_key(0, "nope")
