"""Float64 end to end (issue 15): with x64 on and float64 params / data every float an NTK round computes
is float64 and the round matches an independent float64 NumPy reference; float32 stays float32.

The reference (`_reference_round`) is written out step by step in NumPy on each node's unpadded
neighbourhood: the mixing W_r, the MLP's explicit Jacobian [N, C, d] (closed form, no autodiff), H (or
the sketched H~ from J P), the Euler / RK4 recursions (or scipy's DOP853), R_tau, Delta_tau, the
network-criterion choice of tau, and for SPARK the distilled targets and the momentum step.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core
from scipy.integrate import solve_ivp

from spark_jax import algorithms, ntk, rng as spark_rng
from spark_jax.ntk import sketch
from spark_jax.algorithms import ntk_dfl, spark
from spark_jax.setting.models import make_model
from spark_jax.setting.topology import padded_graph
from tests.conftest import FUSION_EMITTERS, NTK_COUNTS as COUNTS, NTK_TAUS as TAUS, ntk_adjacency as _adjacency, \
    ntk_config as _config, random_node_data as _node_data, round_inputs as _inputs

HIDDEN, C, ROUND = 8, 10, 2  # stage 3 of the SPARK configs below: lambda_max and beta on
SPARK_LAMBDA, SPARK_BETA, K = 0.5, 0.9, 8


@pytest.fixture
def x64():
    """x64 on for one test only: the rest of the suite (same process) runs float32."""
    with jax.enable_x64(True):
        yield


def _float_dtypes(tree):
    return {str(a.dtype) for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)}


def _float_ops(jaxpr, dtype, found=None):
    """Primitives of `jaxpr` (and its sub-jaxprs) with a `dtype` output. The float32 normal draws of
    P and of imex's start block (`jax.random.normal`, cast after) are skipped."""
    found = set() if found is None else found
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "jit" and eqn.params.get("name") == "_normal":
            continue
        if any(getattr(v.aval, "dtype", None) == dtype for v in eqn.outvars):
            found.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, (jax_core.ClosedJaxpr, jax_core.Jaxpr)):
                    _float_ops(getattr(sub, "jaxpr", sub), dtype, found)
    return found


def _node_data_f64(seed=0):
    """Padded float64 node data (values not float32-representable); padding rows hold garbage."""
    nd = _node_data(garbage=3.0, seed=seed, counts=COUNTS, num_classes=C, dtype=np.float64)
    return nd._replace(x=jnp.asarray(nd.x), y=jnp.asarray(nd.y), mask=jnp.asarray(nd.mask))


