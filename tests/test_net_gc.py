"""A decode bomb (one msgpack container per byte) never runs Python's cyclic collector: in a node
(~260k objects: torch, libp2p) the full collections such allocations trigger stalled the event
loop 0.1-1 s per few frames; msgpack output holds no cycles, so the collector is paused while it
is built, and left as it was."""

from __future__ import annotations

import gc

import msgpack
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


def test_a_container_cap_stops_a_bomb_early_and_leaves_honest_headers_alone():
    body, header_len = _body(decode_bomb(30_000))
    built = 0

    def count(phase: str, info: dict) -> None:
        nonlocal built
        if phase == "start":
            built += 1

    with pytest.raises(FrameError, match="too many lists and maps"):
        decode_body(body, header_len, max_containers=4096)
    # the partial header was dropped inside the decode: nothing of it is left for a collection
    before = gc.get_count()[0]
    gc.callbacks.append(count)
    try:
        with pytest.raises(FrameError):
            decode_body(body, header_len, max_containers=4096)
    finally:
        gc.callbacks.remove(count)
    assert built == 0 and gc.get_count()[0] <= before + 64
    honest = msgpack.packb({"m": "generate", "a": {"messages": [{"role": "user", "content": "hi"}] * 50,
                                                   "stop": ["\n"], "ids": list(range(500))}})
    frame = decode_body(bytearray(honest), len(honest), max_containers=4096)
    assert len(frame["a"]["messages"]) == 50 and frame["a"]["ids"][-1] == 499
    assert len(decode_body(body, header_len)["a"][0]) == 30_000  # no cap: the frame's own limits only


def test_settle_heap_freezes_what_is_alive(monkeypatch):
    from swarmlm.node.daemon import settle_heap

    calls: list[str] = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("collect") or 0)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(gc, "get_freeze_count", lambda: 7)
    assert settle_heap() == 7 and calls == ["collect", "freeze"]  # garbage first: never pin garbage
