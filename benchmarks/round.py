"""Per-round wall time of an NTK algorithm, split by phase, and peak memory.

  python -m benchmarks.round --config=fmnist_ntk_dfl:small [--config.a.b=v ...] [--repeats=2]

Each phase (SPEC steps) is jitted on its own over all nodes (lax.map in
chunks of config.algorithm_kw.compute.node_chunk, as the round does), compiled ahead of time
(compile seconds in their own column) and timed: the median of `--repeats`
runs after a warm-up, or with --repeats=0 one run (paper-scale CPU runs);
the fused round is timed the same way. Phases:
  messages    mixing (step 2), neighbourhood gather and outputs F0 (3-4)
  kernel      H at w̄_i (5; includes the Jacobians for 'contraction'), consumed per node as in the
              round (all nodes' kernels are stored only, untimed, to feed the evolution phase)
  evolution   F(s) and R_tau (7)
  selection   updates for every tau, tau* by the network's loss, commit (8-9, 11)
  evaluation  aggregated and per-node test accuracy
FLOP rates (structured kernel, i.e. MLPs: `common.phase_flops`) are given
against the float32 GEMM rate measured just before and after each phase (the
mean of the two: on a shared machine the rate moves during a run).
Peak memory: the process's max RSS on CPU; the device's peak bytes on GPU.
The wall time of a whole run: `benchmarks.run_time`.
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags

from benchmarks.common import (benchmark_config, define_gemm_flag, devices_line, matmul_throughput, node_phases_for,
                               peak_memory_bytes, phase_flops, placed_round_start, prepare_or_exit, timed_compiled)
from experiments import config_files
from experiments.config_names import parse_flags, rewrite_argv
from spark_jax import parallel
from spark_jax.algorithms import schedules
from spark_jax.setting import metrics
from spark_jax.algorithms.base import mix
from spark_jax.algorithms.ntk_round import gather_neighbourhood, resolve_kernel_method

_CONFIG = config_files.define_config_flag("Config NAME[:ARG] or path.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed repetitions per phase after one warm-up; 0 = one run "
                                "(for paper-scale CPU runs). Compilation is timed apart either way.")
_FUSED = flags.DEFINE_boolean("fused", True, "Also time the whole jitted round.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory with the IDX files.")
_GEMM_N = define_gemm_flag()


def phase_functions(setup):
    """Jitted all-node versions of each phase of `ntk_dfl`, over the run's 'nodes' mesh when it has one
    (`parallel.node_map`, as the round runs); the node data is an argument (a closed-over copy would be
    embedded in every program as a constant: 187 MB at 300 nodes)."""
    cfg, model, mesh = setup.config, setup.model, setup.mesh
    ph = node_phases_for(cfg, model)
    chunk = min(cfg.algorithm_kw.compute.node_chunk, cfg.partition.num_nodes)

    def over_nodes(fn, per_node, shared):
        """[fn(*node i's slices of per_node, *shared) for every node i]; shared: whole on every device."""
        return parallel.node_map(lambda a, *sh: fn(*a, *sh), per_node, batch_size=chunk, mesh=mesh,
                                 shared=shared)

    @jax.jit
    def messages(params, nd, inputs):
        w_bar = mix(params, inputs.neighbors, inputs.weights)
        f0, y = over_nodes(lambda w, n, s, nd: ph.targets(w, *gather_neighbourhood(nd, n, s), None, 0.0),
                           (w_bar, inputs.neighbors, inputs.mask), (nd,))
        return w_bar, f0, y

    def kernel_at_nodes(consume):
        @jax.jit
        def kernel(w_bar, nd, inputs):
            def one(w, n, s, nd):
                x, _, mask = gather_neighbourhood(nd, n, s)
                return consume(ph.kernel(w, x, mask, None, None))
            return over_nodes(one, (w_bar, inputs.neighbors, inputs.mask), (nd,))
        return kernel

    # The round consumes each node's H inside its chunk and never holds all of them; the timed phase does
    # the same (row sums read all of H). The stored [M, N, N] kernels (2 GB at 300 nodes: ~1.8 s of
    # writes and page faults the round does not pay) only feed the evolution phase, untimed.
    kernel = kernel_at_nodes(lambda h: jax.numpy.sum(h, axis=1))
    kernels = kernel_at_nodes(lambda h: h)

    @jax.jit
    def evolution(h, f0, y, nd, inputs, eta):
        def one(hh, f, yy, n, s, nd, eta):
            return ph.evolve(hh, f, yy, gather_neighbourhood(nd, n, s)[2], eta)
        return over_nodes(one, (h, f0, y, inputs.neighbors, inputs.mask), (nd, eta))

    @jax.jit
    def selection(w_bar, y, evo, nd, inputs, eta):
        def one(w, yy, e, n, s, nd, eta):
            x, _, mask = gather_neighbourhood(nd, n, s)
            return ph.update_and_select(w, x, mask, None, None, None, yy, e, eta)
        return over_nodes(one, (w_bar, y, evo, inputs.neighbors, inputs.mask), (nd, eta))

    return messages, kernel, kernels, evolution, selection


def main(argv):
    del argv
    config = benchmark_config(_CONFIG.value, _DATA_DIR.value)
    if config.algorithm != "ntk_dfl":
        sys.exit(f"error: benchmarks.round times NTK algorithms; config.algorithm is {config.algorithm!r}")
    setup = prepare_or_exit(config)
    kw = config.algorithm_kw
    repeats = _REPEATS.value
    state, inputs = placed_round_start(setup)
    eta = schedules.learning_rate(config.algorithm_kw.eta0, config.algorithm_kw.decay, inputs.round_index)
    messages, kernel, kernels, evolution, selection = phase_functions(setup)
    nd = setup.node_data
    rows = []  # (phase, seconds, compile seconds, GEMM FLOP/s around it)

    def phase(name, fn, *args):
        """Times one phase between two GEMM measurements (the machine may be shared: both move)."""
        before = matmul_throughput(_GEMM_N.value)
        t, c, out = timed_compiled(fn, *args, repeats=repeats)
        rows.append((name, t, c, 0.5 * (before + matmul_throughput(_GEMM_N.value))))
        return out

    w_bar, f0, y = phase("messages", messages, state.params, nd, inputs)
    phase("kernel", kernel, w_bar, nd, inputs)
    h = kernels(w_bar, nd, inputs)
    evo = phase("evolution", evolution, h, f0, y, nd, inputs, eta)
    del h
    phase("selection", selection, w_bar, y, evo, nd, inputs, eta)
    evaluate = metrics.make_evaluate(setup.model.apply, config.eval.node_chunk, setup.mesh)
    phase("evaluation", evaluate, state.params, setup.test_x, setup.test_y, setup.node_test_x, setup.node_test_y)
    if _FUSED.value:
        phase("fused round", jax.jit(setup.algorithm.round), state, nd, inputs)
    fused = rows.pop() if _FUSED.value else None

    slots = int(inputs.neighbors.shape[1])
    n_nb = int(slots * nd.mask.shape[1])
    method = resolve_kernel_method(config.algorithm_kw.compute.kernel, setup.model.structured)
    print(f"config {config.name}: {config.partition.num_nodes} nodes, topology {config.topology.kind} "
          f"(slots {slots}), n_max {nd.mask.shape[1]} -> padded neighbourhood {n_nb} rows, "
          f"kernel {method}, integrator {kw.evolution.integrator}, taus {tuple(kw.taus)}, "
          f"node_chunk {kw.compute.node_chunk}, node_batching {kw.compute.node_batching}")
    how = f"median of {repeats} after warm-up" if repeats else "one run"
    print(devices_line(setup, f"{how}, compiled ahead of time"))
    total = sum(r[1] for r in rows)
    flops = (phase_flops(config, config.partition.num_nodes, n_nb, products=evo.products,
                         num_taus=len(config.algorithm_kw.taus), slots=slots) if method == "structured" else {})
    print(f"kernel products per node in the evolution: mean {float(evo.products.mean()):.0f}, "
          f"max {int(evo.products.max())}")
    print(f"'GEMM': float32 {_GEMM_N.value}^3 GEMM GFLOP/s measured just before and after each phase (mean); 'of GEMM' "
          f"is the phase's FLOP rate against it")
    print(f"{'phase':<12}{'seconds':>10}{'share':>8}{'compile s':>11}{'GEMM':>8}{'GFLOP':>10}{'GFLOP/s':>10}"
          f"{'of GEMM':>9}")
    for name, t, c, gemm in rows:
        rate = (f"{flops[name] / 1e9:>10.1f}{flops[name] / t / 1e9:>10.1f}{flops[name] / t / gemm:>9.1%}"
                if name in flops else "")
        print(f"{name:<12}{t:>10.3f}{t / total:>8.1%}{c:>11.1f}{gemm / 1e9:>8.1f}{rate}")
    print(f"{'sum':<12}{total:>10.3f}")
    both = [r for r in rows if r[0] in ("messages", "selection")]
    print(f"messages + selection: {sum(r[1] for r in both):.3f} s; at 100% of the GEMM rate measured around "
          f"them {sum(flops[r[0]] / r[3] for r in both) if flops else float('nan'):.3f} s")
    if fused:
        print(f"{'fused round':<12}{fused[1]:>10.3f}{'':>8}{fused[2]:>11.1f}{fused[3] / 1e9:>8.1f}"
              "   (round without evaluation)")
    print(f"peak memory: {peak_memory_bytes() / 2**30:.2f} GiB")


if __name__ == "__main__":
    sys.argv = rewrite_argv(sys.argv)
    app.run(main, flags_parser=parse_flags)
