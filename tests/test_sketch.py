"""SPEC steps 3 (sketch mode), 5 and 8: projections, sketches, sketched kernel, back-projection.

Every sketch method is checked against J @ P with J from a float64 jax.jacrev
path; statistics of P (E[P P^T] = I, 1/sqrt(k) kernel error, unbiased
back-projection) against CLT tolerances stated in each test.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spark_jax.ntk import sketch, sketch_share, sketched_ntk
from spark_jax.setting import models
from tests.test_ntk_kernel import _jacobian_f64, numpy_params

N_REAL = 6
MASK = np.array([True, True, False, True, True, True, False, True])  # 6 real rows, 2 padding


@functools.lru_cache(maxsize=None)
def _case(name, arch):
    """(model, params, x [6], padded x [8] with garbage (one NaN row), float64 J [6, C, d])."""
    kw = {"hidden": arch} if name == "mlp" else {"channels": arch}
    model = models.make_model(name, **kw)
    params = numpy_params(model, 0)
    x = np.random.default_rng(100).normal(size=(N_REAL, 28, 28, 1)).astype(np.float32)
    xp = np.full((len(MASK), 28, 28, 1), 7.0, np.float32)
    xp[np.flatnonzero(~MASK)[0]] = np.nan
    xp[MASK] = x
    return model, params, x, xp, _jacobian_f64(model.apply, params, x)


def _block_diag(P):
    """Projections (P_g [d_g, k]) -> one float64 [d, G k] matrix: J @ it = all sketches side by side."""
    d, k = sum(p.shape[0] for p in P), P[0].shape[1]
    out, row = np.zeros((d, k * len(P))), 0
    for g, p in enumerate(P):
        out[row:row + p.shape[0], g * k:(g + 1) * k] = np.asarray(p, np.float64)
        row += p.shape[0]
    return out


def _rel_err(a, b):
    return np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b))


def test_groups_sizes_and_row_order():
    _, params, *_ = _case("mlp", (16,))
    layer = sketch.sketch_groups(params, "layer")
    assert layer == ((("Dense_0", "bias"), ("Dense_0", "kernel")), (("Dense_1", "bias"), ("Dense_1", "kernel")))
    assert sketch.group_sizes(params, "layer") == (16 + 784 * 16, 10 + 16 * 10)
    assert sketch.group_sizes(params, "tensor") == (16, 784 * 16, 10, 160)
    assert sketch.group_sizes(params, "global") == (models.num_params(params),)
    assert sketch.sketch_groups(params, "global") == (sum(layer, ()),)
    assert sum(sketch.sketch_groups(params, "tensor"), ()) == sum(layer, ())
    _, cnn, *_ = _case("cnn", (2, 4))
    assert [g[0][0] for g in sketch.sketch_groups(cnn, "layer")] == ["Conv_0", "Conv_1", "Dense_0"]
    # Abstract params work too (shapes only).
    assert sketch.group_sizes(jax.eval_shape(lambda: params), "layer") == sketch.group_sizes(params, "layer")


@pytest.mark.device
@pytest.mark.slow
def test_projections_deterministic_identical_per_node_and_redrawn():
    _, params, *_ = _case("mlp", (16,))
    key = jax.random.key(7)
    draw = jax.jit(functools.partial(sketch.projections, params=params, grouping="layer", k=8, redraw=True))
    a, b = draw(key, round_index=jnp.int32(3)), draw(key, round_index=jnp.int32(3))
    assert a[0].shape == (12560, 8) and a[1].shape == (170, 8) and a[0].dtype == jnp.float32
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # Inside a vmap over nodes (round index batched, equal everywhere): bitwise the same at every node.
    nodes = jax.jit(jax.vmap(lambda r: draw(key, round_index=r)))(jnp.full(4, 3, jnp.int32))
    assert all(np.array_equal(n[m], x) for n, x in zip(nodes, a) for m in range(4))
    eager = sketch.projections(key, params, "layer", 8, 3, True)
    assert all(np.array_equal(x, y) for x, y in zip(a, eager))
    assert draw._cache_size() == 1  # the round index is traced: no recompilation per round
    draw(key, round_index=jnp.int32(4))
    assert draw._cache_size() == 1

    other_round = draw(key, round_index=jnp.int32(4))
    assert not np.array_equal(a[0], other_round[0]) and not np.array_equal(a[1], other_round[1])
    fixed = [sketch.projections(key, params, "layer", 8, r, False) for r in (0, 5)]
    assert all(np.array_equal(x, y) for x, y in zip(*fixed))
    assert not np.array_equal(fixed[0][1], a[1])

    # Different groups: independent draws. Sample correlation of n pairs ~ N(0, 1/n); 5 sigma.
    p0, p1 = np.asarray(a[0]).ravel(), np.asarray(a[1]).ravel()
    n = p1.size
    assert abs(np.corrcoef(p0[:n], p1)[0, 1]) < 5 / np.sqrt(n)
    assert not np.array_equal(p0[:n], p1)


def test_projection_moments():
    """E[P P^T] = I and Var(P_ij) = 1/k for d_g = 49, k = 64, over K = 2000 rounds.

    Per draw, (P P^T)_ii has variance 2/k and (P P^T)_il (i != l) 1/k; the mean
    over K draws has std sqrt(2/(kK)) = 0.0040 and sqrt(1/(kK)) = 0.0028;
    tolerance 5 sigma entrywise. The sample variance of n = K d k normal
    entries has relative std sqrt(2/n); tolerance 5 of those.
    """
    d_shape, k, draws = (7, 7), 64, 2000
    params = {"A": {"kernel": np.zeros(d_shape, np.float32)}}
    gen = jax.jit(jax.vmap(lambda r: sketch.projections(jax.random.key(1), params, "layer", k, r, True)[0]))
    P = np.asarray(gen(jnp.arange(draws)), np.float64)  # [K, 49, 64]
    mean_ppt = np.einsum("rik,rjk->ij", P, P) / draws
    d = P.shape[1]
    tol = np.where(np.eye(d, dtype=bool), 5 * np.sqrt(2 / (k * draws)), 5 * np.sqrt(1 / (k * draws)))
    assert np.all(np.abs(mean_ppt - np.eye(d)) < tol), np.abs(mean_ppt - np.eye(d)).max()
    var = P.var()
    assert abs(var * k - 1) < 5 * np.sqrt(2 / P.size), var * k
    assert abs(P.mean()) < 5 / np.sqrt(k * P.size)


@pytest.mark.parametrize("name,arch,method,grouping,kw", [
    ("mlp", (16,), "structured", "layer", {}),
    ("mlp", (16,), "structured", "tensor", {"sample_chunk": 3}),
    ("mlp", (16,), "structured", "global", {}),
    ("mlp", (8, 6), "structured", "layer", {}),
    ("mlp", (16,), "forward", "layer", {"direction_chunk": 8, "sample_chunk": 5}),
    ("mlp", (16,), "materialize", "global", {"sample_chunk": 3}),
    ("cnn", (2, 4), "forward", "layer", {"direction_chunk": 8}),
    ("cnn", (2, 4), "forward", "tensor", {"direction_chunk": 32}),
    ("cnn", (2, 4), "materialize", "layer", {"sample_chunk": 4}),
])
@pytest.mark.device
@pytest.mark.slow
def test_sketch_matches_float64_and_padding_is_inert(name, arch, method, grouping, kw):
    """J~_g = J_g P_g (J float64) to 1e-5 relative; padding rows zero (one holds NaN)."""
    model, params, x, xp, J = _case(name, arch)
    k = 20  # not a multiple of the direction chunks: remainder path too
    P = sketch.projections(jax.random.key(0), params, grouping, k, 0, True)
    f = jax.jit(functools.partial(sketch.sketch_jacobian, model.apply, grouping=grouping, method=method, **kw))
    S = f(params, xp, MASK, P)
    assert len(S) == len(P) and all(s.shape == (len(MASK), model.num_classes, k) for s in S)
    assert all(s.dtype == jnp.float32 for s in S)
    got = np.concatenate([np.asarray(s) for s in S], axis=-1)
    assert np.all(got[~MASK] == 0)
    want = J @ _block_diag(P)  # [6, C, G k]
    assert _rel_err(got[MASK], want) < 1e-5, _rel_err(got[MASK], want)
    # The sketched kernel of step 5 from these sketches (symmetric blocks: 1, 3, more blocks than rows).
    want_h = np.einsum("icp,jcp->ij", want, want) / want.shape[1]
    for row_blocks in (1, 3, 9):
        H = np.asarray(jax.jit(sketched_ntk.sketched_kernel, static_argnums=2)(S, MASK, row_blocks))
        assert _rel_err(H[np.ix_(MASK, MASK)], want_h) < 1e-5
        assert np.all(H[~MASK] == 0) and np.all(H[:, ~MASK] == 0)


@pytest.mark.parametrize("arch,grouping,kw", [((16,), "layer", {}), ((16,), "tensor", {"sample_chunk": 3}),
                                               ((8, 6), "global", {"sample_chunk": 5})])
@pytest.mark.device
@pytest.mark.slow
def test_shared_first_layer_products_match_float64(arch, grouping, kw):
    """first_layer_products computed on the unpadded rows, gathered into a padded neighbourhood,
    then passed to the structured sketch == J P (float64) to 1e-5; padding rows still zero."""
    model, params, x, xp, J = _case("mlp", arch)
    P = sketch.projections(jax.random.key(1), params, grouping, 20, 0, True)
    q = jax.jit(sketch.first_layer_products, static_argnums=3)(params, jnp.asarray(x), P, grouping)
    assert q.shape == (N_REAL, arch[0], 20)
    qp = np.full((len(MASK),) + q.shape[1:], np.nan, np.float32)  # padding rows: garbage
    qp[MASK] = q
    f = jax.jit(functools.partial(sketch.sketch_jacobian, model.apply, grouping=grouping, method="structured",
                                  **kw))
    got = np.concatenate([np.asarray(s) for s in f(params, xp, MASK, P, first_layer=jnp.asarray(qp))], -1)
    assert np.all(got[~MASK] == 0)
    want = J @ _block_diag(P)
    assert _rel_err(got[MASK], want) < 1e-5, _rel_err(got[MASK], want)


@pytest.mark.parametrize("grouping", ["layer", "global"])
@pytest.mark.device
def test_column_blocks_of_shared_products_give_the_float64_sketch_and_kernel(grouping):
    """The shared schedule: k = 20 columns in 3 blocks of 7 (the last padded with a zero column);
    per block first_layer_products then the structured sketch; the blocks side by side == J P and
    the sum of the blocks' kernels == the kernel of J P (float64), padding rows zero."""
    model, params, x, xp, J = _case("mlp", (16,))
    k, plan = 20, sketch_share.SharePlan(block=7, num_blocks=3, held_bytes=0)
    P = sketch.projections(jax.random.key(3), params, grouping, k, 0, True)

    @jax.jit
    def block(P, b):
        P_b = sketch_share.projection_block(P, b, plan)
        q = sketch.first_layer_products(params, xp, P_b, grouping)  # padding rows too, as a round does
        S = sketch.sketch_jacobian(model.apply, params, xp, MASK, P_b, grouping=grouping, first_layer=q)
        return S, sketched_ntk.sketched_kernel(S, MASK)

    outs = [block(P, jnp.int32(b)) for b in range(plan.num_blocks)]
    assert block._cache_size() == 1
    got = np.concatenate([np.concatenate([np.asarray(s[g]) for s, _ in outs], -1)[..., :k]
                          for g in range(len(P))], -1)
    assert all(np.all(np.asarray(s)[..., -1] == 0) for s in outs[-1][0])  # column 21 of 21: P's zero padding
    want = J @ _block_diag(P)
    assert np.all(got[~MASK] == 0)
    assert _rel_err(got[MASK], want) < 1e-5, _rel_err(got[MASK], want)
    H = sum(np.asarray(h, np.float64) for _, h in outs)
    want_h = np.einsum("icp,jcp->ij", want, want) / want.shape[1]
    assert _rel_err(H[np.ix_(MASK, MASK)], want_h) < 1e-5
    assert np.all(H[~MASK] == 0) and np.all(H[:, ~MASK] == 0)


