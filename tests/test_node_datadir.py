"""One node per data dir: a second node on the same directory (same identity, same state file) is
refused with a message naming the first one's pid; the lock dies with the process that held it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from swarmlm.node.datadir import DataDirInUse, DataDirLock


def test_a_second_lock_on_the_same_dir_is_refused_and_freed_on_release(tmp_path):
    with DataDirLock(tmp_path):
        with pytest.raises(DataDirInUse, match=rf"in use by another swarmlm node \(pid {os.getpid()}\).*--data-dir"):
            DataDirLock(tmp_path).acquire()
    with DataDirLock(tmp_path):  # released: the next node may start
        pass


def test_the_lock_dies_with_its_process(tmp_path):
    code = ("import sys; from swarmlm.node.datadir import DataDirLock; DataDirLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(DataDirInUse, match=f"pid {proc.pid}"):
            DataDirLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait(10)
    DataDirLock(tmp_path).acquire()  # a killed node leaves no stale lock
