"""Evolution integrators (SPEC step 7) on a real neighbourhood: accuracy vs a float64 solver, and speed.

  python -m benchmarks.evolution [--nodes=6] [--etas=0.01,0.005] [--data_dir=DIR]
  python -m benchmarks.evolution --neighbourhood=demo

The neighbourhood is the first `--nodes` nodes of the NTK-DFL partition
fmnist300/alpha0.1/seed0 (N ~ 200 per node, real Fashion-MNIST), the kernel H
the structured NTK of the 784-100-10 MLP at its initialisation; or (`demo`)
the stiffest of the first 8 neighbourhoods of the reference demo setting in
round 0, at eta_0. Taus {100, 200, 400, 600, 800}. For every eta it prints the stiffness
eta * lambda_max(H) / N (per grid interval), then for every integrator the
median time (one node; and `--batch` nodes vmapped, as in a node chunk), the
number of kernel products (data-dependent for the adaptive "dopri5"), the
achieved FLOP/s of the kernel products (useful C = 10 columns only, also when
padded), and the largest errors against scipy's
DOP853 in float64 (rtol 1e-10): max |F(s_tau) - F_ref| and
max |R_tau - R_ref| / tau (R_tau sums tau residuals of size <= 1).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

from spark_jax import ntk
from spark_jax.setting import data, models, partition

TAUS = (100, 200, 400, 600, 800)
# name, evolve_logits options; "+pad" = the classes of every kernel product padded to 16
# (`algorithm_kw.compute.product_columns`).
INTEGRATORS = (("rk4", dict(method="rk4")),
               ("rk4 +pad", dict(method="rk4", columns=16)),
               ("rk4 2 sub-steps", dict(method="rk4", substeps=2)),
               ("rk4_hermite/2", dict(method="rk4_hermite", stride=2, warmup=0)),
               ("rk4_hermite/4", dict(method="rk4_hermite", stride=4, warmup=0)),
               ("rk4_hermite/4 w50", dict(method="rk4_hermite", stride=4, warmup=50)),
               ("rk4_hermite/8 w50", dict(method="rk4_hermite", stride=8, warmup=50)),
               ("dopri5 1e-6", dict(method="dopri5")),
               ("dopri5 1e-5", dict(method="dopri5", rtol=1e-5, atol=1e-5)),
               ("imex 3e-5 (default)", dict(method="imex", rtol=3e-5, atol=3e-5, max_stride=200)),
               ("imex 3e-5 +pad", dict(method="imex", rtol=3e-5, atol=3e-5, max_stride=200, columns=16)),
               ("imex 5e-5", dict(method="imex", rtol=5e-5, atol=5e-5, max_stride=200)),
               ("imex 3e-5 16 modes", dict(method="imex", rtol=3e-5, atol=3e-5, max_stride=200, split_modes=16)),
               ("euler", dict(method="euler")))


def reference(H, F0, Y, eta):
    """Float64 DOP853: F(s_tau) [T, N, C] and R_tau [T, N, C]."""
    n = H.shape[0]
    softmax = lambda F: np.exp(F - F.max(-1, keepdims=True)) / np.exp(F - F.max(-1, keepdims=True)).sum(-1, keepdims=True)
    rhs = lambda s, f: (-(H @ (softmax(f.reshape(n, -1)) - Y)) / n).ravel()
    grid = eta * np.arange(TAUS[-1] + 1)
    sol = solve_ivp(rhs, (0.0, grid[-1]), F0.ravel(), method="DOP853", t_eval=grid, rtol=1e-10, atol=1e-10)
    F = sol.y.T.reshape(len(grid), n, -1)
    R = np.cumsum(softmax(F[:-1]) - Y, axis=0)
    idx = np.asarray(TAUS)
    return F[idx], R[idx - 1], sol.nfev


def first_nodes_neighbourhood(nodes: int, data_dir):
    """H, F0, Y of the first `nodes` nodes of fmnist300/alpha0.1/seed0 (MLP at its init), and a label."""
    ds = data.load_dataset("fashion_mnist", data_dir)
    part = partition.load_ntk_dfl_partition("fashion_mnist", 300, "alpha0.1", 0, data_dir=data_dir)
    idx = part.indices[: int(part.offsets[nodes])]
    x = jnp.asarray(data.normalize_images(ds.train_images[idx], ds.name))
    model = models.make_model("mlp")
    params = model.init(jax.random.key(0))
    mask = jnp.ones(x.shape[0], bool)
    H = jax.jit(functools.partial(ntk.neighbourhood_kernel, model.apply, method="structured"))(params, x, mask)
    Y = jax.nn.one_hot(ds.train_labels[idx].astype(np.int32), model.num_classes)
    return H, model.apply(params, x), Y, f"first {nodes} nodes of fmnist300/alpha0.1/seed0"


def stiffest_demo_neighbourhood(data_dir):
    """The reference demo setting (`fmnist_ntk_dfl`, 30 nodes, 2-regular), round 0: of the first 8
    neighbourhoods the one with the largest eta_0 * lambda_max(H) / N. Returns H, F0, Y (real rows),
    eta_0 and a label."""
    return run_neighbourhoods(data_dir, rounds=(0,), num_nodes=30)[0]


def run_neighbourhoods(data_dir, rounds, num_nodes: int = 30, degree: int = 2, candidates: int = 8):
    """Real neighbourhoods of a real NTK-DFL run (`fmnist_ntk_dfl` with `num_nodes` nodes, dynamic
    `degree`-regular, SPEC defaults, the default integrator): the run goes round by round and, at
    each round r in `rounds`, of the first `candidates` neighbourhoods the stiffest (largest
    eta_r * lambda_max(H) / N) at the round's averaged weights w̄_i is returned as
    (H, F0, Y (real rows), eta_r, label). Later rounds have trained weights and a decayed eta_r."""
    from experiments.configs import fmnist_ntk_dfl  # pylint: disable=g-import-not-at-top
    from spark_jax.algorithms import schedules  # pylint: disable=g-import-not-at-top
    from spark_jax.algorithms.base import mix  # pylint: disable=g-import-not-at-top
    from spark_jax.algorithms.ntk_round import gather_neighbourhood  # pylint: disable=g-import-not-at-top
    from benchmarks.common import node_phases_for, prepare_or_exit  # pylint: disable=g-import-not-at-top
    from spark_jax.runner.experiment import round_inputs  # pylint: disable=g-import-not-at-top
    from spark_jax.rng import stream_key  # pylint: disable=g-import-not-at-top

    config = fmnist_ntk_dfl.get_config()
    config.partition.num_nodes, config.topology.degree = num_nodes, degree
    if data_dir:
        config.data.data_dir = data_dir
    setup = prepare_or_exit(config)
    nc = config.algorithm_kw
    state = setup.algorithm.init(stream_key(config.seed, "init"), setup.node_data)
    ph = node_phases_for(config, setup.model)
    kernel, round_fn = jax.jit(ph.kernel), jax.jit(setup.algorithm.round)
    found = []
    for r in range(max(rounds) + 1):
        inputs = round_inputs(setup.topology.graph(r), r, stream_key(config.seed, "train"))
        if r in rounds:
            eta = float(schedules.learning_rate(nc.eta0, nc.decay, inputs.round_index))
            w_bar = mix(state.params, inputs.neighbors, inputs.weights)
            best = None
            for i in range(candidates):
                w = jax.tree.map(lambda a: a[i], w_bar)
                x, labels, mask = gather_neighbourhood(setup.node_data, inputs.neighbors[i], inputs.mask[i])
                real = np.asarray(mask)
                H = kernel(w, x, mask, None, None)[real][:, real]
                stiffness = eta * float(np.linalg.eigvalsh(np.asarray(H, np.float64))[-1]) / real.sum()
                if best is None or stiffness > best[0]:
                    f0, y = ph.targets(w, x, labels, mask, None, 0.0)
                    best = (stiffness, H, f0[real], y[real], i)
            _, H, F0, Y, node = best
            found.append((H, F0, Y, eta, f"NTK-DFL {num_nodes} nodes, {degree}-regular, round {r}, node {node}'s "
                                         f"neighbourhood"))
        if r < max(rounds):
            state, _ = round_fn(state, setup.node_data, inputs)
    return found


def timed(fn, *args, repeats):
    compiled = jax.jit(fn).lower(*args).compile()
    out = jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neighbourhood", choices=("first_nodes", "demo", "run"), default="first_nodes",
                        help="first_nodes: the first --nodes nodes of fmnist300/alpha0.1/seed0 at init, --etas; "
                             "demo: the stiffest of the first 8 neighbourhoods of the demo setting (30 nodes, "
                             "2-regular) in round 0 at eta_0; run: the stiffest of the first 8 neighbourhoods of an "
                             "8-node NTK-DFL run (2-regular) at each of --rounds (trained weights, eta decayed)")
    parser.add_argument("--rounds", default="0,10,25", help="rounds of the 'run' neighbourhoods")
    parser.add_argument("--nodes", type=int, default=6, help="nodes whose data form the neighbourhood")
    parser.add_argument("--etas", default="0.01,0.005", help="comma-separated learning rates")
    parser.add_argument("--batch", type=int, default=8, help="nodes vmapped together (node chunk)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data_dir", default=None)
    args = parser.parse_args()

    if args.neighbourhood == "first_nodes":
        H, F0, Y, what = first_nodes_neighbourhood(args.nodes, args.data_dir)
        etas = [float(e) for e in args.etas.split(",")]
    elif args.neighbourhood == "demo":
        H, F0, Y, eta, what = stiffest_demo_neighbourhood(args.data_dir)
        etas = [eta]
    else:
        rounds = tuple(int(r) for r in args.rounds.split(","))
        for H, F0, Y, eta, what in run_neighbourhoods(args.data_dir, rounds, num_nodes=8):
            compare(H, F0, Y, [eta], what, args)
        return
    compare(H, F0, Y, etas, what, args)


def compare(H, F0, Y, etas, what, args):
    """Prints, for every eta, each integrator's products, times and errors against float64 DOP853."""
    n, c = F0.shape
    mask = jnp.ones(n, bool)
    H64, F064, Y64 = (np.asarray(a, np.float64) for a in (H, F0, Y))
    lam = float(np.linalg.eigvalsh(H64)[-1])
    flops_per_product = 2 * n * n * c
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; neighbourhood = {what}, N = {n}, C = {c}, "
          f"taus {TAUS}; lambda_max(H)/N = {lam / n:.1f}")
    Hb, F0b, Yb, maskb = (jnp.broadcast_to(a, (args.batch,) + a.shape) for a in (H, F0, Y, mask))
    for eta in etas:
        t0 = time.perf_counter()
        F_ref, R_ref, nfev = reference(H64, F064, Y64, eta)
        print(f"\neta = {eta:g}: stiffness eta*lambda_max/N = {eta * lam / n:.2f} per grid interval; "
              f"float64 DOP853 reference {time.perf_counter() - t0:.1f} s ({nfev} RHS evaluations)")
        print(f"  {'integrator':<22s} {'products':>8s} {'1 node s':>9s} {'GFLOP/s':>8s} {f'{args.batch} nodes s':>10s} "
              f"{'GFLOP/s':>8s} {'max|dF|':>9s} {'max|dR|/tau':>11s}")
        base = None
        for name, kw in INTEGRATORS:
            fn = functools.partial(ntk.evolve_logits, taus=TAUS, **kw)
            t1, evo = timed(fn, H, F0, Y, mask, jnp.float32(eta), repeats=args.repeats)
            tb, _ = timed(jax.vmap(fn, in_axes=(0, 0, 0, 0, None)), Hb, F0b, Yb, maskb, jnp.float32(eta),
                          repeats=args.repeats)
            products = int(evo.products)
            ef = float(np.max(np.abs(np.asarray(evo.logits, np.float64) - F_ref)))
            er = float(np.max(np.abs(np.asarray(evo.residual_sums, np.float64) - R_ref)
                              / np.asarray(TAUS)[:, None, None]))
            base = base or t1
            print(f"  {name:<22s} {products:8d} {t1:9.3f} {products * flops_per_product / t1 / 1e9:8.1f} "
                  f"{tb:10.3f} {args.batch * products * flops_per_product / tb / 1e9:8.1f} {ef:9.1e} {er:11.1e}"
                  f"   ({base / t1:.1f}x faster than rk4)")


if __name__ == "__main__":
    main()