def test_plan_shared_first_layer():
    params = models.make_model("mlp", hidden=(16,)).init(jax.random.key(0))
    per_column = 4 * 50 * 16  # float32 products of one column for 50 samples, fan_out 16
    plan = functools.partial(sketch_share.plan_shared_first_layer, params=params, grouping="layer", k=64, samples=50,
                             fixed_bytes=1000)
    assert plan("off", max_bytes=1e12) == (0, 0, 0) and plan(False, max_bytes=1e12) == (0, 0, 0)
    assert plan("auto", max_bytes=1e12) == (64, 1, 1000 + 64 * per_column)
    assert plan(True, max_bytes=1e12).num_blocks == 1
    # room for 40 columns: 2 blocks of 32 (even), held bytes within the bound
    p = plan("auto", max_bytes=1000 + 40 * per_column)
    assert (p.block, p.num_blocks) == (32, 2) and p.held_bytes <= 1000 + 40 * per_column
    p = plan("auto", max_bytes=1000 + 25 * per_column, min_block=8)  # 3 blocks of 22 (66 columns, 2 zero)
    assert (p.block, p.num_blocks) == (22, 3)
    assert plan("auto", max_bytes=1000 + 20 * per_column) == (0, 0, 0)  # < min_block 32: not shared
    assert plan("on", max_bytes=1000 + 20 * per_column) == (16, 4, 1000 + 16 * per_column)  # on: what fits, even
    assert plan("on", max_bytes=0).block == 1  # forced: one column at a time, over the bound
    with pytest.raises(ValueError, match="share_first_layer must be one of"):
        plan("sometimes", max_bytes=1e12)


