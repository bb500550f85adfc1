"""SPEC steps 3 and 5: per-sample Jacobians and every kernel implementation vs float64 NumPy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spark_jax import ntk
from spark_jax.setting import models

N_REAL = 6


def numpy_params(model, seed, bias_scale=0.1):
    """Kaiming-normal (fan-in) kernels and random biases drawn in NumPy: no XLA compile."""
    rng = np.random.default_rng(seed)

    def draw(leaf):
        if len(leaf.shape) == 1:
            return (bias_scale * rng.normal(size=leaf.shape)).astype(np.float32)
        return (np.sqrt(2.0 / np.prod(leaf.shape[:-1])) * rng.normal(size=leaf.shape)).astype(np.float32)

    return jax.tree.map(draw, jax.eval_shape(model.init, jax.random.key(0)))


def _setup(name, seed=0, n=N_REAL, **kw):
    model = models.make_model(name, **kw)
    x = np.random.default_rng(seed + 100).normal(size=(n, 28, 28, 1)).astype(np.float32)
    return model, numpy_params(model, seed), x


def _jacobian_f64(apply, params, x):
    """[N, C, d] float64 by jax.jacrev of the whole batch in x64 mode."""
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), params)
        x64 = jnp.asarray(np.asarray(x, np.float64))
        jac = jax.jit(jax.jacrev(lambda p: apply(p, x64)))(p64)
        leaves = [np.asarray(a) for a in jax.tree.leaves(jac)]
    assert leaves[0].dtype == np.float64
    n, c = leaves[0].shape[:2]
    return np.concatenate([a.reshape(n, c, -1) for a in leaves], axis=-1)


def _rel_err(a, b):
    return np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b))


@functools.lru_cache(maxsize=None)
def _case(name, arch):
    """(model, params, x, padded x, mask, float64 kernel of x) for one tiny model."""
    kw = {"hidden": arch} if name == "mlp" else {"channels": arch}
    model, params, x = _setup(name, **kw)
    J = _jacobian_f64(model.apply, params, x)
    want = np.einsum("icp,jcp->ij", J, J) / J.shape[1]
    # Padding rows interleaved with real ones, holding garbage (one of them NaN).
    garbage = np.full((3, 28, 28, 1), 7.0, np.float32)
    garbage[1] = np.nan
    xp = np.concatenate([x[:2], garbage[:1], x[2:5], garbage[1:], x[5:]])
    mask = np.array([True, True, False, True, True, True, False, False, True])
    return model, params, x, xp, mask, want


@pytest.mark.parametrize("name,arch,method,kw", [
    ("mlp", (16,), "contraction", {"chunk_size": 4}),
    ("mlp", (16,), "structured", {}),
    ("mlp", (16,), "ntvp", {"chunk_size": 4}),
    ("mlp", (16,), "reference", {}),
    ("mlp", (8, 6), "contraction", {}),
    ("mlp", (8, 6), "structured", {}),
    ("mlp", (8, 6, 5), "structured", {}),  # two layers with an explicit backprop
    ("cnn", (2, 4), "contraction", {"chunk_size": 4}),
    ("cnn", (2, 4), "ntvp", {}),
])
@pytest.mark.device
def test_kernel_matches_float64_and_padding_is_inert(name, arch, method, kw):
    model, params, x, xp, mask, want = _case(name, arch)
    f = jax.jit(functools.partial(ntk.neighbourhood_kernel, model.apply, method=method, **kw))
    h = f(params, x)
    assert h.shape == (N_REAL, N_REAL) and h.dtype == jnp.float32
    assert _rel_err(h, want) < 1e-5, _rel_err(h, want)
    hp = np.asarray(f(params, xp, mask))
    real = np.flatnonzero(mask)
    np.testing.assert_allclose(hp[np.ix_(real, real)], h, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    pad = ~mask
    assert np.all(hp[pad] == 0) and np.all(hp[:, pad] == 0)


def test_structured_rejects_cnn():
    model, params, x, *_ = _case("cnn", (2, 4))
    with pytest.raises(ValueError, match="dense ReLU MLPs"):
        ntk.neighbourhood_kernel(model.apply, params, x, method="structured")


@pytest.mark.device
def test_jacobian_modes_match_float64():
    model, params, x = _setup("mlp", hidden=(4,), n=3)
    want = _jacobian_f64(model.apply, params, x)
    for mode in ntk.MODES:
        f = jax.jit(functools.partial(ntk.flat_jacobian, model.apply, mode=mode, chunk_size=2))
        J = f(params, x)
        assert J.shape == want.shape
        np.testing.assert_allclose(J, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    tree = jax.eval_shape(functools.partial(ntk.per_sample_jacobian, model.apply), params, x)
    for leaf, p in zip(jax.tree.leaves(tree), jax.tree.leaves(params)):
        assert leaf.shape == (3, model.num_classes) + p.shape


@pytest.mark.device
def test_kernel_from_projected_jacobian():
    """The sketch path: H~ = (1/C) sum_c (J_c P)(J_c P)^T from a projected Jacobian pytree."""
    model, params, x, *_ = _case("mlp", (16,))
    mask = np.array([True] * 4 + [False] * 2)
    rng = np.random.default_rng(1)
    proj = jax.tree.map(lambda p: (rng.normal(size=(p.size, 8)) / np.sqrt(8.0)).astype(np.float32), params)

    @jax.jit
    def sketch_and_kernel(params, x, mask, proj):
        jac = ntk.per_sample_jacobian(model.apply, params, x, mask=mask)
        sketch = jax.tree.map(lambda a, p: a.reshape(a.shape[:2] + (-1,)) @ p, jac, proj)  # [N, C, 8]
        return sketch, ntk.kernel_from_jacobian(sketch, mask)

    sketch, h = sketch_and_kernel(params, x, mask, proj)
    S = np.concatenate([np.asarray(a, np.float64) for a in jax.tree.leaves(sketch)], axis=-1)
    assert S.shape == (6, 10, 32) and np.all(S[~mask] == 0)
    want = np.einsum("icp,jcp->ij", S, S) / S.shape[1]
    assert _rel_err(h, want) < 1e-5


def test_structured_rejects_bad_inputs():
    model, params, x, *_ = _case("mlp", (16,))
    with pytest.raises(ValueError, match="Dense layer"):
        ntk.structured_kernel({"Dense_0": {"kernel": params["Dense_0"]["kernel"]}}, x)
    with pytest.raises(ValueError, match="features"):
        ntk.structured_kernel(params, x[:, :14])
    with pytest.raises(ValueError, match="unknown kernel method"):
        ntk.neighbourhood_kernel(model.apply, params, x, method="nope")


def test_mlp_forward_equals_apply_and_factors_equal_backprops():
    """`mlp_forward` logits == models.MLP; F_l F_l^T == sum_c D_c D_c^T / C from jax autodiff backprops."""
    model, params, x = _setup("mlp", hidden=(8, 6, 5))
    fwd = jax.jit(ntk.kernel.mlp_forward)(params, x)
    np.testing.assert_allclose(fwd.logits, jax.jit(model.apply)(params, x), rtol=1e-6, atol=1e-6)
    _, backprops = jax.jit(ntk.mlp_activations_and_backprops)(params, x)
    factors = jax.jit(ntk.kernel.mlp_backprop_factors)(params, fwd)
    assert factors[-1] is None
    for f, d in zip(factors[:-1], backprops[:-1]):
        f, d = np.asarray(f, np.float64), np.asarray(d, np.float64).reshape(len(x), -1)
        np.testing.assert_allclose(f @ f.T, d @ d.T / 10, rtol=1e-5, atol=1e-6 * np.abs(d @ d.T).max())
