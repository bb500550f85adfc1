"""Per-round wall time of SPARK, split by phase, with FLOP rates and peak memory.

  python -m benchmarks.spark_round --config=fmnist_ring:small [--config.a.b=v ...] [--repeats=2]

All M nodes' sketches at once would be M x N x C x k_tot floats (300 nodes:
~15 GB), so the phases are timed on one node chunk (`config.algorithm_kw.compute.node_chunk`
nodes, vmapped as in the round) and reported per node and scaled to M; the
fused jitted round is timed on all M nodes (the figure that counts), placed over the run's 'nodes'
mesh as the runner places it (`parallel.cpu_devices`: one CPU device per core by default), while the
phases run on one device (the single-device program; on a split CPU their sum exceeds the fused round,
which runs each device's nodes side by side). Phases
(SPEC steps):
  projections  P_l for this round (3; drawn once per round, shared by all nodes)
  first_layer  [1; x] P_0 for every sample (3; only when the first layer is shared,
               `algorithm_kw.compute.share_first_layer`: timed on one block of P's columns, times the blocks)
  sketch       outputs F0 and J~_l = J_l P_l on the neighbourhood (3-4; shared: one block's columns of
               the hidden layers' groups, times the blocks)
  kernel       H~ = (1/C) sum J~ J~^T (5): the output layer's part in closed form
               (`spark_jax.ntk.sketch_output_layer`) + the Gram of the other groups' sketches
               (shared: the closed form once, row output_kernel, and the Gram per block)
  evolution    F(s) and R_tau (6-7)
  update       back-projected Delta_tau for every tau (8)
  selection    tau* by the network's loss (9)
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks.common import (benchmark_config, define_gemm_flag, devices_line, matmul_throughput, mlp_layer_sizes,
                               node_phases_for, peak_memory_bytes, phase_flops, placed_round_start, prepare_or_exit,
                               timed_compiled)
from experiments import config_files
from experiments.config_names import parse_flags, rewrite_argv
from spark_jax.algorithms import schedules
from spark_jax.ntk import sketch, sketch_share
from spark_jax import config_options, parallel
from spark_jax.algorithms.ntk_round import gather_neighbourhood
from spark_jax.algorithms.shared_sketch import share_plan
from spark_jax.rng import stream_key

_CONFIG = config_files.define_config_flag("Config NAME[:ARG] or path.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed repetitions after one warm-up; 0 = one run (paper-scale CPU runs). "
                                "Compilation is timed apart either way.")
_FUSED = flags.DEFINE_boolean("fused", True, "Also time the whole jitted round on all nodes.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory with the IDX files.")
_GEMM_N = define_gemm_flag()


def sketch_flops(config, rows: int, k: int, products, shared: bool) -> dict:
    """Analytic FLOPs per node (dense MLP, 'layer' grouping): sketch (input side + backprop side), kernel,
    evolution (`products`: the evolution's kernel products per node, `Evolution.products`)."""
    sizes = mlp_layer_sizes(config)
    c = sizes[-1]
    first = 2 * rows * (sizes[0] + 1) * sizes[1] * k
    rest = sum(2 * rows * (fi + 1) * fo * k for fi, fo in zip(sizes[1:-1], sizes[2:]))
    backprop = sum(2 * rows * c * fo * k for fo in sizes[1:])
    # Gram of the hidden layers' sketches (symmetric: 3 x 3 blocks, 6 computed); the output layer's part in
    # closed form, [N, F] x [F, F] x [F, N] with F = fan_in + 1 (`sketch_output_layer`)
    output_kernel = 2 * rows * (sizes[-2] + 1) * (rows + sizes[-2] + 1)
    gram = 2 * rows * rows * c * k * (len(sizes) - 2) * 2 / 3
    evolution = phase_flops(config, 1, rows, products=[float(jnp.mean(products))])["evolution"]
    return {"first_layer_per_sample": 2 * (sizes[0] + 1) * sizes[1] * k,
            "sketch": (0 if shared else first) + rest + backprop, "kernel": gram if shared else gram + output_kernel,
            "output_kernel": output_kernel, "evolution": evolution}


def main(argv):
    del argv
    config = benchmark_config(_CONFIG.value, _DATA_DIR.value)
    if config.algorithm != "spark" or not config.algorithm_kw.sketch.enabled:
        sys.exit("error: benchmarks.spark_round times SPARK with sketches (config.algorithm='spark', "
                 "algorithm_kw.sketch.enabled=True); use benchmarks.round for exact NTK-DFL")
    setup = prepare_or_exit(config)
    nc = config.algorithm_kw
    sc, cc = nc.sketch, nc.compute
    repeats = _REPEATS.value
    template = setup.model.init(jax.random.key(0))
    method = sketch.resolve_method(cc.sketch_method, setup.model.structured)
    placed_state, placed_inputs = placed_round_start(setup)  # the fused round: as the runner places them
    if _FUSED.value:  # first, so that the peak memory after it is the round's own (the phases hold more)
        round_fn = jax.jit(setup.algorithm.round)
        t_round, c_round, _ = timed_compiled(round_fn, placed_state, setup.node_data, placed_inputs, repeats=repeats)
        round_peak = peak_memory_bytes()
    # The phases: one chunk on one device (the single-device program), scaled to all nodes.
    state, inputs, nd = jax.device_put((placed_state, placed_inputs, setup.node_data), jax.devices()[0])
    del placed_state, placed_inputs
    eta = schedules.learning_rate(nc.eta0, nc.decay, inputs.round_index)
    b = min(cc.node_chunk, config.partition.num_nodes)
    nbr, smask = inputs.neighbors[:b], inputs.mask[:b]
    w_bar = jax.tree.map(lambda a: a[:b], state.params)
    sketch_key = stream_key(config.seed, "sketch")
    taus = tuple(nc.taus)

    projections = jax.jit(lambda r: sketch.projections(sketch_key, template, sc.grouping, sc.k, r, sc.redraw))
    plan = share_plan(config_options.sketch_options(sc), config_options.compute_options(cc), template,
                      config.partition.num_nodes, nd.x.shape[1], inputs.neighbors.shape[1], setup.model.structured,
                      parallel.size(setup.mesh))  # the fused round's blocks
    blocks = max(plan.num_blocks, 1)
    first_layer = jax.jit(lambda P: sketch.first_layer_products(
        template, nd.x.reshape((-1,) + nd.x.shape[2:]), sketch_share.projection_block(P, 0, plan),
        sc.grouping).reshape(nd.x.shape[:2] + (-1, plan.block)))

    ph = node_phases_for(config, setup.model)
    per_node = lambda fn, in_axes=0: jax.jit(jax.vmap(fn, in_axes=in_axes))  # None: shared by the nodes

    def gathered(n, s):
        x, labels, mask = gather_neighbourhood(nd, n, s)
        own_rows = jnp.repeat(jnp.zeros(s.shape[0], bool).at[0].set(True), nd.mask.shape[1])
        return x, labels, mask, own_rows

    def messages(w, n, s, P, first):  # F0, Y^ (lambda = 0, as in round 0) and the sketches
        x, labels, mask, _ = gathered(n, s)
        f0, y_hat = ph.targets(w, x, labels, mask, None, 0.0)
        q = first[n].reshape((x.shape[0],) + first.shape[2:]) if first is not None else None
        return f0, y_hat, ph.messages(w, x, mask, P, q)

    rows = []  # (phase, seconds, compile seconds, nodes timed, times run per round)
    t, c, P = timed_compiled(projections, inputs.round_index, repeats=repeats)
    rows.append(("projections", t, c, 1, 1))
    x, _, masks, own = jax.vmap(gathered)(nbr, smask)
    if plan.block:  # the round's shared schedule: per block of P's columns, all samples then all nodes
        t, c, first = timed_compiled(first_layer, P, repeats=repeats)
        rows.append(("first_layer", t, c, 1, blocks))
        P_b = sketch_share.projection_block(P, 0, plan)
        t, c, (_, _, sk) = timed_compiled(per_node(ph.shared_messages, (0, 0, 0, None, None, None)), w_bar, nbr, smask, nd,
                                 first, P_b, repeats=repeats)
        rows.append(("sketch", t, c, b, blocks))
        f0, y = per_node(lambda w, n, s: ph.targets(w, *gathered(n, s)[:3], None, 0.0))(w_bar, nbr, smask)
        t, c, h = timed_compiled(per_node(ph.output_kernel, (0, 0, 0, None)), w_bar, x, masks, P, repeats=repeats)
        rows.append(("output_kernel", t, c, b, 1))
        t, c, h = timed_compiled(per_node(ph.gram), sk, masks, repeats=repeats)
        rows.append(("kernel", t, c, b, blocks))
        del first, sk, h
        # The whole kernel of this chunk for the later phases (not timed; the round builds it per block).
        h = per_node(lambda w, x, m: ph.kernel(w, x, m, ph.messages(w, x, m, P, None), P))(w_bar, x, masks)
        sk = None
    else:
        t, c, (f0, y, sk) = timed_compiled(per_node(messages, (0, 0, 0, None, None)), w_bar, nbr, smask, P, None,
                                  repeats=repeats)
        rows.append(("sketch", t, c, b, 1))
        t, c, h = timed_compiled(per_node(ph.kernel, (0, 0, 0, 0, None)), w_bar, x, masks, sk, P, repeats=repeats)
        rows.append(("kernel", t, c, b, 1))
    t, c, evo = timed_compiled(per_node(ph.evolve, (0, 0, 0, 0, None)), h, f0, y, masks, eta, repeats=repeats)
    rows.append(("evolution", t, c, b, 1))
    t, c, deltas = timed_compiled(per_node(ph.update, (0, 0, 0, 0, None if sk is None else 0, None, 0, None)),
                         w_bar, x, masks, own, sk, P, evo, eta, repeats=repeats)
    rows.append(("update", t, c, b, 1))
    t, c, _ = timed_compiled(per_node(ph.select), w_bar, x, masks, y, deltas, evo, repeats=repeats)
    rows.append(("selection", t, c, b, 1))
    del sk, h, deltas

    m = config.partition.num_nodes
    n_nb = int(inputs.neighbors.shape[1] * nd.mask.shape[1])
    flops = sketch_flops(config, n_nb, sc.k, evo.products, bool(plan.block))
    share = (f"shared first layer in {plan.num_blocks} blocks of {plan.block} columns (holds ~"
             f"{plan.held_bytes / 2**30:.1f} GiB)" if plan.block else "first layer not shared")
    print(f"config {config.name}: {m} nodes, topology {config.topology.kind} (slots {inputs.neighbors.shape[1]}), "
          f"n_max {nd.mask.shape[1]} -> padded neighbourhood {n_nb} rows; sketch {method}, k = {sc.k} per "
          f"{sc.grouping}, share_first_layer {cc.share_first_layer!r}: {share}; integrator {nc.evolution.integrator}, "
          f"taus {taus}; phases on {b} nodes on one device, scaled to {m}")
    how = (f"median of {repeats} after warm-up" if repeats else "one run") + ", compiled ahead of time"
    peak = matmul_throughput(_GEMM_N.value)
    print(devices_line(setup, f"{how}; measured float32 GEMM {_GEMM_N.value}^3: {peak / 1e9:.1f} GFLOP/s; evolution "
                              f"kernel products per node: mean {float(jnp.mean(evo.products)):.0f}, max "
                              f"{int(jnp.max(evo.products))}"))
    print(f"{'phase':<14}{'s/node':>9}{'s/round':>10}{'share':>8}{'compile s':>11}{'GFLOP/s':>10}{'of GEMM':>9}")
    scaled = [(name, t * times / nodes, t * times / nodes * m if nodes > 1 else t * times, c)
              for name, t, c, nodes, times in rows]
    total = sum(s for _, _, s, _ in scaled)
    for name, per, s, c in scaled:
        work = (flops["first_layer_per_sample"] * int(nd.mask.size) if name == "first_layer"
                else flops.get(name, 0) * m)
        rate = f"{work / s / 1e9:>10.1f}{work / s / peak:>9.1%}" if work else ""
        per_txt = f"{per:>9.3f}" if name not in ("projections", "first_layer") else f"{'-':>9}"
        print(f"{name:<14}{per_txt}{s:>10.3f}{s / total:>8.1%}{c:>11.1f}{rate}")
    print(f"{'sum':<14}{'':>9}{total:>10.3f}")
    if _FUSED.value:
        print(f"{'fused round':<14}{'':>9}{t_round:>10.3f}{'':>8}{c_round:>11.1f}   (all {m} nodes, "
              f"without evaluation)")
    fused_peak = f"after the fused round {round_peak / 2**30:.2f} GiB, " if _FUSED.value else ""
    print(f"peak memory: {fused_peak}after the phases {peak_memory_bytes() / 2**30:.2f} GiB")


if __name__ == "__main__":
    sys.argv = rewrite_argv(sys.argv)
    app.run(main, flags_parser=parse_flags)
