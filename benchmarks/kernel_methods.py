"""Timings of the NTK core (spark_jax.ntk) for one node's neighbourhood.

`python -m benchmarks.kernel_methods` — the default 784-100-10 MLP, N = 1200
random samples; about 2 min on 2 CPU cores (`--skip_slow` drops the ntvp kernel
and the per-sample forward-mode Jacobian; `--n` changes N).

Every function is compiled ahead of time (`jit(...).lower(...).compile()`,
compile time printed separately), then timed as the median of `--repeats`
runs with `block_until_ready`; slow items run fewer times (see `runs`).
Forward-mode Jacobians cost d = 79,510 JVPs per sample, so they are timed, with
reverse mode on the same rows for the ratio, on `--fwd_n` samples only.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from spark_jax import ntk
from spark_jax.setting import models
from spark_jax.setting.models import num_params

TAUS = (100, 200, 400, 600, 800)


def timed(name, fn, *args, repeats=3, rows=None):
    """Compiles `fn` for `args`, runs it `repeats` times; prints and returns (median s, output)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    times, out = [], None
    for _ in range(repeats):
        out = None  # free the last output first (the Jacobian is GiBs)
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    extra = f"  ({med / rows * 1e3:.2f} ms/sample)" if rows else ""
    print(f"  {name:<44s} {med:9.3f} s  [compile {compile_s:5.1f} s, runs {repeats}]{extra}", flush=True)
    return med, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1200)
    parser.add_argument("--chunk", type=int, default=200, help="samples per Jacobian / ntvp chunk")
    parser.add_argument("--fwd_n", type=int, default=4, help="samples for the forward-mode Jacobian")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip_slow", action="store_true")
    args = parser.parse_args()

    model = models.make_model("mlp")
    params = model.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    n, c = args.n, model.num_classes
    x = jnp.asarray(rng.normal(size=(n, 28, 28, 1)), jnp.float32)
    mask = jnp.ones(n, bool)
    y = jax.nn.one_hot(jnp.asarray(rng.integers(0, c, n)), c)
    eta = jnp.float32(0.01)
    apply = model.apply
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; MLP 784-100-10, d = {num_params(params):,}, "
          f"N = {n}, C = {c}, chunk = {args.chunk}")
    t = {}

    print("Jacobian (SPEC step 3)")
    jac_bytes = n * c * num_params(params) * 4
    t["jac_rev"], _ = timed(f"rev  vmap(jacrev), N={n} [{jac_bytes / 2**30:.1f} GiB]",
                            functools.partial(ntk.per_sample_jacobian, apply, chunk_size=args.chunk),
                            params, x, repeats=args.repeats, rows=n)
    if not args.skip_slow:
        xs = x[:args.fwd_n]
        t["jac_rev_small"], _ = timed(f"rev  vmap(jacrev), N={args.fwd_n}",
                                      functools.partial(ntk.per_sample_jacobian, apply), params, xs,
                                      repeats=args.repeats, rows=args.fwd_n)
        t["jac_fwd_small"], _ = timed(f"fwd  chunked JVPs,  N={args.fwd_n}",
                                      functools.partial(ntk.per_sample_jacobian, apply, mode="fwd",
                                                        tangent_chunk=2048),
                                      params, xs, repeats=1, rows=args.fwd_n)

    print("Kernel H [N, N] (SPEC step 5)")
    t["structured"], h = timed("structured (MLP, no Jacobian)",
                               functools.partial(ntk.neighbourhood_kernel, apply, method="structured"),
                               params, x, mask, repeats=args.repeats)
    t["contraction"], h_c = timed("contraction (Jacobian + GEMM)",
                                  functools.partial(ntk.neighbourhood_kernel, apply, method="contraction",
                                                    chunk_size=args.chunk),
                                  params, x, mask, repeats=max(1, args.repeats - 1))
    err = float(jnp.max(jnp.abs(h - h_c)) / jnp.max(jnp.abs(h_c)))
    print(f"    max |H_structured - H_contraction| / max |H| = {err:.1e}")
    if not args.skip_slow:
        t["ntvp"], h_n = timed("ntvp (J (J^T v), column chunks)",
                               functools.partial(ntk.neighbourhood_kernel, apply, method="ntvp",
                                                 chunk_size=args.chunk // 4),
                               params, x, mask, repeats=1)
        err = float(jnp.max(jnp.abs(h - h_n)) / jnp.max(jnp.abs(h_c)))
        print(f"    max |H_structured - H_ntvp| / max |H| = {err:.1e}")

    print(f"Evolution (SPEC step 7), taus {TAUS}")
    f0 = apply(params, x)
    evolve = lambda method, substeps: functools.partial(ntk.evolve_logits, taus=TAUS, method=method,
                                                        substeps=substeps)
    t["rk4"], evo = timed("RK4, 1 substep", evolve("rk4", 1), h, f0, y, mask, eta, repeats=args.repeats)
    t["rk4_2"], evo2 = timed("RK4, 2 substeps", evolve("rk4", 2), h, f0, y, mask, eta, repeats=args.repeats)
    t["euler"], evo_e = timed("Euler", evolve("euler", 1), h, f0, y, mask, eta, repeats=args.repeats)
    print(f"    max |F_rk4(1) - F_rk4(2)| = {float(jnp.max(jnp.abs(evo.logits - evo2.logits))):.1e}, "
          f"max |F_rk4 - F_euler| = {float(jnp.max(jnp.abs(evo.logits - evo_e.logits))):.1e}")

    print("Weight updates and tau (SPEC steps 8, 9)")
    t["vjp"], deltas = timed(f"VJP updates, T={len(TAUS)}", functools.partial(ntk.weight_updates, apply),
                             params, x, mask, evo.residual_sums, eta, repeats=args.repeats)
    t["select"], (best, losses) = timed("select_tau (network loss)", functools.partial(ntk.select_tau, apply),
                                        params, x, mask, y, deltas, repeats=args.repeats)
    print(f"    losses {[round(float(v), 4) for v in losses]} -> tau* = {TAUS[int(best)]}")

    print("Ratios (same run)")
    if "jac_fwd_small" in t:
        print(f"  Jacobian fwd / rev (per sample, N={args.fwd_n}):   {t['jac_fwd_small'] / t['jac_rev_small']:8.1f}x")
        per_sample = (t["jac_fwd_small"] / args.fwd_n) / (t["jac_rev"] / n)
        print(f"  Jacobian fwd (N={args.fwd_n}) / rev (N={n}), per sample: {per_sample:8.1f}x")
        print(f"  fwd Jacobian extrapolated to N={n}:          {t['jac_fwd_small'] / args.fwd_n * n:8.0f} s")
    print(f"  kernel contraction / structured:          {t['contraction'] / t['structured']:8.1f}x")
    if "ntvp" in t:
        print(f"  kernel ntvp / structured:                 {t['ntvp'] / t['structured']:8.1f}x")
    print(f"  evolution RK4(1) / Euler:                 {t['rk4'] / t['euler']:8.1f}x")
    print(f"  evolution RK4(2) / Euler:                 {t['rk4_2'] / t['euler']:8.1f}x")
    total = t["structured"] + t["rk4"] + t["vjp"] + t["select"]
    print(f"  one node, default path (structured + RK4 + VJP + select): {total:.3f} s")


if __name__ == "__main__":
    main()
