"""SPEC step 5 (sketch mode): the output layer's part of the sketched kernel in closed form,
(1/C) sum_c J~_c J~_c^T = Ã M Ã^T (`spark_jax.ntk.sketch_output_layer`).

References: the output layer's sketch built row by row in float64 NumPy from its definition
(J_c[n] = ã_n at class c's bias and kernel column, then J P), and the float64 Gram of every group's
sketch for the whole kernel.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spark_jax.algorithms import shared_sketch
from spark_jax.ntk import sketch, sketch_output_layer as out_layer
from spark_jax.options import ComputeOptions, SketchOptions
from spark_jax.setting import models

MASK = np.array([True, True, False, True, True, True, False, True])  # 6 real rows, 2 padding
C = 10


@functools.lru_cache(maxsize=None)
def _case(hidden):
    """(model, params, padded x [8] with garbage on padding (one NaN row))."""
    model = models.make_model("mlp", hidden=hidden)
    params = model.init(jax.random.key(0))
    params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(7), a.shape), params)  # biases != 0
    xp = np.random.default_rng(3).normal(size=(len(MASK), 28, 28, 1)).astype(np.float32)
    xp[~MASK] = 7.0
    xp[np.flatnonzero(~MASK)[0]] = np.nan
    return model, params, xp


def _numpy_output_sketch(params, x, P, grouping):
    """Float64 NumPy: per output-layer group, J~_c[n] = sum over the group's rows of J_c[n, row] P_g[row],
    J_c[n] = 1 at class c's bias and a_n[i] at kernel (i, c), a_n the last layer's input (ReLU MLP)."""
    names = sorted(params, key=lambda s: (len(s), s))
    a = np.asarray(x, np.float64).reshape(len(x), -1)
    for name in names[:-1]:
        a = np.maximum(a @ np.asarray(params[name]["kernel"], np.float64) + np.asarray(params[name]["bias"]), 0)
    fan_in = a.shape[1]
    out = []
    for g, group in enumerate(sketch.sketch_groups(params, grouping)):
        if any(path[0] != names[-1] for path in group):
            continue
        p, row, s = np.asarray(P[g], np.float64), 0, np.zeros((len(x), C, P[g].shape[1]))
        for _, leaf in group:  # rows in flatten order: bias [C], then kernel [fan_in, C] C-order
            for n in range(len(x)):
                for c in range(C):
                    if leaf == "bias":
                        s[n, c] += p[row + c]
                    else:
                        s[n, c] += a[n] @ p[row + np.arange(fan_in) * C + c]
            row += C if leaf == "bias" else fan_in * C
        out.append(s)
    return out


@pytest.mark.parametrize("hidden,grouping,groups", [((16,), "layer", (1,)), ((16,), "tensor", (2, 3)),
                                                    ((8, 6), "layer", (2,)), ((16,), "global", ()),
                                                    ((), "global", (0,))])
def test_output_layer_kernel_matches_numpy_sketch_gram(hidden, grouping, groups):
    """Ã M Ã^T == (1/C) sum_c J~_c J~_c^T of the NumPy float64 sketch to 1e-5; padding rows/columns zero
    (one padding row holds NaN); exactly symmetric; "global" with hidden layers has no closed form."""
    model, params, xp = _case(hidden)
    P = sketch.projections(jax.random.key(1), params, grouping, 24, 0, True)
    assert out_layer.output_layer_groups(params, grouping) == groups
    assert out_layer.closed_form_groups(params, grouping, "forward") == ()
    h = np.asarray(jax.jit(out_layer.closed_form_kernel, static_argnums=(4, 5))(params, xp, MASK, P, grouping,
                                                                              "structured"))
    assert np.all(h[~MASK] == 0) and np.all(h[:, ~MASK] == 0)
    np.testing.assert_array_equal(h, h.T)
    if not groups:
        assert np.all(h == 0)
        return
    sk = _numpy_output_sketch(params, xp[MASK], P, grouping)
    want = sum(np.einsum("ick,jck->ij", s, s) for s in sk) / C
    np.testing.assert_allclose(h[np.ix_(MASK, MASK)], want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("hidden,grouping,method", [((16,), "layer", "structured"), ((16,), "tensor", "structured"),
                                                    ((16,), "global", "structured"), ((16,), "layer", "forward"),
                                                    ((), "layer", "structured")])
def test_sketched_kernel_equals_gram_of_all_sketches(hidden, grouping, method):
    """The kernel phase's H~ (closed-form groups + Gram of the rest) == the float64 Gram of every group's
    sketch (SPEC step 5) to 1e-5; `sketch_jacobian(groups=...)` gives exactly those groups' sketches."""
    model, params, xp = _case(hidden)
    P = sketch.projections(jax.random.key(2), params, grouping, 24, 0, True)
    sketch_fn = lambda **kw: jax.jit(functools.partial(sketch.sketch_jacobian, model.apply, grouping=grouping,
                                                       method=method, **kw))(params, xp, MASK, P)
    S = sketch_fn()
    want = sum(np.einsum("ick,jck->ij", np.asarray(s, np.float64), np.asarray(s, np.float64)) for s in S) / C
    h = np.asarray(jax.jit(out_layer.kernel_from_sketches, static_argnums=(5, 6))(params, xp, MASK, S, P, grouping, method))
    np.testing.assert_allclose(h, want, rtol=0, atol=1e-5 * np.abs(want).max())
    rest = out_layer.gram_groups(params, grouping, method)
    assert set(rest) | set(out_layer.closed_form_groups(params, grouping, method)) == set(range(len(P)))
    some = sketch_fn(groups=rest)
    assert len(some) == len(rest)
    for g, s in zip(rest, some):
        np.testing.assert_allclose(np.asarray(s), np.asarray(S[g]), rtol=1e-6, atol=1e-6)


def test_no_hidden_layer_means_nothing_to_share():
    """An MLP without hidden layers: its only layer's kernel part is the closed form, so the shared
    first-layer schedule has nothing to share (share plan off even with share_first_layer='on')."""
    _, params, _ = _case(())
    plan = shared_sketch.share_plan(SketchOptions(k=16), ComputeOptions(share_first_layer="on"), params, 4, 10, 3,
                                    True)
    assert plan.block == 0
    _, params16, _ = _case((16,))
    assert shared_sketch.share_plan(SketchOptions(k=16), ComputeOptions(share_first_layer="on"), params16, 4, 10, 3,
                                    True).block > 0


@pytest.mark.parametrize("devices", [1, 2, 4])
def test_share_plan_counts_the_products_each_device_holds(devices):
    """The bound the plan keeps, written out: each of the D devices holds one block of every sample's
    first-layer products; the kernels are counted twice."""
    _, params, _ = _case((16,))
    m, n_max, slots, k, bound = 6, 10, 3, 64, 1.2e5
    plan = shared_sketch.share_plan(SketchOptions(k=k), ComputeOptions(share_first_layer="on", share_bytes=bound),
                                    params, m, n_max, slots, True, devices)
    kernels = m * (slots * n_max) ** 2 * 4
    per_column = 4 * m * n_max * 16 * devices  # fan_out 16, float32
    fixed = 2 * kernels
    widest = int((bound - fixed) // per_column)
    assert 1 <= widest < k  # the bound binds
    assert plan.num_blocks == -(-k // widest) and plan.block == -(-k // plan.num_blocks)
    assert plan.held_bytes == fixed + per_column * plan.block <= bound
