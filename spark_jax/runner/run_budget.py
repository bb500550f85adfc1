"""What a run will cost, estimated from its config before anything is allocated (issue 16, "absurd sizes").

Two estimates refuse a run that could never finish, each in one line with the number:

- **Evolution work** (SPEC step 7): every round each node integrates its
  neighbourhood's function evolution over tau_max = max(algorithm_kw.taus) grid
  intervals. `evolution_work` counts the `[N, N] x [N, C]` kernel products
  this takes at least, per integrator: euler 1 and rk4 4 x substeps per grid
  interval; rk4_hermite 4 per `stride` intervals; dopri5 and imex 6 per step of
  at most `max_stride` intervals (their transient adds ~50-250 more, BUILD.md);
  plus 1/50 of a product per grid point visited (the residual at every grid
  point, ~9 us against ~0.45 ms per product at N ~ 1,200 on the project's CPU,
  BUILD.md "Measured round times"). Above `MAX_EVOLUTION_PRODUCTS` per
  neighbourhood and round (the SPEC's defaults need ~40 with imex and 6,416
  with rk4 at 2 sub-steps) the config is refused.
- **Memory**: `memory_estimate` adds what a run holds at least: the topology's
  dense [M, M] mixing matrix (float64) and neighbour sort (int64); the padded
  node data [M, n_max] images (float32); the parameters of every node and
  their mixed copies [2, M, d] (float32); for the NTK algorithms one
  neighbourhood kernel [N, N] (float32, N = slots x n_max rows). More than the
  memory available is refused before any of it is allocated. What the
  estimate cannot see (an NTK neighbourhood's Jacobian-sized temporaries, XLA's
  buffers) ends, if it runs out, in `OutOfMemoryError`: one line naming the
  round, the bytes XLA asked for and the fields that size them.
"""

from __future__ import annotations

import os
import pathlib
import re

from spark_jax.setting import data

MAX_EVOLUTION_PRODUCTS = 10_000  # kernel products per neighbourhood and round (~4.5 s at N ~ 1,200)
PRODUCT_SECONDS = 0.45e-3  # one [N, N] x [N, 16] product at N = 1,194 (BUILD.md "Measured round times")
VISITS_PER_PRODUCT = 50  # grid points visited per kernel product of time
STEP_PRODUCTS = {"dopri5": 6, "imex": 6}  # products per adaptive step (FSAL Dormand-Prince; KenCarp4 stages)
GIB = 2**30


def _per_interval(nc) -> tuple[float, str]:
    """(kernel products per grid interval, how) of an `algorithm_kw.evolution` block's integrator."""
    name = nc.integrator
    if name == "euler":
        return 1.0, "1 product per grid interval"
    if name == "rk4":
        return 4.0 * nc.substeps, f"4 x {nc.substeps} sub-steps per grid interval"
    if name == "rk4_hermite":
        return 4.0 / nc.stride, f"4 products per {nc.stride} grid intervals"
    max_stride = nc.imex.max_stride if name == "imex" else nc.max_stride
    return STEP_PRODUCTS[name] / max_stride, f"{STEP_PRODUCTS[name]} products per step of <= {max_stride} intervals"


def evolution_work(nc, tau_max: int) -> float:
    """Kernel products (at least) of one neighbourhood's evolution over `tau_max` grid intervals."""
    return tau_max * (_per_interval(nc)[0] + 1.0 / VISITS_PER_PRODUCT)


