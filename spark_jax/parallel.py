"""The node axis over several devices: a 1-D 'nodes' mesh, placement, `node_map`.

Every array with a leading node axis [M, ...] (the state, the per-node
outputs of a round) is split into M/D consecutive nodes per device with
`NamedSharding(mesh, P('nodes'))`; D must divide M. The per-node step of a
round runs through `node_map`: without a mesh it is `lax.map` (today's
single-device program), with one it is a `jax.shard_map` over 'nodes' in
which each device `lax.map`s over its own M/D nodes only.

The neighbour gather works across shards because everything the per-node
function reads besides its own node's slice — the node data it gathers
neighbourhoods from, the round's projection matrices, teacher logits — goes
in `shared`: replicated `shard_map` inputs (spec P()), seen whole on every
device (XLA all-gathers one that is sharded). They must be passed, not
closed over: in jax 0.10 a closed-over jit argument placed with a
NamedSharding keeps its (Auto) mesh in its type and fails inside the
shard_map's Manual context ("Context mesh ... should match the mesh of
sharding ... passed to index_to_gather"). The mixing step `base.mix` is plain
jit code on sharded arrays; XLA inserts the collectives for its gather.

Several processes (hosts): `spark_jax.runner.distributed.initialize` first (experiments.run
--num_processes ...); `jax.devices()` is then the global device list, the
same program runs in every process, and each places the pieces its own
devices hold (`_from_host`; BUILD.md "Multiple devices").
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from spark_jax.options import NODE_BATCHING  # the option list, defined once

NODES = "nodes"
CPU_DEVICES_AUTO_MAX = 8  # `split_cpu(0)`: each CPU device holds its own copy of the node data (0.2 GB at 300 nodes)
_CPU_COUNT_FLAG = "xla_force_host_platform_device_count"
# XLA:CPU aborts the process (SIGABRT and a C++ stack dump) when one device reaches a collective more than
# 60 s after another: a 20 s warning, then this flag's 40 s. A busy 2-core machine made one device of a
# 300-node round wait 43 s (BUILD.md "Multiple devices"); an hour covers any real imbalance and still ends a
# real hang. (The 20 s warning, `--xla_cpu_collective_call_warn_stuck_timeout_seconds`, is only a log
# line: it stays.) jaxlib 0.8.0, the oldest this project takes, through 0.10.2 register this one (checked);
# one that dropped it would stop every run at start-up with XLA's 'Unknown flag in XLA_FLAGS' line, which
# the suite's CLI tests catch.
COLLECTIVE_TERMINATE_FLAG = "--xla_cpu_collective_call_terminate_timeout_seconds"
COLLECTIVE_TERMINATE_S = 3600


def cpu_device_count(requested: int, cores: int | None = None) -> int:
    """The CPU devices `split_cpu(requested)` makes: `requested`, or for 0 the cores this process may use
    (`os.sched_getaffinity`), at most `CPU_DEVICES_AUTO_MAX`."""
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise ValueError(f"parallel.cpu_devices={requested!r} must be an integer >= 0 (0 = one per core, "
                         f"at most {CPU_DEVICES_AUTO_MAX}; 1 = the CPU as one device)")
    if requested:
        return requested
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, CPU_DEVICES_AUTO_MAX))


ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")


def runs_on_cpu(environ=os.environ, plugins=ACCELERATOR_PLUGINS) -> bool:
    """Whether JAX will compute on the CPU (before it starts): `JAX_PLATFORMS` starting with 'cpu', or no
    GPU/TPU plugin installed. (On an accelerator machine the CPU devices run no collectives.)"""
    platforms = environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(name) is not None for name in plugins)


def allow_slow_collectives(environ=os.environ, plugins=ACCELERATOR_PLUGINS) -> None:
    """Raises XLA:CPU's termination timeout of a collective to `COLLECTIVE_TERMINATE_S` in
    `environ['XLA_FLAGS']` when JAX will compute on the CPU (`runs_on_cpu`), unless XLA_FLAGS already
    sets it. Effective only before JAX starts its backends (`split_cpu` calls it; so does
    `experiments.run` for multi-process runs)."""
    flags = environ.get("XLA_FLAGS", "")
    if COLLECTIVE_TERMINATE_FLAG not in flags and runs_on_cpu(environ, plugins):
        environ["XLA_FLAGS"] = f"{flags} {COLLECTIVE_TERMINATE_FLAG}={COLLECTIVE_TERMINATE_S}".strip()


def recorded_xla_flags(flags: str) -> str:
    """XLA_FLAGS as a run records them: without `allow_slow_collectives`'s own flag, which changes no
    number (so resuming a run recorded before it does not warn of another environment)."""
    ours, parts = f"{COLLECTIVE_TERMINATE_FLAG}={COLLECTIVE_TERMINATE_S}", flags.split()
    return " ".join(f for f in parts if f != ours) if ours in parts else flags  # else as given, spacing and all


def split_cpu(requested: int, environ=os.environ) -> int | None:
    """Splits the host CPU into `cpu_device_count(requested)` XLA devices (`config.parallel.cpu_devices`).

    On XLA:CPU one device runs one op at a time; most of an NTK round's evolution is small ops (softmaxes,
    Newton iterations) that leave the other cores idle, so the 'nodes' mesh over one device per core runs
    each core's nodes side by side (BUILD.md "Multiple devices"): same maths, float32 rounding apart.
    Must come before JAX starts its backends (entry points call it first); the CPU devices are unused
    when a GPU/TPU is the default backend. Returns the count set, or None when the environment already
    chose it (`XLA_FLAGS=--xla_force_host_platform_device_count=N` or `JAX_NUM_CPU_DEVICES`): that wins.
    Raises ValueError if this process already has another count (set, or JAX already started).
    Also `allow_slow_collectives(environ)`: one device per core waits at collectives for the others.
    """
    n = cpu_device_count(requested)
    allow_slow_collectives(environ)
    if _CPU_COUNT_FLAG in environ.get("XLA_FLAGS", "") or environ.get("JAX_NUM_CPU_DEVICES"):
        return None
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top  # no public "backends started?"

    if xla_bridge.backends_are_initialized():
        have = len(jax.devices("cpu"))
    else:
        have = jax.config.jax_num_cpu_devices  # -1 = not set yet
    if have not in (-1, n):
        raise ValueError(f"parallel.cpu_devices={requested} asks for {n} CPU devices, but this process already "
                         f"has {have}: the CPU is split once per process, before anything uses a device")
    jax.config.update("jax_num_cpu_devices", n)
    return n


def node_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh with axis 'nodes' over the first `num_devices` devices (None = all).

    Auto axis type: shardings propagate through jit as usual, and `shard_map`
    takes explicit in/out specs.
    """
    available = jax.device_count()
    n = available if num_devices is None else num_devices
    if not 1 <= n <= available:
        raise ValueError(f"{n} devices requested but {available} available ({jax.devices()[0].platform})")
    return jax.make_mesh((n,), (NODES,), axis_types=(AxisType.Auto,))


