"""One node per data dir: an exclusive lock on ``<data dir>/node.lock`` for as long as the node runs.

Two nodes on one data dir share an identity (the same peer id twice in the swarm) and overwrite
each other's state file. ``DataDirLock`` takes an ``flock`` on the lock file (released by the kernel
when the process dies, so a killed node never leaves a stale lock) and records the holder's pid, so
the second node is refused with a message that names the first.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from swarmlm.errors import SwarmError

LOCK_FILE = "node.lock"


class DataDirInUse(SwarmError):
    """Another node runs on this data dir."""


class DataDirLock:
    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise DataDirInUse(f"data dir {self.path.parent} is in use by another swarmlm node (pid {holder}): "
                               "stop that node, or give this one its own --data-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> "DataDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