def evolution_problem(config) -> str | None:
    """None, or why an NTK algorithm's `config.algorithm_kw.taus` asks for more evolution work than
    `MAX_EVOLUTION_PRODUCTS`.

    Call after the types and ranges of `config.algorithm_kw` are checked (`validation`).
    """
    nc = config.algorithm_kw.evolution
    taus = tuple(config.algorithm_kw.taus)
    work = evolution_work(nc, taus[-1])
    if work <= MAX_EVOLUTION_PRODUCTS:
        return None
    per, how = _per_interval(nc)
    largest = int(MAX_EVOLUTION_PRODUCTS / (per + 1.0 / VISITS_PER_PRODUCT))
    seconds = work * PRODUCT_SECONDS
    total = seconds * config.partition.num_nodes * config.rounds
    return (f"algorithm_kw.taus={taus} needs about {work:,.0f} kernel products per neighbourhood and round "
            f"with algorithm_kw.evolution.integrator={nc.integrator!r} (tau_max {taus[-1]:,} grid intervals, {how}), "
            f"more than {MAX_EVOLUTION_PRODUCTS:,}: ~{_duration(seconds)} per node and round at ~1,200 rows, "
            f"~{_duration(total)} for {config.partition.num_nodes} nodes x {config.rounds} rounds; with this "
            f"integrator tau_max may be at most {largest:,} (the SPEC's candidates end at 800)")


def _duration(seconds: float) -> str:
    """'45 s', '12 min', '1,234 h'."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:,.0f} h"


def memory_estimate(config, n_max: int, num_params: int, num_slots: int) -> dict[str, float]:
    """Bytes a run holds at least, by part (see the module docstring). n_max: largest node's samples."""
    m = config.partition.num_nodes
    pixels = data.dataset_spec(config.data.dataset).image_size  # float32 pixels + a bool mask per sample
    parts = {
        f"{m} x {m} mixing matrix and neighbour sort": 16.0 * m * m,
        f"node data {m} x {n_max} images": 4.0 * m * n_max * (pixels + 1) + m * n_max,
        f"{m} x {num_params:,} parameters x 2": 8.0 * m * num_params,
    }
    if config.algorithm in ("spark", "ntk_dfl"):
        rows = num_slots * n_max
        parts[f"a {rows:,}-row neighbourhood kernel"] = 4.0 * rows * rows
    return parts


def available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable, capped by a cgroup limit; None if unknown."""
    found = []
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = pathlib.Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(pathlib.Path("/sys/fs/cgroup/memory.current").read_text())
            found.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            return None
    return max(min(found), 0)


def memory_problem(config, n_max: int, num_params: int, num_slots: int, available: int | None,
                   device_available: int | None = None) -> str | None:
    """None, or why the run cannot fit (partition.num_nodes and the estimate named).

    available: free host bytes (`available_memory`); device_available: free bytes of one accelerator
    (None on CPU, where everything is host memory): it must hold all but the topology.
    """
    parts = memory_estimate(config, n_max, num_params, num_slots)
    checks = [("", parts, available)]
    if device_available is not None:
        checks.append((" on the device", {k: v for k, v in parts.items() if "mixing" not in k}, device_available))
    for where, held, free in checks:
        need = sum(held.values())
        if free is None or need <= free:
            continue
        shown = ", ".join(f"{what} {size / GIB:,.1f} GiB" for what, size in held.items() if size >= GIB / 10)
        kernel = " or a smaller neighbourhood" if config.algorithm in ("spark", "ntk_dfl") else ""
        return (f"partition.num_nodes={config.partition.num_nodes}: the run needs at least {need / GIB:,.1f} GiB"
                f"{where} ({shown}) but {free / GIB:,.1f} GiB are available; use fewer nodes{kernel}")
    return None


class OutOfMemoryError(ValueError):
    """XLA could not allocate a buffer of a round; the message names the round, the size and what to shrink."""


def out_of_memory_line(error: Exception, round_number: int, config) -> str | None:
    """One line for an XLA out-of-memory error in round `round_number`, or None for any other error."""
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text and "Out of memory" not in text:
        return None
    asked = re.search(r"allocating (\d+) bytes", text)
    size = f" allocating {int(asked.group(1)) / GIB:,.1f} GiB" if asked else ""
    chunk = "algorithm_kw.compute.node_chunk / " if "compute" in config.algorithm_kw else ""
    return (f"round {round_number}: out of memory{size} (partition.num_nodes={config.partition.num_nodes}, "
            f"topology.kind={config.topology.kind!r}); use fewer nodes, a smaller neighbourhood or a smaller "
            f"{chunk}eval.node_chunk")
