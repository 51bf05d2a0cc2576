"""Persistence of the swarm state in the data dir: atomic writes, corrupt files moved aside.

The file ``<data_dir>/swarm_state.bin`` holds a magic, the SHA-256 of the body and the body
(``StateSync.export()``: every owner's signed log, re-verified when loaded). A write goes to a
temporary file that is fsynced and renamed over the old one, so a crash leaves the old or the
new file, never half of one. A file that is truncated, fails its checksum or does not load is
renamed ``swarm_state.bin.corrupt-<n>`` with a warning, and the node starts empty and resyncs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from pathlib import Path

from swarmlm.crypto.identity import Identity
from swarmlm.net.state.sync import StateSync
from swarmlm.net.state.wire import Limits

log = logging.getLogger("swarmlm.state")

FILE_NAME = "swarm_state.bin"
MAGIC = b"SWST\x01"
MAX_FILE_BYTES = 1 << 30


class StateStore:
    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.path = Path(data_dir) / FILE_NAME

    def save(self, body: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{FILE_NAME}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(MAGIC + hashlib.sha256(body).digest() + body)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def read(self) -> bytes | None:
        """The saved body, or None when there is none or it is corrupt (then moved aside)."""
        if not self.path.exists():
            return None
        try:
            data = self.path.read_bytes() if self.path.stat().st_size <= MAX_FILE_BYTES else b""
        except OSError as exc:
            self.quarantine(f"unreadable ({exc})")
            return None
        head = len(MAGIC) + 32
        if len(data) < head or not data.startswith(MAGIC) or hashlib.sha256(data[head:]).digest() != data[len(MAGIC):head]:
            self.quarantine("bad magic, truncated or checksum mismatch")
            return None
        return data[head:]

    def quarantine(self, why: str) -> Path | None:
        for n in range(1, 1000):
            dest = self.path.with_name(f"{FILE_NAME}.corrupt-{n}")
            if not dest.exists():
                break
        try:
            os.replace(self.path, dest)
        except OSError:
            return None
        log.warning("swarm state file %s is corrupt (%s); moved to %s, resyncing from peers", self.path, why, dest)
        return dest

    def open_engine(self, identity: Identity, *, now: float, rng: random.Random,
                    limits: Limits | None = None) -> StateSync:
        """A ``StateSync`` restored from the file when it loads, else a fresh one (file moved aside)."""
        body = self.read()
        if body is not None:
            try:
                return StateSync(identity, now=now, rng=rng, limits=limits, restore=body)
            except Exception as exc:  # a body that passes the checksum but does not decode
                self.quarantine(f"does not load: {exc}")
        return StateSync(identity, now=now, rng=rng, limits=limits)