def size(mesh: Mesh | None) -> int:
    """Devices the node axis is split over (1 without a mesh)."""
    return 1 if mesh is None else mesh.size


def check_divisible(num_nodes: int, num_devices: int) -> None:
    """ValueError unless the node axis splits evenly over the devices."""
    if num_nodes % num_devices:
        lower = num_nodes - num_nodes % num_devices
        nodes = " or ".join(str(n) for n in (lower, lower + num_devices) if n > 0)
        devices = max(d for d in range(1, num_devices) if num_nodes % d == 0)
        raise ValueError(
            f"{num_nodes} nodes cannot be split evenly over {num_devices} devices: the node count must be "
            f"divisible by the device count; use {nodes} nodes (partition.num_nodes) "
            f"or {devices} devices (parallel.devices)")


def _place(x, sharding: NamedSharding):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        # Already a global (multi-host) array: reshard on the devices.
        return jax.jit(lambda a: a, out_shardings=sharding)(x)
    if jax.process_count() > 1:
        return _from_host(x, sharding)
    return jax.device_put(x, sharding)


def _from_host(x, sharding: NamedSharding):
    """Multi-host placement: every host holds the same full value (same seed,
    same files) and places the pieces its own devices need."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_from_host(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def node_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (node) axis split over 'nodes', other axes whole."""
    return NamedSharding(mesh, P(NODES))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_nodes(tree, mesh: Mesh):
    """Places every leaf [M, ...] with its node axis split over the mesh (M/D nodes each)."""
    for leaf in jax.tree.leaves(tree):
        check_divisible(np.shape(leaf)[0], mesh.size)
    return jax.tree.map(lambda x: _place(x, node_sharding(mesh)), tree)