@pytest.mark.device
@pytest.mark.slow
def test_back_project_update_matches_float64_and_the_sketched_update():
    """P_g P_g^T Delta_g (float64) per group; with Delta = -(eta/N) J^T R it equals the update from J P."""
    model, params, x, xp, J = _case("mlp", (16,))
    k, T, eta = 24, 3, 0.37
    P = sketch.projections(jax.random.key(12), params, "tensor", k, 0, True)
    R = np.random.default_rng(4).normal(size=(T, len(MASK), model.num_classes)).astype(np.float32)
    R[:, ~MASK] = 0.0
    g = np.einsum("ncd,tnc->td", J, np.asarray(R[:, MASK], np.float64)) * (-eta / N_REAL)  # exact Delta [T, d]
    leaves, treedef = jax.tree.flatten(params)
    sizes = np.cumsum([0] + [np.size(a) for a in leaves])
    delta = treedef.unflatten([jnp.asarray(g[:, a:b].reshape((T,) + np.shape(p)), jnp.float32)
                               for a, b, p in zip(sizes, sizes[1:], leaves)])
    got = jax.jit(functools.partial(sketched_ntk.back_project_update, params=params, grouping="tensor"))(P, delta)
    got = np.concatenate([np.asarray(a).reshape(T, -1) for a in jax.tree.leaves(got)], axis=1)
    Pb = _block_diag(P)
    want = (g @ Pb) @ Pb.T
    assert _rel_err(got, want) < 1e-5, _rel_err(got, want)
    S = sketch.sketch_jacobian(model.apply, params, xp, MASK, P, grouping="tensor", method="structured")
    via_sketch = sketched_ntk.sketched_weight_updates(S, P, params, "tensor", jnp.asarray(R), np.float32(eta), MASK)
    via_sketch = np.concatenate([np.asarray(a).reshape(T, -1) for a in jax.tree.leaves(via_sketch)], axis=1)
    assert _rel_err(via_sketch, want) < 1e-5


