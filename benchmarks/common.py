"""Timing, GEMM-throughput and peak-memory helpers shared by the benchmarks (flags only through `define_gemm_flag`)."""

from __future__ import annotations

import functools
import resource
import time

import jax

from spark_jax.setting import data


def timed(fn, *args, repeats: int):
    """(median seconds over `repeats` runs after one compile+warm-up run, output).

    Waits for the inputs first: JAX dispatches asynchronously, so an input still being computed (e.g. an
    untimed phase's output) would otherwise be charged to this one (with `repeats=0` all of it).
    """
    jax.block_until_ready(args)
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    if repeats == 0:
        return compile_s, float("nan"), out
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], compile_s, out


def timed_compiled(fn, *args, repeats: int):
    """(seconds, compile seconds, output) of a jitted `fn`: compiled ahead of time, then run.

    Compilation (`fn.lower(*args).compile()`) is timed on its own, so even
    `repeats=0` (one run, for paper-scale CPU runs) reports the phase's run
    time without its compile time; repeats >= 1: the median of `repeats` runs
    after one warm-up run.
    """
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    t, _, out = timed(compiled, *args, repeats=repeats)
    return t, compile_s, out


def matmul_throughput(n: int, repeats: int = 3, precision: str | None = None) -> float:
    """Measured float32 GEMM FLOP/s of an [n, n] x [n, n] product (the machine's practical limit).

    precision: None = the current default (`jax.default_matmul_precision`),
    else 'float32', 'tensorfloat32', 'bfloat16' (operands stay float32).
    """
    product, a = _gemm(n, precision)
    t, _, _ = timed(product, a, a, repeats=max(repeats, 1))
    return 2 * n**3 / t


def define_gemm_flag():
    """--gemm_n (default 2048): the size of the GEMM the absl benchmarks measure the machine by (the device
    suite's dry run passes 256: at tiny sizes 2048^3 products would be most of its time)."""
    from absl import flags  # pylint: disable=g-import-not-at-top
    return flags.DEFINE_integer("gemm_n", 2048, "Size n of the float32 [n, n] x [n, n] GEMM whose measured FLOP/s "
                                "every rate is compared with.", lower_bound=64)


@functools.lru_cache(maxsize=None)
def _gemm(n: int, precision: str | None):
    """(the [n, n] x [n, n] product compiled, its float32 operand): made once per size and precision, as
    benchmarks measure the GEMM around every phase."""
    a = jax.random.normal(jax.random.key(0), (n, n), jax.numpy.float32)
    return jax.jit(lambda x, y: jax.numpy.matmul(x, y, precision=precision)).lower(a, a).compile(), a


def peak_memory_bytes() -> int:
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mlp_layer_sizes(config) -> tuple[int, ...]:
    """(input features, hidden widths..., classes) of the config's MLP, from its dataset's spec."""
    spec = data.dataset_spec(config.data.dataset)
    return (spec.image_size, *config.model.hidden, spec.num_classes)


def phase_flops(config, num_nodes: int, rows: int, products, num_taus: int | None = None,
                slots: int | None = None) -> dict:
    """FLOPs (2 x multiply-adds) of the GEMM work of each NTK-DFL phase, all nodes, padded rows.

    For the MLP fast paths (`algorithm_kw.compute.kernel='structured'`), N = rows, dense layers
    (fan_in_l, fan_out_l), C classes, T taus, d weights:
      forward     N sum_l fan_in_l fan_out_l
      messages    forward (F0) + mixing S d (S = neighbour slots, if given)
      kernel      forward + N^2 fan_in_l per layer (A A^T) + N^2 h for the last hidden
                  layer (G diag(s) G^T) + for earlier hidden layers the backprop
                  N C fan_out_{l+1} fan_out_l and N^2 C fan_out_l, the N^2 terms x 3/4
                  (three of the four row-half blocks; `ntk.structured_kernel`)
      evolution   2 N^2 C per kernel product [N, N] x [N, C] (padding columns not
                  counted), `products` = the per-node counts (`Evolution.products`)
      selection   forward + T N fan_in_l fan_out_l per layer (updates) + T N fan_out_l
                  fan_in_l per layer l > 0 (backprops) + T N sum_l fan_in_l fan_out_l
                  (the T candidates' losses; `ntk.structured_weight_updates`,
                  `ntk.structured_network_losses`); only with `num_taus`.
    """
    sizes = mlp_layer_sizes(config)
    c = sizes[-1]
    pairs = list(zip(sizes[:-1], sizes[1:]))
    n_layers = len(pairs)
    forward = rows * sum(fi * fo for fi, fo in pairs)
    blocks = 0.75 * rows * rows  # H_aa, H_ba, H_bb of the symmetric H
    kernel = forward + sum(blocks * fi for fi, _ in pairs)
    if n_layers > 1:
        kernel += blocks * pairs[-2][1]
    for l in range(n_layers - 2):
        kernel += rows * c * pairs[l + 1][1] * pairs[l][1] + blocks * c * pairs[l][1]
    d = sum(fi * fo + fo for fi, fo in pairs)
    out = {"messages": 2 * num_nodes * (forward + (slots or 0) * d), "kernel": 2 * num_nodes * kernel}
    total_products = float(sum(float(p) for p in products))
    out["evolution"] = total_products * 2 * rows * rows * c
    if num_taus:
        t = num_taus
        selection = (forward + t * forward + t * rows * sum(fi * fo for fi, fo in pairs[1:]) + t * forward)
        out["selection"] = 2 * num_nodes * selection
    return out


