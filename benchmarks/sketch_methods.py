"""Timings of the Jacobian sketch (spark_jax.ntk.sketch) for one node's neighbourhood.

`python -m benchmarks.sketch_methods` — the default 784-100-10 MLP, N = 1200
random samples, k = 512 per layer ("layer" grouping: 2 groups, 1,024 columns);
about 2 min on 2 CPU cores. `--n`, `--k`, `--grouping` change the setting.

Every function is compiled ahead of time (compile time printed separately),
P is an argument (as in a round: drawn once, passed to the per-node map), and
the median of `--repeats` runs is reported. "materialize" holds the exact
`[N, C, d]` Jacobian chunk by chunk and costs C = 10 times the flops of
"structured", so it is timed on `--materialize_n` samples and extrapolated
linearly per sample to N (its cost is linear in N; printed as such).
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.kernel_methods import TAUS, timed
from spark_jax import ntk
from spark_jax.ntk import sketch, sketched_ntk
from spark_jax.setting import models
from spark_jax.setting.models import num_params


def _rel_diff(a, b):
    a = np.concatenate([np.asarray(s) for s in a], axis=-1)
    b = np.concatenate([np.asarray(s) for s in b], axis=-1)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1200)
    parser.add_argument("--k", type=int, default=512)
    parser.add_argument("--grouping", default="layer", choices=sketch.GROUPINGS)
    parser.add_argument("--chunks", default="64,128,256", help="forward-mode direction chunks")
    parser.add_argument("--materialize_n", type=int, default=200)
    parser.add_argument("--sample_chunk", type=int, default=100, help="samples per chunk for 'materialize'")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = models.make_model("mlp")
    params = model.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    n, k, c, grouping = args.n, args.k, model.num_classes, args.grouping
    x = jnp.asarray(rng.normal(size=(n, 28, 28, 1)), jnp.float32)
    mask = jnp.ones(n, bool)
    R = jnp.asarray(rng.normal(size=(len(TAUS), n, c)), jnp.float32)
    eta = jnp.float32(0.01)
    sizes = sketch.group_sizes(params, grouping)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; MLP 784-100-10, d = {num_params(params):,}, "
          f"N = {n}, C = {c}; grouping '{grouping}' d_g = {sizes}, k = {k} per group "
          f"({k * len(sizes) / num_params(params):.1%} of d)")
    t = {}

    print("Projections P_g [d_g, k] (SPEC step 3; once per round, shared by all nodes)")
    draw = functools.partial(sketch.projections, params=params, grouping=grouping, k=k, redraw=True)
    t["P"], P = timed("generate P (threefry normal)", lambda key, r: draw(key, round_index=r),
                      jax.random.key(1), jnp.int32(3), repeats=args.repeats)

    print("Sketch J~_g = J_g P_g, leaves [N, C, k] (SPEC step 3)")
    sk = lambda method, **kw: functools.partial(sketch.sketch_jacobian, model.apply, grouping=grouping,
                                                method=method, **kw)
    t["structured"], ref = timed("structured (a P first, then D)", sk("structured"), params, x, mask, P,
                                 repeats=args.repeats, rows=n)
    for chunk in (int(s) for s in args.chunks.split(",")):
        t[f"forward{chunk}"], out = timed(f"forward, direction_chunk {chunk}", sk("forward", direction_chunk=chunk),
                                          params, x, mask, P, repeats=args.repeats, rows=n)
        print(f"    max |forward - structured| / max |structured| = {_rel_diff(out, ref):.1e}")
        out = None
    nm = min(args.materialize_n, n)
    t["materialize_small"], out = timed(f"materialize, N={nm}, sample_chunk {args.sample_chunk}",
                                        sk("materialize", sample_chunk=args.sample_chunk),
                                        params, x[:nm], mask[:nm], P, repeats=max(1, args.repeats - 1), rows=nm)
    print(f"    max |materialize - structured| / max |structured| (first {nm} rows) = "
          f"{_rel_diff(out, [s[:nm] for s in ref]):.1e}")
    out = None
    t["materialize"] = t["materialize_small"] * n / nm
    print(f"  {'materialize, extrapolated to N=' + str(n):<44s} {t['materialize']:9.3f} s  "
          f"[= {t['materialize_small']:.3f} s x {n}/{nm}, linear in N]")

    print("Kernel and updates from sketches (SPEC steps 5, 8)")
    t["kernel"], h = timed("sketched_kernel H~ [N, N]", sketched_ntk.sketched_kernel, ref, mask, repeats=args.repeats)
    t["exact_kernel"], h_exact = timed("exact structured kernel (reference)",
                                       functools.partial(ntk.neighbourhood_kernel, model.apply, method="structured"),
                                       params, x, mask, repeats=args.repeats)
    err = float(jnp.linalg.norm(h - h_exact) / jnp.linalg.norm(h_exact))
    print(f"    ||H~ - H||_F / ||H||_F = {err:.3f}  (one draw of P; expectation ~ 1/sqrt(k))")
    grads = tuple(jnp.asarray(rng.normal(size=(len(TAUS), k)), jnp.float32) for _ in sizes)
    t["back"], _ = timed(f"back_project, T={len(TAUS)}",
                         functools.partial(sketched_ntk.back_project, params=params, grouping=grouping), P, grads,
                         repeats=args.repeats)
    t["updates"], _ = timed(f"sketched_weight_updates, T={len(TAUS)}",
                            lambda S, P, R, eta, mask: sketched_ntk.sketched_weight_updates(S, P, params, grouping, R,
                                                                                      eta, mask),
                            ref, P, R, eta, mask, repeats=args.repeats)
    t["vjp"], _ = timed(f"exact VJP updates (reference), T={len(TAUS)}",
                        functools.partial(ntk.weight_updates, model.apply), params, x, mask, R, eta,
                        repeats=args.repeats)

    print("Ratios (same run)")
    base = t["structured"]
    for name in [key for key in t if key.startswith("forward")] + ["materialize"]:
        print(f"  {name:<24s} / structured = {t[name] / base:6.2f}")
    print(f"  {'generate P':<24s} / structured = {t['P'] / base:6.2f}")
    print(f"  {'back_project':<24s} / structured = {t['back'] / base:6.3f}")


if __name__ == "__main__":
    main()