@pytest.mark.slow
def test_sketch_vmap_over_nodes_with_shared_projection():
    """The caller's pattern: P drawn once, closed over, per-node function vmapped over nodes."""
    model = models.make_model("mlp", hidden=(16,))
    nodes = [numpy_params(model, m) for m in range(3)]
    params = jax.tree.map(lambda *a: np.stack(a), *nodes)
    x = np.random.default_rng(5).normal(size=(3, 5, 28, 28, 1)).astype(np.float32)
    mask = np.arange(5)[None, :] < np.array([[5], [3], [1]])
    P = sketch.projections(jax.random.key(2), nodes[0], "layer", 12, 1, True)
    for method in ("structured", "forward"):
        node = lambda p, xi, mi: sketch.sketch_jacobian(model.apply, p, xi, mi, P, grouping="layer",
                                                        method=method, direction_chunk=5)
        batched = jax.jit(jax.vmap(node))(params, x, mask)
        for m in range(3):
            one = jax.jit(node)(nodes[m], x[m], mask[m])
            chex.assert_trees_all_close(tuple(a[m] for a in batched), one, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sketched_kernel_error_shrinks_like_inverse_sqrt_k(xla_optimized):
    """Mean (over 10 seeds) relative Frobenius error of H~ vs the exact H: log-log slope ~ -1/2.

    For a Gaussian sketch Var(u^T P P^T v) = (|u|^2 |v|^2 + (u.v)^2) / k, so the
    error is O(k^-1/2) exactly in expectation; accepted slope [-0.65, -0.35].
    """
    _, params, x, _, J = _case("mlp", (16,))
    H = np.einsum("icp,jcp->ij", J, J) / J.shape[1]
    ks, seeds = (64, 256, 1024), 10
    Jf = jnp.asarray(J, jnp.float32)
    errors = []
    for k in ks:
        @jax.jit
        def error(seed, k=k):
            P = sketch.projections(jax.random.key(seed), params, "layer", k, 0, False)
            rows = np.cumsum([0] + list(sketch.group_sizes(params, "layer")))
            S = tuple(jnp.matmul(Jf[..., a:b], p, precision="highest") for a, b, p in zip(rows, rows[1:], P))
            Hs = sketched_ntk.sketched_kernel(S, None)
            return jnp.linalg.norm(Hs - H.astype(np.float32)) / np.linalg.norm(H)

        errors.append(np.mean(np.asarray(jax.lax.map(error, jnp.arange(seeds)))))
    slope = np.polyfit(np.log(ks), np.log(errors), 1)[0]
    assert -0.65 <= slope <= -0.35, (slope, errors)
    assert errors[0] < 0.5  # k = 64 on 6 samples: roughly sqrt(2/k) relative


def _toy_params():
    """Two layer-groups: A = {'bias' [7], 'kernel' [6, 7]} (d = 49), B = {'w' [3]}."""
    return {"B": {"w": np.zeros(3, np.float32)},
            "A": {"kernel": np.zeros((6, 7), np.float32), "bias": np.zeros(7, np.float32)}}


def test_back_project_matches_numpy_and_is_unbiased():
    params = _toy_params()
    assert sketch.sketch_groups(params, "layer") == ((("A", "bias"), ("A", "kernel")), (("B", "w"),))
    k, T = 64, 2
    rng = np.random.default_rng(0)
    g = [rng.normal(size=(T, k)).astype(np.float32) for _ in range(2)]
    P = sketch.projections(jax.random.key(4), params, "layer", k, 0, True)
    out = jax.jit(functools.partial(sketched_ntk.back_project, params=params, grouping="layer"))(P, g)
    assert out["A"]["kernel"].shape == (T, 6, 7) and out["A"]["bias"].shape == (T, 7)
    assert out["B"]["w"].shape == (T, 3)
    for p, gg, leaves in zip(P, g, ([out["A"]["bias"], out["A"]["kernel"]], [out["B"]["w"]])):
        want = np.asarray(gg, np.float64) @ np.asarray(p, np.float64).T  # [T, d_g]
        got = np.concatenate([np.asarray(a).reshape(T, -1) for a in leaves], axis=1)  # ravel order
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())

    # Unbiased: E[P P^T v] = v. Per draw Var((P P^T v)_i) = (|v|^2 + v_i^2) / k; mean of K draws, 5 sigma.
    draws = 2000
    v = {"A": {"bias": rng.normal(size=7), "kernel": rng.normal(size=(6, 7))}, "B": {"w": rng.normal(size=3)}}
    v_rows = [np.concatenate([v["A"]["bias"], v["A"]["kernel"].ravel()]), v["B"]["w"]]

    @jax.jit
    @jax.vmap
    def roundtrip(r):
        Pr = sketch.projections(jax.random.key(9), params, "layer", k, r, True)
        sk = [jnp.asarray(vr, jnp.float32) @ p for vr, p in zip(v_rows, Pr)]  # P_g^T v_g  [k]
        return sketched_ntk.back_project(Pr, sk, params, "layer")

    mean = jax.tree.map(lambda a: np.asarray(a, np.float64).mean(axis=0), roundtrip(jnp.arange(draws)))
    for name, vv in zip(("A", "B"), v_rows):
        got = np.concatenate([np.ravel(mean[name][leaf]) for leaf in sorted(v[name])])  # ravel order
        sigma = np.sqrt((vv @ vv + vv**2) / (k * draws))
        assert np.all(np.abs(got - vv) < 5 * sigma), np.max(np.abs(got - vv) / sigma)