def _to_f64(tree, seed):
    """float64 copy of a float32 pytree, moved off the float32 grid by a small float64 perturbation."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64) + 0.01 * rng.normal(size=a.shape)), tree)


# ---------------------------------------------------------------- the float64 NumPy reference


def _softmax(F):
    e = np.exp(F - F.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _layers(flat):
    """Flat parameters in ravel order (Dense_0 bias, kernel; Dense_1 bias, kernel) -> W0, b0, W1, b1."""
    sizes = np.cumsum([HIDDEN, 784 * HIDDEN, C])
    b0, w0, b1, w1 = np.split(flat, sizes)
    return w0.reshape(784, HIDDEN), b0, w1.reshape(HIDDEN, C), b1


def _forward(flat, X):
    w0, b0, w1, b1 = _layers(flat)
    z = X @ w0 + b0
    return np.maximum(z, 0.0), (z > 0).astype(np.float64), np.maximum(z, 0.0) @ w1 + b1


def _jacobian_groups(flat, X):
    """Explicit per-layer Jacobians J_g [N, C, d_g] (rows: bias, then kernel C-order = P_g's rows)."""
    a, g, _ = _forward(flat, X)
    n, w1, eye = len(X), _layers(flat)[2], np.eye(C)
    jb0 = g[:, None, :] * w1.T[None]  # d f_c / d b0_h  [N, C, h]
    jw0 = (X[:, None, :, None] * jb0[:, :, None, :]).reshape(n, C, -1)  # x_i g_h W1[h, c]
    jb1 = np.broadcast_to(eye, (n, C, C))
    jw1 = (a[:, None, :, None] * eye[None, :, None, :]).reshape(n, C, -1)  # a_h delta(c, c')
    return [np.concatenate([jb0, jw0], -1), np.concatenate([jb1, jw1], -1)]


def _evolve(H, F0, Y, eta, integrator, substeps, taus=TAUS):
    """R_tau, F(s_tau) per tau in `taus`: the Euler / RK4 recursion of SPEC step 7, or DOP853 (rtol 1e-13)."""
    n = len(F0)
    velocity = lambda F: -(H @ (_softmax(F) - Y)) / n
    if integrator in ("dopri5", "imex"):
        grid = eta * np.arange(max(taus) + 1)
        rhs = lambda s, f: velocity(f.reshape(F0.shape)).ravel()
        sol = solve_ivp(rhs, (0.0, grid[-1]), F0.ravel(), method="DOP853", t_eval=grid, rtol=1e-13, atol=1e-14)
        Fs = sol.y.T.reshape((-1,) + F0.shape)
        R = np.concatenate([np.zeros((1,) + F0.shape), np.cumsum(_softmax(Fs[:-1]) - Y, axis=0)])
        return [R[t] for t in taus], [Fs[t] for t in taus]
    F, R, Rs, Fs = F0.copy(), np.zeros_like(F0), [], []
    for t in range(1, max(taus) + 1):
        r = _softmax(F) - Y
        if integrator == "euler":
            F = F + eta * velocity(F)
        else:
            h = eta / substeps
            for _ in range(substeps):
                k1 = velocity(F)
                k2 = velocity(F + 0.5 * h * k1)
                k3 = velocity(F + 0.5 * h * k2)
                k4 = velocity(F + h * k3)
                F = F + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        R = R + r
        if t in taus:
            Rs.append(R.copy())
            Fs.append(F.copy())
    return Rs, Fs


def _cross_entropy(logits, targets):
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return -np.mean(np.sum(targets * logp, axis=1))


def _reference_round(flat, velocity, nd, eta, integrator, substeps=2, P=None, update_mode="backproject"):
    """One NTK-DFL (P None) or SPARK (stage 3, teacher 'averaged', velocity 'local') round in float64.

    flat, velocity: [M, d]. Returns (new params [M, d], new velocity [M, d], tau index [M], loss [M])."""
    adj = _adjacency()
    m = len(COUNTS)
    W = np.zeros((m, m))
    for i in range(m):
        closed = [i] + list(np.flatnonzero(adj[i]))
        W[i, closed] = 1.0 / len(closed)
    w_bar = W @ flat
    x, y = np.asarray(nd.x, np.float64), np.asarray(nd.y)
    new, new_v, best, loss = [], [], [], []
    for i in range(m):
        closed = [i] + list(np.flatnonzero(adj[i]))
        X = np.concatenate([x[j, :COUNTS[j]] for j in closed]).reshape(-1, 784)
        Y = np.eye(C)[np.concatenate([y[j, :COUNTS[j]] for j in closed])]
        n = len(X)
        J = _jacobian_groups(w_bar[i], X)
        F0 = _forward(w_bar[i], X)[2]
        if P is None:
            H = sum(np.einsum("icp,jcp->ij", j, j) for j in J) / C
        else:  # sketched kernel from J~_g = J_g P_g; distilled targets (teacher: F0, temperature 1)
            H = sum(np.einsum("ick,jck->ij", j @ p, j @ p) for j, p in zip(J, P)) / C
            Y = (1.0 - SPARK_LAMBDA) * Y + SPARK_LAMBDA * _softmax(F0)
        Rs, _ = _evolve(H, F0, Y, eta, integrator, substeps)
        own = np.arange(n) < COUNTS[i]  # the node's own rows come first
        candidates, losses = [], []
        for R in Rs:
            if P is None:
                delta = [np.einsum("icp,ic->p", j, R) for j in J]
            elif update_mode == "backproject":
                delta = [p @ (p.T @ np.einsum("icp,ic->p", j, R)) for j, p in zip(J, P)]
            else:  # own_exact: own rows exact, neighbour rows back-projected
                delta = [np.einsum("icp,ic->p", j, R * own[:, None])
                         + p @ (p.T @ np.einsum("icp,ic->p", j, R * ~own[:, None])) for j, p in zip(J, P)]
            delta = -(eta / n) * np.concatenate(delta)
            candidates.append(delta)
            losses.append(_cross_entropy(_forward(w_bar[i] + delta, X)[2], Y))
        t = int(np.argmin(losses))
        beta, v = (0.0, 0.0) if P is None else (SPARK_BETA, velocity[i])
        v = beta * v + candidates[t]
        new.append(w_bar[i] + candidates[t] + beta * v)
        new_v.append(v)
        best.append(t)
        loss.append(losses[t])
    return np.stack(new), np.stack(new_v), np.array(best), np.array(loss)


def _flat(tree):
    """Leaves [M, ...] -> [M, d] in ravel order (NumPy float64)."""
    leaves = jax.tree.leaves(tree)
    return np.concatenate([np.asarray(a, np.float64).reshape(a.shape[0], -1) for a in leaves], axis=1)


def _rel_error(got, want):
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("integrator,kernel,tol", [  # the default integrator stays in the fast loop
    ("imex", "structured", 1e-8),
    pytest.param("euler", "structured", 1e-10, marks=pytest.mark.slow),
    pytest.param("rk4", "contraction", 1e-10, marks=pytest.mark.slow),
    pytest.param("dopri5", "structured", 1e-8, marks=pytest.mark.slow)])
def test_ntk_dfl_round_is_float64_and_matches_numpy(x64, integrator, kernel, tol):
    """Every output float64, no float32 op in the round's program, new params = the float64 reference to
    `tol` relative (1e-10 for the exact Euler / RK4 recursions; the adaptive integrators at rtol = atol
    = 1e-10 against DOP853 at 1e-13)."""
    nd = _node_data_f64()
    config = _config(integrator=integrator, kernel=kernel)
    config.algorithm_kw.evolution.rtol = config.algorithm_kw.evolution.atol = config.algorithm_kw.evolution.imex.rtol = config.algorithm_kw.evolution.imex.atol = 1e-10
    alg = ntk_dfl.from_config(config, make_model("mlp", hidden=(HIDDEN,)))
    state = alg.init(jax.random.key(3), nd)
    state = state.replace(params=_to_f64(state.params, 1))
    inputs = _inputs(padded_graph(_adjacency(), "uniform", dtype=np.float64), ROUND)
    assert _float_ops(jax.make_jaxpr(alg.round)(state, nd, inputs).jaxpr, jnp.float32) == set()
    new, metrics = jax.jit(alg.round)(state, nd, inputs)
    assert _float_dtypes((new, metrics)) == {"float64"}
    eta = 0.5 * np.exp(-0.07 * ROUND)
    want, _, best, loss = _reference_round(_flat(state.params), None, nd, eta, integrator,
                                           substeps=config.algorithm_kw.evolution.substeps)
    error = _rel_error(_flat(new.params), want)
    print(f"{integrator}/{kernel}: max relative error of the new params {error:.2e}")
    assert error < tol, error
    np.testing.assert_array_equal(metrics["tau_histogram"], np.bincount(best, minlength=len(TAUS)))
    assert abs(float(metrics["eta"]) - eta) < 1e-15
    assert abs(float(metrics["train_loss"]) - loss.mean()) < tol * loss.mean()


@pytest.mark.parametrize("share,update_mode,integrator", [("off", "backproject", "euler"),
                                                          pytest.param("on", "own_exact", "rk4",
                                                                       marks=pytest.mark.slow)])
def test_spark_sketched_round_is_float64_and_matches_numpy(x64, share, update_mode, integrator):
    """SPARK in stage 3 (sketch k = 8 per layer, distillation, momentum): every output float64 and finite,
    P is the float32 draw cast to float64, and the round equals the float64 reference to 1e-10."""
    nd = _node_data_f64(1)
    c = _config(integrator=integrator)
    c = algorithms.with_algorithm(c, "spark")
    c.rounds, kw = 6, c.algorithm_kw
    kw.sketch.enabled, kw.sketch.k, kw.compute.sketch_method, kw.sketch.grouping = True, K, "structured", "layer"
    kw.sketch.update_mode, kw.compute.share_first_layer = update_mode, share
    kw.distill.lambda_max, kw.distill.teacher = SPARK_LAMBDA, "averaged"
    kw.momentum.beta, kw.momentum.velocity = SPARK_BETA, "local"
    kw.stages.unit, kw.stages.boundaries = "round", (0, 1)
    alg = spark.from_config(c, make_model("mlp", hidden=(HIDDEN,)))
    state = alg.init(jax.random.key(0), nd)
    state = state.replace(params=_to_f64(state.params, 2), velocity=_to_f64(state.velocity, 3))
    inputs = _inputs(padded_graph(_adjacency(), "uniform", dtype=np.float64), ROUND)
    assert _float_ops(jax.make_jaxpr(alg.round)(state, nd, inputs).jaxpr, jnp.float32) <= {"optimization_barrier"}
    # P bitwise the eager float32 draw, cast (`sketch.projections`: the same in every program): a guarantee of
    # XLA:CPU's fusion emitters, which the suite otherwise swaps for faster-compiling ones (tests/conftest.py)
    new, metrics = jax.jit(alg.round, compiler_options=FUSION_EMITTERS)(state, nd, inputs)
    assert _float_dtypes((new, metrics)) == {"float64"}
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(new))
    assert (float(metrics["lambda"]), float(metrics["beta"])) == (SPARK_LAMBDA, SPARK_BETA)
    sketch_key = spark_rng.stream_key(c.seed, "sketch")
    P = [np.asarray(jax.random.normal(sketch.projection_key(sketch_key, g, ROUND, True), (d, K), jnp.float32),
                    np.float64) / np.sqrt(K) for g, d in enumerate((785 * HIDDEN, (HIDDEN + 1) * C))]
    eta = 0.5 * np.exp(-0.07 * ROUND)
    want, want_v, best, _ = _reference_round(_flat(state.params), _flat(state.velocity), nd, eta, integrator,
                                             substeps=c.algorithm_kw.evolution.substeps, P=P, update_mode=update_mode)
    errors = _rel_error(_flat(new.params), want), _rel_error(_flat(new.velocity), want_v)
    print(f"{share}/{update_mode}/{integrator}: max relative errors (params, velocity) {errors}")
    assert max(errors) < 1e-10, errors
    np.testing.assert_array_equal(metrics["tau_histogram"], np.bincount(best, minlength=len(TAUS)))


