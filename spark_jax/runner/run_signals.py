"""Stopping a run or sweep by signal: SIGINT (Ctrl-C) and SIGTERM (`kill`, a scheduler) end it alike.

Python turns SIGINT into KeyboardInterrupt; SIGTERM's default action kills
the process without any cleanup, which would leave a new run directory
without a completed round that a plain rerun refuses. Inside
`stop_signals_raise()` (the CLIs wrap their work in it) SIGTERM raises
`Terminated`, a KeyboardInterrupt, so the same cleanup runs for both: a run
with no completed round removes its directory, a run in its rounds raises
`Interrupted` (its directory is resumable, from its last checkpoint), and a
checkpoint or metrics line being written is finished first (`deferred`).

`stop_line` is the one line the CLIs print, and `exit_status` their exit
status: 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import gc
import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt (`sigterm_raises`)."""


def signum_of(exc: BaseException) -> int:
    """SIGTERM for `Terminated` (or an `Interrupted` / `SweepInterrupted` by it), else SIGINT."""
    if isinstance(exc, (Interrupted, SweepInterrupted)):
        return exc.signum
    return signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT


def exit_status(exc: BaseException) -> int:
    return 128 + int(signum_of(exc))


def verb(exc: BaseException) -> str:
    return "terminated" if signum_of(exc) == signal.SIGTERM else "interrupted"


class Interrupted(Exception):
    """SIGINT/SIGTERM during the rounds of a run.

    round: the round that was running (1-based); path: the run directory;
    kept: False when the run had completed no round and its new directory was
    removed (a plain rerun starts it again), True when it is resumable.
    """

    def __init__(self, round_number: int, path, signum: int = signal.SIGINT, kept: bool = True):
        super().__init__(f"{'terminated' if signum == signal.SIGTERM else 'interrupted'} at round {round_number}; "
                         f"{path} is resumable from its last checkpoint")
        self.round, self.path, self.signum, self.kept = round_number, path, signum, kept


class SweepInterrupted(Exception):
    """SIGINT/SIGTERM during a sweep; `cause` is the `Interrupted` of its run (or a KeyboardInterrupt between
    runs), `run_name` the run it was in (None: between runs). The sweep is resumable: the same command."""

    def __init__(self, cause: BaseException, run_name: str | None):
        super().__init__(f"sweep {verb(cause)}" + (f" in run {run_name}" if run_name else ""))
        self.cause, self.run_name, self.signum = cause, run_name, signum_of(cause)


def interrupted(exc: KeyboardInterrupt, round_number: int, path) -> Interrupted:
    return Interrupted(round_number, path, signum_of(exc))


_pending: list[int] = []  # signals received inside `stop_signals_raise` (raised again by `raise_pending`)


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _swallowed_here(frame) -> bool:
    """True inside a garbage-collector callback or a __del__, where Python prints and ignores exceptions."""
    callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _raise(signum, frame):
    _pending.append(signum)
    if not _swallowed_here(frame):  # else the next `raise_pending` raises it
        raise _exception(signum)


def raise_pending() -> None:
    """Raises again a signal whose exception was swallowed: Python runs handlers between any two bytecodes,
    also inside a garbage-collector callback (JAX has one), where a raised exception is printed and
    ignored. The round and sweep loops call this at each step, so such a signal stops them there."""
    if _pending:
        raise _exception(_pending[0])


@contextlib.contextmanager
def stop_signals_raise():
    """Inside the block SIGINT raises KeyboardInterrupt and SIGTERM `Terminated` in the main thread, and both
    are remembered for `raise_pending`; the previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _pending.clear()
    previous = {s: signal.signal(s, _raise) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        _pending.clear()


def run_stop_line(exc: BaseException, resume_command: str, resumable: bool) -> str:
    """The CLI's line for a run stopped by a signal (`exc`: Interrupted, or a KeyboardInterrupt outside the
    rounds); `resumable`: the run directory holds a run (config.json) after the cleanup."""
    if isinstance(exc, Interrupted) and exc.kept:
        return f"error: {verb(exc)} at round {exc.round}; resume with {resume_command}"
    if isinstance(exc, Interrupted) or not resumable:
        return f"error: {verb(exc)} before the first round completed; nothing was kept (rerun the same command)"
    return f"error: {verb(exc)} before the next round; resume with {resume_command}"


def sweep_stop_line(exc: BaseException, command: str) -> str:
    """The sweep CLI's line (`exc`: SweepInterrupted, or a KeyboardInterrupt before the sweep started): where
    it stopped, and the command that resumes it (the same one)."""
    where = ""
    if isinstance(exc, SweepInterrupted) and exc.run_name:
        cause = exc.cause
        at = f" at round {cause.round}" if isinstance(cause, Interrupted) and cause.kept else ""
        where = f" in run {exc.run_name}{at}"
    return f"error: sweep {verb(exc)}{where}; resume with {command}"


@contextlib.contextmanager
def deferred(signums=(signal.SIGINT, signal.SIGTERM)):
    """SIGINT/SIGTERM received inside the block are re-raised once it exits (to the previous handlers).

    For writes that must complete or not start: orbax writes a checkpoint step
    from worker threads (a KeyboardInterrupt in the middle would leave
    `<step>.orbax-checkpoint-tmp` behind while they still write); a metrics line
    is appended and fsynced (cut back on failure, so an interrupt there would
    drop a round that was run). Only the main thread can install handlers;
    elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        if received:
            signal.raise_signal(received[0])