@pytest.mark.parametrize("method,grouping", [("structured", "layer"), ("forward", "tensor")])
@pytest.mark.device
def test_sketched_weight_updates_match_float64(method, grouping):
    """Delta_tau = -(eta/N) P P^T J^T R_tau (J float64), padding residuals (garbage) ignored."""
    model, params, x, xp, J = _case("mlp", (16,))
    k, T, eta = 24, 3, 0.37
    rng = np.random.default_rng(3)
    R = rng.normal(size=(T, len(MASK), model.num_classes)).astype(np.float32)
    R[:, ~MASK] = 1e3
    P = sketch.projections(jax.random.key(11), params, grouping, k, 2, True)

    @jax.jit
    def updates(params, xp, mask, P, R, eta):
        S = sketch.sketch_jacobian(model.apply, params, xp, mask, P, grouping=grouping, method=method)
        return sketched_ntk.sketched_weight_updates(S, P, params, grouping, R, eta, mask)

    delta = updates(params, xp, MASK, P, R, np.float32(eta))
    Pb = _block_diag(P)
    g = np.einsum("ncd,tnc->td", J, np.asarray(R[:, MASK], np.float64))  # J^T R  [T, d]
    want = -(eta / N_REAL) * (g @ Pb) @ Pb.T  # block-diagonal P: P_g P_g^T per group
    got = np.concatenate([np.asarray(a).reshape(T, -1) for a in jax.tree.leaves(delta)], axis=1)
    assert _rel_err(got, want) < 1e-5, _rel_err(got, want)
    chex.assert_trees_all_equal_shapes(delta, jax.tree.map(lambda p: np.zeros((T,) + p.shape), params))