def _evolution_problem(seed=0, n=14, real=12, classes=3):
    """A PSD kernel with zero padding rows / columns, F0 (garbage on padding), soft targets; stiffness 1."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(real, 2 * real))
    H = np.zeros((n, n))
    H[:real, :real] = a @ a.T / 4.0
    F0 = np.full((n, classes), 5.0)
    F0[:real] = rng.normal(size=(real, classes))
    Y = np.zeros((n, classes))
    Y[:real] = 0.7 * np.eye(classes)[rng.integers(0, classes, real)] + 0.3 * rng.dirichlet(np.ones(classes), real)
    eta = 1.0 * real / np.linalg.eigvalsh(H)[-1]
    return H, F0, Y, np.arange(n) < real, eta


@pytest.mark.parametrize("method", ntk.INTEGRATORS)
def test_evolve_logits_float64(x64, method):
    """float64 in, float64 out; the fixed-step integrators equal their NumPy recursion (1e-12), the
    adaptive ones at rtol = atol = 1e-10 equal DOP853 at 1e-13 to 1e-8."""
    H, F0, Y, mask, eta = _evolution_problem()
    taus = (1, 13, 50, 120)
    options = {"rk4": dict(substeps=2), "rk4_hermite": dict(stride=1), "euler": {},
               "dopri5": dict(rtol=1e-10, atol=1e-10), "imex": dict(rtol=1e-10, atol=1e-10, split_modes=4)}[method]
    fn = jax.jit(functools.partial(ntk.evolve_logits, taus=taus, method=method, **options))
    out = fn(jnp.asarray(H), jnp.asarray(F0), jnp.asarray(Y), jnp.asarray(mask), jnp.float64(eta))
    assert _float_dtypes(out) == {"float64"}
    real = mask
    # The reference on the real rows (N = N_true); rk4_hermite at stride 1 is RK4 with one step per interval.
    reference = "rk4" if method.startswith("rk4") else method
    Rs, Fs = _evolve(H[np.ix_(real, real)], F0[real], Y[real], eta, reference, options.get("substeps", 1), taus)
    tol = 1e-8 if method in ("dopri5", "imex") else 1e-12
    logits, sums = np.asarray(out.logits), np.asarray(out.residual_sums)
    assert np.all(logits[:, ~real] == 0) and np.all(sums[:, ~real] == 0)
    error_f = np.max(np.abs(logits[:, real] - np.stack(Fs)))
    error_r = np.max(np.abs(sums[:, real] - np.stack(Rs)) / np.asarray(taus)[:, None, None])
    print(f"{method}: max |F - ref| {error_f:.2e}, max |R - ref| / tau {error_r:.2e}")
    assert max(error_f, error_r) < tol, (error_f, error_r)


@pytest.mark.slow
def test_float32_rounds_stay_float32():
    """float32 params and data give float32 everywhere even with x64 on (no float64 op in the program),
    for an NTK-DFL round and a sketched SPARK round. (With x64 off no float64 can arise: not tested.)"""
    with jax.enable_x64(True):
        nd = jax.tree.map(jnp.asarray, _node_data())
        inputs = _inputs(padded_graph(_adjacency(), "uniform"), ROUND)
        model = make_model("mlp", hidden=(HIDDEN,))
        c = _config(integrator="imex")
        c = algorithms.with_algorithm(c, "spark")
        c.rounds, kw = 6, c.algorithm_kw
        kw.sketch.enabled, kw.sketch.k, kw.distill.lambda_max, kw.momentum.beta = True, K, SPARK_LAMBDA, SPARK_BETA
        kw.stages.unit, kw.stages.boundaries = "round", (0, 1)
        for alg in (ntk_dfl.from_config(_config(integrator="dopri5"), model), spark.from_config(c, model)):
            state = alg.init(jax.random.key(0), nd)
            assert _float_ops(jax.make_jaxpr(alg.round)(state, nd, inputs).jaxpr, jnp.float64) == set()
            new, metrics = jax.jit(alg.round)(state, nd, inputs)
            assert _float_dtypes((new, metrics)) == {"float32"}, alg.name
