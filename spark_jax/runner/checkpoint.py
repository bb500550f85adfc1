"""Checkpoints of a run (orbax): the full algorithm state, the round reached, the metrics so far.

Layout: RUN_DIR/checkpoints/<step>/ with two items,

  state  the pytree `Algorithm.init` returns, whatever it holds: node
         parameters [M, ...], SPARK's velocities [M, ...], ... (orbax
         StandardSave; restored into the same dataclass and sharding as a
         freshly initialised state).
  meta   JSON (`Progress.to_json`): `round` = step = rounds completed, the
         metrics records written so far, cumulative byte totals, wall time.

step = s means "the state after round s" (1-based), so the next round index
is r = s (0-based). PRNG streams: every random draw of a round is derived
statelessly from (config.seed, stream name, r): graphs from
`TopologyStream.graph(r)`, the round key `fold_in(train, r)`, sketches
`fold_in(sketch, r)` (`spark_jax.rng`). The round index is therefore the
position of every stream; a checkpoint stores no key, and restoring step s
resumes every stream at round s.

Atomic: orbax writes `<step>.orbax-checkpoint-tmp-*` and renames it to
`<step>` only when complete, so a run killed mid-save leaves no step that
looks complete; temp directories are removed when a manager opens the
directory. Saves are synchronous (the next round donates the state's buffers)
and the last `keep` steps are kept. SIGINT/SIGTERM arriving during a save are
delivered when it has finished (`run_signals.deferred`), so Ctrl-C never leaves a
temp directory behind.

Verified on restore (`restore_intact`): a step whose files do not read back
(truncated or deleted array files, a truncated meta/metadata), whose arrays
are not finite or whose progress does not match its step is skipped with a
warning naming it, and moved to RUN_DIR/checkpoints_corrupt/<step> (kept for
inspection, out of orbax's way); the newest intact step is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import pathlib
import re
import shutil
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from spark_jax.runner import run_signals

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints_corrupt"
KEEP = 2


class CheckpointError(ValueError):
    """No complete checkpoint of a run reads back intact; the message names each one and why."""


@dataclasses.dataclass
class Progress:
    """What a run has produced so far besides its state (JSON-able).

    round: rounds completed (= the next 0-based round index = every PRNG
    stream's position). history: the metrics.jsonl records, one per round.
    bytes_cumulative / byte_totals: communication so far (`comm`).
    wall_time: seconds spent in rounds so far (timing only).
    """

    round: int = 0
    history: list = dataclasses.field(default_factory=list)
    bytes_cumulative: int = 0
    byte_totals: dict = dataclasses.field(default_factory=dict)
    wall_time: float = 0.0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Progress":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def checkpoint_dir(run_dir) -> pathlib.Path:
    return pathlib.Path(run_dir) / CHECKPOINT_DIR


def complete_steps(run_dir) -> list[int]:
    """Steps of the finalized checkpoints of `run_dir`, ascending ([] if none)."""
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

    path = checkpoint_dir(run_dir)
    return sorted(ocp.path.step.checkpoint_steps(path)) if path.is_dir() else []


def latest_step(run_dir) -> int | None:
    steps = complete_steps(run_dir)
    return steps[-1] if steps else None


def open_manager(run_dir, keep: int = KEEP):
    """A synchronous orbax CheckpointManager on RUN_DIR/checkpoints keeping the last `keep` steps."""
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True)
    manager = None
    try:  # SIGINT/SIGTERM mid-construction would leave its threads running: deferred, then closed
        with run_signals.deferred():
            manager = ocp.CheckpointManager(checkpoint_dir(run_dir).absolute(), options=options)
            # orbax removes the temp directories of interrupted saves in a thread that close() does not
            # wait for (only the first save does); a run stopped before its first save would remove its
            # directory under that thread. Wait for it here (orbax 0.12; absent elsewhere: no wait).
            getattr(manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()
    except BaseException:
        if manager is not None:
            manager.close()
        raise
    return manager


def save(manager, state, progress: Progress) -> None:
    """Writes checkpoint step = progress.round (atomically; returns when it is complete)."""
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

    step_dir = pathlib.Path(manager.directory) / str(progress.round)
    with run_signals.deferred():  # a signal comes after the step is written, or after its temp dirs are gone
        try:
            with _quiet_orbax():
                manager.save(progress.round, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                     meta=ocp.args.JsonSave(progress.to_json())),
                             force=True)
                manager.wait_until_finished()
        except Exception as e:  # e.g. disk full: one OSError naming the step; no temp directory left behind
            _remove_temp_dirs(step_dir)
            if isinstance(e, OSError) and e.filename is not None:
                raise
            code = getattr(e, "errno", None) or _os_error_code(e)
            cause = os.strerror(code) if code else f"checkpoint not written ({_reason(e)})"
            raise OSError(code or errno.EIO, cause, str(step_dir)) from e


def _remove_temp_dirs(step_dir: pathlib.Path, quiet_s: float = 0.3, limit_s: float = 5.0) -> bool:
    """Removes the temp directories of a failed save of `step_dir`; True if none is left.

    Orbax raises on the first failed write while tensorstore's writer threads may still be writing the
    others, and a writer re-creates the directories of its file: so the directories are removed until
    none has appeared for `quiet_s` seconds (at most `limit_s`; a removal refused by the filesystem,
    e.g. permissions or a read-only mount, ends it at once). Whatever is left is logged (orbax removes
    it when the run next opens its checkpoints)."""
    pattern = f"{step_dir.name}.orbax-checkpoint-tmp*"
    deadline, quiet_since, refused = time.monotonic() + limit_s, None, False
    while True:
        found = list(step_dir.parent.glob(pattern))
        for tmp in found:
            try:
                shutil.rmtree(tmp)
            except FileNotFoundError:
                pass
            except OSError as e:  # ENOTEMPTY / EEXIST: a writer added a file meanwhile; try again
                refused |= e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        now = time.monotonic()
        if refused or now >= deadline:
            left = list(step_dir.parent.glob(pattern))
            if left:
                logging.warning("could not remove the temp directories of a failed checkpoint save: %s",
                                ", ".join(map(str, left)))
            return not left
        if found:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= quiet_s:
            return True
        time.sleep(0.05)


def restore(run_dir, step: int, like: Any = None) -> tuple[Any, Progress]:
    """(state, progress) of checkpoint `step`.

    like: a state of the same structure (e.g. a freshly initialised one): the
    result has its pytree type, dtypes and shardings. None: nested dicts of
    arrays whole on this process's first device, whatever devices saved them
    (a CPU run is split into several, `parallel.cpu_devices`; for inspection
    and tests).
    """
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

    if like is None:
        saved = ocp.StandardCheckpointer().metadata(checkpoint_dir(run_dir) / str(step) / "state").item_metadata
        whole = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=whole),
                                getattr(saved, "tree", saved))
    else:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    with open_manager(run_dir) as manager:
        out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                           meta=ocp.args.JsonRestore()))
    return out.state, Progress.from_json(out.meta)


def keep_only_latest(manager) -> None:
    """Deletes every step but the latest (a finished run keeps its final state only)."""
    steps = sorted(manager.all_steps())
    for step in steps[:-1]:
        manager.delete(step)


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax logs the traceback of every failing reader/writer thread; we raise (or report) one error."""
    _quiet_closed_loop_callbacks()
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.FATAL)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def _quiet_closed_loop_callbacks() -> None:
    """After a failed read or write, tensorstore still calls back into orbax's closed event loops from
    its threads, and Python prints each 'Event loop is closed' RuntimeError; those are echoes of the
    one error we raise, so they are dropped (installed once; every other exception still reaches the
    previous hooks)."""
    import sys  # pylint: disable=g-import-not-at-top

    if getattr(sys.excepthook, "_spark_jax_quiet", False):
        return
    # asyncio also reports the failed reader's future when it is garbage-collected ("Future exception was
    # never retrieved", with its traceback): another echo of the same error.
    import logging as std_logging  # pylint: disable=g-import-not-at-top
    std_logging.getLogger("asyncio").addFilter(
        lambda record: "exception was never retrieved" not in record.getMessage())
    # Orbax's writer threads log their exception with its traceback (`logging.exception`) when they fail,
    # which may be after `_quiet_orbax` has ended (the thread outlives the save that raised): the same error
    # that `save` raises as one OSError, or `restore_intact` names. Dropped; orbax's other records stay.
    logging.get_absl_logger().addFilter(
        lambda record: not (record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname))
    previous, previous_unraisable = sys.excepthook, sys.unraisablehook

    def echo(value) -> bool:
        return isinstance(value, RuntimeError) and str(value) == "Event loop is closed"

    def hook(kind, value, tb):
        if not echo(value):
            previous(kind, value, tb)

    def unraisable(info):  # also a failed reader coroutine collected unawaited: the error restore raises
        reader = "_read_array_index_and_device_put" in repr(info.object)
        if not (echo(info.exc_value) or reader):
            previous_unraisable(info)

    hook._spark_jax_quiet = True
    sys.excepthook, sys.unraisablehook = hook, unraisable


