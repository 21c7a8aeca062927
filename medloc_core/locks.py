"""Exclusive file locks between live processes: one live run per store, one live run per training folder.

An ``flock`` belongs to an open file, so the kernel drops it when the process ends in any way (``kill -9``
included): a lock found held is always held by a live process, never left over by a dead one. The file
keeps the holder's pid and start time (UTC) for the message that names it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


class LockHeld(RuntimeError):
    """Another live process holds the lock; the message (one line) names the holder and the lock file."""


def try_lock(path: str | os.PathLike[str]) -> IO[str] | None:
    """Take an exclusive, non-blocking lock on ``path`` (created if missing) and record this process in it.
    Returns the open file, which holds the lock until it is closed, or None when another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")  # not "w": truncating before the lock is ours would erase the holder's note
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}, since {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}\n")
    handle.flush()
    return handle


def holder(path: str | os.PathLike[str]) -> str:
    """What the lock file says about its holder ("pid N, since T"), or "unknown"."""
    try:
        return Path(path).read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def held(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold the lock on ``path`` for the block; :class:`LockHeld` naming ``what`` and the holder if taken."""
    handle = try_lock(path)
    if handle is None:
        raise LockHeld(f"{what} is in use by another live process ({holder(path)}; lock file {path})")
    try:
        yield
    finally:
        handle.close()
