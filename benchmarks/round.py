"""Per-round wall time of an NTK algorithm, split by phase, and peak memory.

  python -m benchmarks.round --config=fmnist_ntk_dfl:small [--config.a.b=v ...] [--repeats=2]

Each phase (SPEC steps) is jitted on its own over all nodes (lax.map in
chunks of config.ntk.node_chunk, as the round does) and timed after a
warm-up; the fused round is timed the same way. Phases:
  messages    mixing (step 2), neighbourhood gather and outputs F0 (3-4)
  kernel      H at w̄_i (5; includes the Jacobians for 'contraction')
  evolution   F(s) and R_tau (7)
  selection   VJP updates for every tau, tau* by the network's loss, commit (8-9, 11)
  evaluation  aggregated and per-node test accuracy
Peak memory: the process's max RSS on CPU; the device's peak bytes on GPU.
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from benchmarks.common import benchmark_config, matmul_throughput, peak_memory_bytes, phase_flops, timed
from experiments.config_names import rewrite_argv
from spark_jax import metrics
from spark_jax.algorithms import ntk_dfl
from spark_jax.experiment import prepare, round_inputs
from spark_jax.rng import stream_key

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config NAME[:ARG] or path.", lock_config=True)
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed repetitions per phase after one warm-up; 0 = time the "
                                "first call (compile included; for paper-scale CPU runs).")
_FUSED = flags.DEFINE_boolean("fused", True, "Also time the whole jitted round.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory with the IDX files.")


def phase_functions(setup):
    """Jitted all-node versions of each phase of `ntk_dfl`."""
    cfg, model = setup.config, setup.model
    method = ntk_dfl.resolve_kernel_method(cfg.ntk.kernel, cfg.model.name)
    ph = ntk_dfl.make_node_phases(model.apply, model.num_classes, cfg.ntk, method)
    chunk = min(cfg.ntk.node_chunk, cfg.partition.num_nodes)
    nd = setup.node_data

    def over_nodes(fn, *args):
        return jax.lax.map(lambda a: fn(*a), args, batch_size=chunk)

    def gather(nbr, smask):
        return ntk_dfl.gather_neighbourhood(nd, nbr, smask)

    @jax.jit
    def messages(params, inputs):
        w_bar = ntk_dfl.mix(params, inputs.neighbors, inputs.weights)
        f0, y = over_nodes(lambda w, n, s: ph.messages(w, *gather(n, s)), w_bar, inputs.neighbors, inputs.mask)
        return w_bar, f0, y

    @jax.jit
    def kernel(w_bar, inputs):
        def one(w, n, s):
            x, _, mask = gather(n, s)
            return ph.kernel(w, x, mask)
        return over_nodes(one, w_bar, inputs.neighbors, inputs.mask)

    @jax.jit
    def evolution(h, f0, y, inputs, eta):
        def one(hh, f, yy, n, s):
            return ph.evolve(hh, f, yy, gather(n, s)[2], eta)
        return over_nodes(one, h, f0, y, inputs.neighbors, inputs.mask)

    @jax.jit
    def selection(w_bar, y, evo, inputs, eta):
        def one(w, yy, e, n, s):
            x, _, mask = gather(n, s)
            return ph.update(w, x, mask, yy, e, eta)
        return over_nodes(one, w_bar, y, evo, inputs.neighbors, inputs.mask)

    return messages, kernel, evolution, selection


def main(argv):
    del argv
    config = benchmark_config(_CONFIG.value, _DATA_DIR.value)
    if config.algorithm != "ntk_dfl":
        sys.exit(f"error: benchmarks.round times NTK algorithms; config.algorithm is {config.algorithm!r}")
    setup = prepare(config)
    repeats = _REPEATS.value
    state = setup.algorithm.init(stream_key(config.seed, "init"), setup.node_data)
    inputs = round_inputs(setup.topology.graph(0), 0, stream_key(config.seed, "train"))
    eta = ntk_dfl.learning_rate(config.ntk.eta0, config.ntk.decay, inputs.round_index)
    messages, kernel, evolution, selection = phase_functions(setup)
    rows = []
    t, c, (w_bar, f0, y) = timed(messages, state.params, inputs, repeats=repeats)
    rows.append(("messages", t, c))
    t, c, h = timed(kernel, w_bar, inputs, repeats=repeats)
    rows.append(("kernel", t, c))
    t, c, evo = timed(evolution, h, f0, y, inputs, eta, repeats=repeats)
    rows.append(("evolution", t, c))
    del h
    t, c, _ = timed(selection, w_bar, y, evo, inputs, eta, repeats=repeats)
    rows.append(("selection", t, c))
    evaluate = metrics.make_evaluate(setup.model.apply, config.eval.node_chunk)
    t, c, _ = timed(evaluate, state.params, setup.test_x, setup.test_y, setup.node_test_x, setup.node_test_y,
                    repeats=repeats)
    rows.append(("evaluation", t, c))
    if _FUSED.value:
        round_fn = jax.jit(setup.algorithm.round)
        t_round, c_round, _ = timed(round_fn, state, setup.node_data, inputs, repeats=repeats)

    nd = setup.node_data
    n_nb = int(inputs.neighbors.shape[1] * nd.mask.shape[1])
    print(f"config {config.name}: {config.partition.num_nodes} nodes, topology {config.topology.kind} "
          f"(slots {inputs.neighbors.shape[1]}), n_max {nd.mask.shape[1]} -> padded neighbourhood {n_nb} rows, "
          f"kernel {ntk_dfl.resolve_kernel_method(config.ntk.kernel, config.model.name)}, "
          f"integrator {config.ntk.integrator}, taus {tuple(config.ntk.taus)}, node_chunk {config.ntk.node_chunk}")
    how = f"median of {repeats} after warm-up" if repeats else "first call, compile included"
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; {how}")
    total = sum(r[1] for r in rows)
    peak = matmul_throughput(2048)
    structured = ntk_dfl.resolve_kernel_method(config.ntk.kernel, config.model.name) == "structured"
    flops = phase_flops(config, config.partition.num_nodes, n_nb, products=evo.products) if structured else {}
    print(f"measured float32 GEMM 2048^3: {peak / 1e9:.1f} GFLOP/s; kernel products per node in the evolution: "
          f"mean {float(evo.products.mean()):.0f}, max {int(evo.products.max())}")
    print(f"{'phase':<12}{'seconds':>10}{'share':>8}{'compile s':>11}{'GFLOP/s':>10}{'of GEMM':>9}")
    for name, t, c in rows:
        rate = f"{flops[name] / t / 1e9:>10.1f}{flops[name] / t / peak:>9.1%}" if name in flops else ""
        print(f"{name:<12}{t:>10.3f}{t / total:>8.1%}{c:>11.1f}{rate}")
    print(f"{'sum':<12}{total:>10.3f}")
    if _FUSED.value:
        print(f"{'fused round':<12}{t_round:>10.3f}{'':>8}{c_round:>11.1f}   (round without evaluation)")
    print(f"peak memory: {peak_memory_bytes() / 2**30:.2f} GiB")


if __name__ == "__main__":
    sys.argv = rewrite_argv(sys.argv)
    app.run(main)