def test_resolve_method():
    assert sketch.resolve_method("auto", models.supports_structured("mlp")) == "structured"
    assert sketch.resolve_method("auto", models.supports_structured("cnn")) == "forward"
    assert sketch.resolve_method("materialize", True) == "materialize"
    with pytest.raises(ValueError, match="unknown sketch method"):
        sketch.resolve_method("fast", True)
    with pytest.raises(TypeError, match="structured capability"):
        sketch.resolve_method("auto", "mlp")  # the old signature (a model name) fails loudly


def test_bad_inputs_raise_clear_errors():
    model, params, x, *_ = _case("mlp", (16,))
    cnn, cnn_params, *_ = _case("cnn", (2, 4))
    key = jax.random.key(0)
    P = sketch.projections(key, params, "layer", 4, 0, True)
    with pytest.raises(ValueError, match="unknown sketch grouping"):
        sketch.sketch_groups(params, "module")
    with pytest.raises(ValueError, match="unknown sketch grouping"):
        sketch.projections(key, params, "per_layer", 4, 0, True)
    for bad_k in (0, -3, 2.5):
        with pytest.raises(ValueError, match="k must be an int >= 1"):
            sketch.projections(key, params, "layer", bad_k, 0, True)
    with pytest.raises(ValueError, match="unknown sketch method"):
        sketch.sketch_jacobian(model.apply, params, x, None, P, grouping="layer", method="auto")
    cnn_P = sketch.projections(key, cnn_params, "layer", 4, 0, True)
    with pytest.raises(ValueError, match="dense ReLU MLPs.*method='forward'"):
        sketch.sketch_jacobian(cnn.apply, cnn_params, x, None, cnn_P, grouping="layer", method="structured")
    with pytest.raises(ValueError, match="one per group"):
        sketch.sketch_jacobian(model.apply, params, x, None, P[:1], grouping="layer")
    with pytest.raises(ValueError, match=r"P\[0\] must be \[d_g=12560, k\]"):
        sketched_ntk.back_project((P[0][:5], P[1]), (jnp.zeros(4), jnp.zeros(4)), params, "layer")
    with pytest.raises(ValueError, match=r"P\[0\] must be \[d_g=16, k\]"):
        sketch.sketch_jacobian(model.apply, params, x, None, P + P, grouping="tensor")
    with pytest.raises(ValueError, match="direction_chunk"):
        sketch.sketch_jacobian(model.apply, params, x, None, P, grouping="layer", method="forward",
                               direction_chunk=0)
