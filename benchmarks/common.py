"""Timing, GEMM-throughput and peak-memory helpers shared by the benchmarks (no flags defined here)."""

from __future__ import annotations

import resource
import time

import jax


def timed(fn, *args, repeats: int):
    """(median seconds over `repeats` runs after one compile+warm-up run, output)."""
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


def matmul_throughput(n: int, repeats: int = 3) -> float:
    """Measured float32 GEMM FLOP/s of an [n, n] x [n, n] product (the machine's practical limit)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jax.numpy.float32)
    f = jax.jit(lambda x, y: x @ y)
    t, _, _ = timed(f, a, a, repeats=max(repeats, 1))
    return 2 * n**3 / t


def peak_memory_bytes() -> int:
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def phase_flops(config, num_nodes: int, rows: int, products) -> dict:
    """Analytic FLOPs of the kernel and evolution phases for all nodes (padded rows).

    structured kernel, per dense layer: N^2 (fan_in + 1) + N^2 C fan_out multiply-adds;
    evolution: 2 N^2 C per kernel product [N, N] x [N, C] (C = 10, padding columns not
    counted), `products` = the per-node counts the integrator reports (`Evolution.products`).
    """
    sizes = (784, *config.model.hidden, 10)
    c = 10
    kernel = sum(rows * rows * (fan_in + 1) + rows * rows * c * fan_out
                 for fan_in, fan_out in zip(sizes[:-1], sizes[1:])) * 2
    total_products = float(sum(float(p) for p in products))
    return {"kernel": kernel * num_nodes, "evolution": total_products * 2 * rows * rows * c}


def benchmark_config(config, data_dir: str | None):
    """The --config value with --data_dir applied, absl logging at WARNING (every benchmark's start)."""
    from absl import logging  # pylint: disable=g-import-not-at-top

    logging.set_verbosity(logging.WARNING)
    if data_dir:
        config.data.data_dir = data_dir
    return config