def first_rounds(config, rounds: int):
    """A copy of `config` cut to its first `rounds` rounds: the same rounds 0 .. rounds-1 as the full run
    (stage boundaries pinned to their rounds in the full run; the learning rate depends on the round only)."""
    from spark_jax.algorithms.schedules import stage_boundaries  # pylint: disable=g-import-not-at-top

    cut = config.copy_and_resolve_references()
    if "stages" in cut.algorithm_kw:  # SPARK
        stages = cut.algorithm_kw.stages
        stages.boundaries = stage_boundaries(tuple(stages.boundaries), stages.unit, config.rounds)
        stages.unit = "round"
    cut.rounds = rounds
    return cut


def prepare_or_exit(config):
    """`experiment.prepare(config)`; bad input (data, partition, graph, config) is one `error:` line, exit 1."""
    import sys  # pylint: disable=g-import-not-at-top

    from spark_jax.setting.data import DataError  # pylint: disable=g-import-not-at-top
    from spark_jax.runner.experiment import prepare  # pylint: disable=g-import-not-at-top

    try:
        return prepare(config)
    except (ValueError, DataError, OSError) as e:
        sys.exit(f"error: {e}")


def placed_round_start(setup):
    """(state, inputs) of round 0, placed as the runner places them: the node axis of the state split
    over the run's 'nodes' mesh and the inputs whole on every device (unchanged without a mesh)."""
    from spark_jax import parallel  # pylint: disable=g-import-not-at-top
    from spark_jax.rng import stream_key  # pylint: disable=g-import-not-at-top
    from spark_jax.runner.experiment import round_inputs  # pylint: disable=g-import-not-at-top

    config = setup.config
    state = setup.algorithm.init(stream_key(config.seed, "init"), setup.node_data)
    inputs = round_inputs(setup.topology.graph(0), 0, stream_key(config.seed, "train"))
    if setup.mesh is None:
        return state, inputs
    return parallel.shard_nodes(state, setup.mesh), parallel.replicate(inputs, setup.mesh)


def devices_line(setup, how: str) -> str:
    """'device: KIND x D, the nodes split over M (...); HOW' for a benchmark's header."""
    from spark_jax import parallel  # pylint: disable=g-import-not-at-top

    return (f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, the nodes split over "
            f"{parallel.size(setup.mesh)} (parallel.cpu_devices={setup.config.parallel.cpu_devices}, "
            f"parallel.devices={setup.config.parallel.devices}); {how}")


def benchmark_config(config, data_dir: str | None):
    """The --config value with --data_dir applied, absl logging at WARNING, the CPU split into
    `config.parallel.cpu_devices` devices as `experiments.run` does (every benchmark's start)."""
    import sys  # pylint: disable=g-import-not-at-top

    from absl import logging  # pylint: disable=g-import-not-at-top

    from spark_jax import parallel  # pylint: disable=g-import-not-at-top

    logging.set_verbosity(logging.WARNING)
    try:
        parallel.split_cpu(config.parallel.cpu_devices)
    except ValueError as e:
        sys.exit(f"error: {e}")
    if data_dir:
        config.data.data_dir = data_dir
    return config


def node_phases_for(config, model):
    """The per-node phases of the NTK round a run config describes (`ntk_round.node_phases`)."""
    from spark_jax import config_options  # pylint: disable=g-import-not-at-top
    from spark_jax.algorithms import ntk_round  # pylint: disable=g-import-not-at-top

    kw = config_options.spark_kwargs(config) if config.algorithm == "spark" else config_options.ntk_kwargs(config)
    return ntk_round.node_phases(model, taus=kw["taus"], tau_criterion=kw["tau_criterion"], sketch=kw.get("sketch"),
                                 distill=kw.get("distill"), evolution=kw["evolution"], compute=kw["compute"])
