"""The one file lock: exclusive, between processes and between threads of one process.

flock(2) locks belong to the open file description, so every `file_lock` call opens the lock file anew and
two holders (two processes, or two threads of one) exclude each other; a lock is released when its file is
closed, so a process that dies never leaves one behind. Used for state.json's read-modify-write, the job
queue, the embedded model's one-time conversion, the feedback store, catalogue appends and loop cycles.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path, blocking: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created, with its folder, when missing). With blocking=False a
    lock someone else holds raises BlockingIOError at once instead of waiting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
