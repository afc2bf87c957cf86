"""An exclusive ``flock`` with a deadline, for files that several processes lock for milliseconds at a time
(the journal's writers, a platform's state files).

``flock`` has no timeout, so it is tried without blocking, again and again: first after 0.2 ms, the pause
doubling up to 2 ms. A waiter then takes the lock within about 2 ms of its release. Polls of 20 ms (the
platforms' earlier lock), or SQLite's own busy handler (sleeps of 1, 2, 5, 10, then up to 100 ms), kept
deployments that start together waiting tens of milliseconds for locks held for one or two.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

FIRST_PAUSE_S = 0.0002
LONGEST_PAUSE_S = 0.002


def flock_within(fd: int, timeout_s: float) -> bool:
    """Take an exclusive lock on ``fd``; False when ``timeout_s`` passed first (the lock is then not held)."""
    deadline = time.monotonic() + timeout_s
    pause = FIRST_PAUSE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, LONGEST_PAUSE_S)


def unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)


def open_lock_file(path: Path, mode: int = 0o644) -> int:
    """A descriptor of the lock file, created (with ``mode``) when missing, and its folder too. A bare
    descriptor: a runner takes a lock at every check, and Python's file objects cost more than the lock."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(path, flags, mode)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, mode)
