"""Runs over several processes (hosts) with `jax.distributed`: start-up, agreement, who writes.

One process per host (or per GPU group) runs the same `python -m
experiments.run ...` command; `initialize` connects it to the others (the
coordinator is process 0), after which `jax.devices()` is the global device
list and the 'nodes' mesh spans every process's devices
(`spark_jax.parallel`). Every process computes the whole (global) program on
its own shards; only process 0 writes run files (`is_writer`), while orbax
checkpoints are written by all of them together (each its own shards).

A run must be the same everywhere. `run_everywhere(stage, step, digest)` runs
a local step (config checks, data loading) on every process, then exchanges,
in one all-gather, whether it succeeded, a short error message and a digest
of its result: a failure or a disagreement on any process becomes an error on
every process (none is left waiting in a collective for one that has quit).

A process that cannot reach the coordinator (or a coordinator whose peers
never come) prints one line and exits with status 1 after `timeout_s`
seconds: a watchdog thread, because JAX's own time-out aborts the process
with a C++ stack trace.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import threading
from typing import Any, Callable

import jax
import numpy as np

MESSAGE_BYTES = 400  # an error message travels as this many UTF-8 bytes (cut)
DIGEST_BYTES = 32  # sha256

ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"


class DistributedError(ValueError):
    """Processes disagree (config, data), or another process failed; the message names them."""


@dataclasses.dataclass(frozen=True)
class Options:
    """How this process joins a multi-process run.

    coordinator_address: 'host:port' of process 0 (it listens there).
    num_processes / process_id: the number of processes and this one's index
    (0 = coordinator). auto: call `jax.distributed.initialize()` without
    arguments (Slurm, Open MPI and other clusters JAX detects). timeout_s:
    how long to wait for every process to connect.
    """

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False
    timeout_s: int = 60

    def __post_init__(self):
        explicit = self.num_processes is not None and self.num_processes > 1
        if explicit and (self.coordinator_address is None or self.process_id is None):
            raise DistributedError(
                f"num_processes={self.num_processes} needs the coordinator address (--coordinator_address or "
                f"${ENV_COORDINATOR}, 'host:port' of process 0) and this process's id (--process_id or "
                f"${ENV_PROCESS_ID})")
        if explicit and not 0 <= self.process_id < self.num_processes:
            raise DistributedError(f"process_id={self.process_id} must be in [0, {self.num_processes})")
        if self.timeout_s <= 0:
            raise DistributedError(f"the distributed time-out must be positive, got {self.timeout_s} s")

    @property
    def enabled(self) -> bool:
        return self.auto or (self.num_processes is not None and self.num_processes > 1)


def options_from(coordinator_address=None, num_processes=None, process_id=None, auto=False,
                 timeout_s=60, environ=os.environ) -> Options:
    """Options from flags, each falling back to its environment variable (JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES, JAX_PROCESS_ID)."""

    def integer(value, name):
        if value is None or value == "":
            return None
        try:
            return int(value)
        except ValueError:
            raise DistributedError(f"{name}={value!r} is not an integer") from None

    return Options(coordinator_address=coordinator_address or environ.get(ENV_COORDINATOR) or None,
                   num_processes=integer(num_processes if num_processes is not None
                                         else environ.get(ENV_NUM_PROCESSES), "num_processes"),
                   process_id=integer(process_id if process_id is not None else environ.get(ENV_PROCESS_ID),
                                      "process_id"),
                   auto=auto, timeout_s=timeout_s)


def _give_up(options: Options) -> None:
    who = f"process {options.process_id} of {options.num_processes}" if not options.auto else "this process"
    where = options.coordinator_address or "the cluster's coordinator"
    peers = "the other processes did not connect to" if options.process_id == 0 else "could not reach"
    sys.stderr.write(f"error: {who}: {peers} the coordinator at {where} within {options.timeout_s} s; start "
                     "every process with the same --coordinator_address (process 0's host:port) and "
                     "--num_processes\n")
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access  (the initialising thread is blocked in C++)


def initialize(options: Options) -> None:
    """Joins the run (no-op unless `options.enabled`); must come before anything uses a device.

    On CPU the cross-process collectives go through gloo. Exits the process
    with one line when not every process is connected within
    `options.timeout_s` seconds.
    """
    if not options.enabled:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    watchdog = threading.Timer(options.timeout_s, _give_up, args=(options,))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(options.coordinator_address, options.num_processes, options.process_id,
                                   initialization_timeout=options.timeout_s + 30,
                                   heartbeat_timeout_seconds=max(options.timeout_s, 10),
                                   shutdown_timeout_seconds=max(options.timeout_s, 10))
    finally:
        watchdog.cancel()


def shutdown() -> None:
    """Leaves the run (a barrier with the other processes); no-op in a one-process run."""
    if jax.process_count() > 1:
        jax.distributed.shutdown()


def is_writer() -> bool:
    """True on the process that writes run files (process 0; the only one without jax.distributed)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process gets here (no-op in a one-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

        multihost_utils.sync_global_devices(name)


def digest_json(obj) -> bytes:
    """sha256 of obj's canonical JSON (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).digest()


def digest_arrays(*arrays) -> bytes:
    """sha256 over the shapes, dtypes and bytes of numpy arrays."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.data)
    return h.digest()


def _row(ok: bool, digest: bytes, message: str) -> np.ndarray:
    """[1 + DIGEST_BYTES + MESSAGE_BYTES] int32: ok flag, digest bytes, message bytes (0-padded)."""
    text = message.encode()[:MESSAGE_BYTES]
    raw = bytes([int(ok)]) + digest.ljust(DIGEST_BYTES, b"\0") + text.ljust(MESSAGE_BYTES, b"\0")
    return np.frombuffer(raw, np.uint8).astype(np.int32)


def _unpack(row: np.ndarray) -> tuple[bool, bytes, str]:
    raw = np.asarray(row, np.uint8).tobytes()
    return bool(raw[0]), raw[1:1 + DIGEST_BYTES], raw[1 + DIGEST_BYTES:].rstrip(b"\0").decode(errors="replace")


def gather_rows(row: np.ndarray) -> np.ndarray:
    """[P, len(row)]: every process's row (an all-gather over all devices)."""
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    return np.asarray(multihost_utils.process_allgather(row))


def run_everywhere(stage: str, step: Callable[[], Any], digest: Callable[[Any], bytes],
                   gather: Callable[[np.ndarray], np.ndarray] | None = None):
    """result = step() on every process; raises on all of them unless it succeeded everywhere with
    equal `digest(result)`.

    One process: simply `step()`. Several: this process's own exception is
    re-raised as it is; otherwise a DistributedError names the first failed
    process and its message, or the processes whose digest differs from
    process 0's (the `stage`: e.g. 'config', 'data'). `gather` (tests)
    replaces the all-gather.
    """
    if gather is None:
        if jax.process_count() == 1:
            return step()
        gather = gather_rows
    try:
        result, error = step(), None
    except Exception as e:  # pylint: disable=broad-except  (re-raised below, after the exchange)
        result, error = None, e
    own = _row(error is None, b"" if error is not None else digest(result),
               "" if error is None else f"{type(error).__name__}: {error}")
    rows = [_unpack(r) for r in gather(own)]
    if error is not None:
        raise error
    failed = [(i, msg) for i, (ok, _, msg) in enumerate(rows) if not ok]
    if failed:
        i, msg = failed[0]
        others = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise DistributedError(f"process {i}{others} failed at the {stage} stage: {msg}")
    differ = [i for i, (_, d, _) in enumerate(rows) if d != rows[0][1]]
    if differ:
        raise DistributedError(
            f"the processes disagree on the {stage}: process(es) {', '.join(map(str, differ))} differ from "
            f"process 0 (of {len(rows)}); start every process with the same command, config and data")
    return result


def fetch(tree):
    """Host (numpy) copies of `tree`'s leaves, also of arrays spread over several processes."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return jax.device_get(x)

    return jax.tree.map(one, tree)