def replicate(tree, mesh: Mesh):
    """Places every leaf whole on every device of the mesh."""
    return jax.tree.map(lambda x: _place(x, replicated_sharding(mesh)), tree)


def constrain_nodes(tree, mesh: Mesh | None):
    """Inside jit: keeps the node axis of `tree` split over the mesh (identity without one).

    A round's new state must leave with the sharding it came in with, or the
    next round's call recompiles (XLA may otherwise pick replicated, e.g.
    after the mixing gather).
    """
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, node_sharding(mesh))


def node_map(fn: Callable, xs, batch_size: int, mesh: Mesh | None = None, shared: tuple = ()):
    """ys = [fn(xs[i], *shared) for every node i], stacked: the per-node step of a round.

    xs: pytree, leaves [M, ...] (node i's slice goes to fn); shared: a tuple of
    pytrees every node reads whole (node data, scalars, projections; None
    entries are fine). Without a mesh: `jax.lax.map` with `batch_size`
    (0 = one vmap over all nodes), `shared` simply closed over. With a mesh: a
    `shard_map` over 'nodes' (xs and the outputs split P('nodes'), `shared`
    replicated P()) in which each device runs that `lax.map` over its own
    M/D nodes, `min(batch_size, M/D)` at a time. Traced values `fn` needs
    besides its node slice must come through `shared`, not a closure (module
    docstring).
    """
    if mesh is None:
        return jax.lax.map(lambda x: fn(x, *shared), xs, batch_size=batch_size)
    num_nodes = jax.tree.leaves(xs)[0].shape[0]
    check_divisible(num_nodes, mesh.size)
    local = num_nodes // mesh.size

    def local_map(xs_local, shared_whole):
        return jax.lax.map(lambda x: fn(x, *shared_whole), xs_local, batch_size=min(batch_size, local))

    # check_vma=False: fn has no collectives and every output is split over
    # 'nodes', so the check has nothing to verify; off, per-node loops whose
    # carries start from replicated values need no `jax.lax.pcast` (the
    # default paths also pass with it on).
    return jax.shard_map(local_map, mesh=mesh, in_specs=(P(NODES), P()), out_specs=P(NODES),
                         check_vma=False)(xs, tuple(shared))



def with_node_batching(fn, batching: str = "auto"):
    """How a per-node phase `fn` runs when the round vmaps it over a chunk of nodes.

    "vectorized": jax.vmap's batched program (batched matmuls; an adaptive
      evolution then runs every node for the chunk's largest step count, the
      others idling on masked steps).
    "sequential": a loop over the chunk's nodes (`custom_batching.sequential_vmap`):
      plain GEMMs, each node only its own adaptive steps. On XLA:CPU faster
      than the batched program: dopri5 evolution of the demo setting 6.9 s ->
      4.0 s (`benchmarks.round`), SPARK's sketch 1.75 -> 0.86 s per node at 300
      nodes (`benchmarks.spark_round`; `--config.algorithm_kw.compute.node_batching=vectorized`
      for the other side).
    "auto": sequential on CPU, vectorized on accelerators (where batching is
      what fills the device).
    Values agree up to float32 rounding (tested); only the schedule differs.
    """
    if batching not in NODE_BATCHING:
        raise ValueError(f"unknown node batching {batching!r}; choose one of {NODE_BATCHING}")
    if batching == "auto":
        batching = "sequential" if jax.default_backend() == "cpu" else "vectorized"
    return jax.custom_batching.sequential_vmap(fn) if batching == "sequential" else fn