def _os_error_code(e: BaseException) -> int | None:
    """The errno tensorstore reports inside an orbax error ("... [os_error_code='28']"), if any."""
    while e is not None:
        found = re.search(r"os_error_code='(\d+)'", str(e))
        if found:
            return int(found.group(1))
        e = e.__cause__ or e.__context__
    return None


def _reason(e: BaseException, limit: int = 200) -> str:
    """One line: the root cause of `e` (orbax wraps tensorstore's error, which names the file)."""
    while True:  # the explicit cause, else the implicit context unless suppressed (`raise ... from None`)
        inner = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
        if inner is None:
            break
        e = inner
    line = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {line[:limit]}{'...' if len(line) > limit else ''}"


def verify(state, progress: Progress, step: int) -> None:
    """Raises CheckpointError unless `progress` is that of `step` and every array of `state` is finite."""
    rounds = [r.get("round") if isinstance(r, dict) else None for r in progress.history]
    if progress.round != step or rounds != list(range(1, step + 1)):
        raise CheckpointError(f"its progress (round {progress.round}, {len(rounds)} metrics records) is not "
                              f"that of step {step}")
    if not all(np.all(np.isfinite(v)) for x in jax.tree.leaves(state) for v in _local_values(x)):
        raise CheckpointError("its state holds NaN/Inf")


