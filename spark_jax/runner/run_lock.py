"""An exclusive lock on a run (or sweep) directory: one writer at a time.

`hold(directory)` creates `directory/.lock`, takes an exclusive, non-blocking
`flock` on it and writes the holder's pid into it. A second process gets
`LockedError` naming the holder's pid at once (it never waits). The kernel
drops a flock when its process dies, even by kill -9, so a lock file left by
a killed process is stale by construction: it is taken over, with a warning
naming the dead pid. The lock file is removed on release; `RunDir` treats a
directory holding only it as empty.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib

from absl import logging

LOCK_NAME = ".lock"


class LockedError(RuntimeError):
    """Another live process holds the directory's lock; the message names its pid."""


def _read_pid(path: pathlib.Path) -> int | None:
    try:
        return int(path.read_text().strip() or "x")
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire(directory) -> int:
    """Takes the lock of `directory` (which must exist); returns the open fd that holds it."""
    path = pathlib.Path(directory) / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _read_pid(path)
            holder = f"pid {pid}" if pid is not None else "a process that has not written its pid yet"
            raise LockedError(f"{directory} is in use by another process ({holder}, lock {path}); wait for it "
                              "to finish or pass another --workdir") from None
        try:  # the holder may have removed the file between our open and flock: lock the current one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    old = os.pread(fd, 64, 0).decode(errors="replace").strip()
    if old.isdigit() and int(old) != os.getpid():
        state = "still running but not holding it" if pid_alive(int(old)) else "no longer running"
        logging.warning("taking over the stale lock %s of pid %s (%s)", path, old, state)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release(directory, fd: int) -> None:
    """Removes the lock file (if still ours) and drops the lock."""
    path = pathlib.Path(directory) / LOCK_NAME
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            path.unlink()
    os.close(fd)


@contextlib.contextmanager
def hold(directory):
    """Holds the lock of `directory` (created, with its parents, if missing) for the `with` block.

    A directory this call created is removed again on exit when it is left
    empty, so a run that fails before writing anything leaves nothing behind.
    """
    directory = pathlib.Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    fd = acquire(directory)
    try:
        yield
    finally:
        release(directory, fd)
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty
