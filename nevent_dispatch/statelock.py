"""One daemon per state database: an exclusive lock held for the daemon's whole life.

Two daemons on one state database would both deliver: the second re-queues the
first's in-flight work and sends it again under new delivery ids. ``hold``
takes ``flock(LOCK_EX | LOCK_NB)`` on ``<database.state>.lock`` and writes the
holder's pid into it. The kernel releases the lock when the process dies,
``kill -9`` included, so a file left behind never blocks a restart.

It must not touch the databases themselves, and the file is never removed: a
process that opened it just before the unlink would lock an orphaned inode
while the next one locks a new file, and both would run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from .store.sqlite import StoreError

#: Appended to the state database's path to name its lock file.
SUFFIX = ".lock"


class StateInUse(StoreError):
    """Another daemon holds the state database's lock."""


def lock_path(state: Path | str) -> Path:
    """The lock file of a state database: ``var/dispatch.db`` → ``var/dispatch.db.lock``."""
    return Path(os.path.abspath(state) + SUFFIX)


def _holder(fd: int) -> str:
    """The pid the holder wrote, or ``unknown`` (it may not have written it yet)."""
    with contextlib.suppress(OSError):
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return text
    return "unknown"


def _lock_exclusive(fd: int) -> None:
    """Take the lock, allowing ~0.1 s for a reader's brief probe (``running_pid``)."""
    for _ in range(5):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.02)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


@contextlib.contextmanager
def hold(state: Path | str) -> Iterator[Path]:
    """Hold the lock of ``state`` until the block exits; raise ``StateInUse`` if it is taken."""
    path = lock_path(state)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Not inherited by children (os.open's default); owner-only, like the databases.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(f"database.state: cannot open lock {str(path)!r}: {exc}") from None
    try:
        try:
            _lock_exclusive(fd)
        except BlockingIOError:
            raise StateInUse(
                f"database.state: {os.path.abspath(state)} is in use by another nevent-dispatch "
                f"run (pid {_holder(fd)}; lock {path})") from None
        except OSError as exc:
            raise StoreError(f"database.state: cannot lock {str(path)!r}: {exc}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            # A pid left in the file would name a process that no longer holds it.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def running_pid(state: Path | str) -> int | None:
    """The pid of the daemon holding ``state``'s lock, or None when none runs (read-only:
    a missing lock file is not created)."""
    try:
        fd = os.open(lock_path(state), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            return int(holder) if holder.isdigit() else -1
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
