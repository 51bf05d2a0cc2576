"""A decode bomb (one msgpack container per byte) never runs Python's cyclic collector: in a node
(~260k objects: torch, libp2p) the full collections such allocations trigger stalled the event
loop 0.1-1 s per few frames; msgpack output holds no cycles, so the collector is paused while it
is built, and left as it was."""

from __future__ import annotations

import gc

import pytest

from swarmlm.net.frames import FrameError, decode_body
from swarmlm.testnet.sybil_payloads import decode_bomb


def _body(frame: bytes) -> tuple[bytearray, int]:
    return bytearray(frame[8:]), int.from_bytes(frame[4:8], "big")


def test_a_decode_bomb_runs_no_collection_and_leaves_the_collector_as_it_was():
    body, header_len = _body(decode_bomb(30_000))
    runs: list[int] = []

    def seen(phase: str, info: dict) -> None:
        if phase == "start":
            runs.append(info["generation"])

    gc.collect()  # counts from zero: 5 young passes cannot add up to an older one
    gc.callbacks.append(seen)
    try:
        assert gc.isenabled()
        for _ in range(5):  # 30k containers each, dropped at once as a refused frame is ...
            decode_body(body, header_len)
        # ... without a collection while they are built: at most the one young-generation pass the
        # first allocation after it may start (a kept header's objects are young then), never a full one
        assert set(runs) <= {0} and len(runs) <= 5 and gc.isenabled()
        with pytest.raises(FrameError):
            decode_body(body[:-1], header_len - 1)  # truncated: an error, and the collector back on
        assert gc.isenabled()
        gc.disable()
        try:
            decode_body(body, header_len)
            assert not gc.isenabled()  # someone else's choice is kept
        finally:
            gc.enable()
    finally:
        gc.callbacks.remove(seen)