def _local_values(x) -> list[np.ndarray]:
    """This process's values of `x`: its shards when `x` spans other processes' devices (multi-process)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return [np.asarray(s.data) for s in x.addressable_shards]
    return [np.asarray(x)]


def restore_intact(run_dir, like: Any = None) -> tuple[Any, Progress] | None:
    """(state, progress) of the newest checkpoint that reads back intact (`verify`); None if there is none.

    Corrupt newer steps are moved to RUN_DIR/checkpoints_corrupt/<step>, with a
    warning naming each; CheckpointError (naming every step and its fault)
    when checkpoints exist but none is intact, and then nothing is moved.
    """
    skipped = []
    for step in reversed(complete_steps(run_dir)):
        try:
            with _quiet_orbax():
                state, progress = restore(run_dir, step, like)
            verify(state, progress, step)
        except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many kinds)
            skipped.append((step, _reason(e)))
            continue
        for bad, reason in skipped:
            if jax.process_index() != 0:  # multi-process: process 0 moves them
                continue
            moved = pathlib.Path(run_dir) / CORRUPT_DIR / str(bad)
            moved.parent.mkdir(exist_ok=True)
            shutil.move(str(checkpoint_dir(run_dir) / str(bad)), str(moved))
            logging.warning("skipping the corrupt checkpoint %s (%s); moved to %s; resuming from the checkpoint "
                            "of round %d", checkpoint_dir(run_dir) / str(bad), reason, moved, step)
        return state, progress
    if skipped:
        listed = "; ".join(f"{checkpoint_dir(run_dir) / str(s)}: {r}" for s, r in skipped)
        raise CheckpointError(f"cannot resume {run_dir}: no checkpoint reads back intact ({listed}); remove "
                              f"{checkpoint_dir(run_dir)} to restart the run from round 0")
    return None
