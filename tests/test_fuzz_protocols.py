"""Fuzzing every RPC protocol of a running node over real libp2p streams, and its HTTP API.

Inputs: random bytes, well-formed request frames for every registered method with random
arguments (hypothesis strategies: nested msgpack values, tensors of random shapes and dtypes),
streaming items behind them, and mutations of valid frames (flipped bytes, truncation, huge length
prefixes). Afterwards the node still answers another client (echo, shard info, a generation), holds
no leftover sessions or calls, and its memory grew by a bounded amount. The number of inputs is
printed. The frame decoder gets its own property test.
"""

from __future__ import annotations

import json
import logging
import random
import resource
import struct
import traceback
import urllib.error
import urllib.request

import hypothesis.strategies as st
import torch
import trio
from hypothesis import HealthCheck, given, settings

from swarmlm.net.frames import FrameError, decode_body, encode_frame_bytes
from swarmlm.node.generation import GenerationRequest
from swarmlm.models.sampling import SamplingParams

from helpers import running_nodes, swarm_client

MODEL = "builtin:tiny"
SEED = 1234

leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=True),
                 st.text(max_size=40), st.binary(max_size=64))
values = st.recursive(leaf, lambda c: st.one_of(st.lists(c, max_size=6), st.dictionaries(st.text(max_size=12), c, max_size=6)),
                      max_leaves=20)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=512), st.integers(0, 600))
def test_frame_decoder_never_crashes(body, header_len):
    try:
        decode_body(bytearray(body), header_len)
    except FrameError:
        pass


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _random_tensor(rng: random.Random) -> torch.Tensor:
    dtype = rng.choice([torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8])
    shape = [rng.choice([0, 1, 1, 2, 3, 7, 64]) for _ in range(rng.randint(0, 4))]
    return torch.zeros(shape, dtype=dtype) if dtype in (torch.int64, torch.int32, torch.uint8) else torch.randn(shape).to(dtype)


def _arg(rng: random.Random, pool: list) -> object:
    """Random method arguments: a hypothesis-drawn value, or a plausible map with fields gone wrong."""
    r = rng.random()
    if r < 0.4:
        return rng.choice(pool)
    base = {"session_id": rng.choice(["s", "x" * 200, 7, None]), "model": rng.choice([MODEL, "nope", 3]),
            "start": rng.choice([0, 2, -1, 99, "2"]), "end": rng.choice([2, 6, 0, 1 << 40]),
            "max_length": rng.choice([1, 64, 0, -5, 1 << 30, 2.5]), "next": rng.choice([None, "peer", 5]),
            "prev": rng.choice([None, "peer"]), "sampling": rng.choice([None, {}, {"temperature": "hot"}, []]),
            "tap": rng.random() < 0.3, "accused": "12D3KooWxyz", "steps": rng.choice([[], [[0, 0, 1, 1, b"x"]], "s"]),
            "in": _random_tensor(rng), "out": _random_tensor(rng)}
    keys = list(base)
    return {k: base[k] for k in rng.sample(keys, rng.randint(0, len(keys)))}


def _item(rng: random.Random, pool: list) -> object:
    if rng.random() < 0.5:
        return {"step": rng.choice([0, 1, -1, "a"]), "pos": rng.choice([0, 3, -2, 1 << 40]), "x": _random_tensor(rng),
                "want": rng.random() < 0.5, "timings": rng.choice([[], "t", [[1]] * 70])}
    return rng.choice(pool)


def _inputs(rng: random.Random, methods: list[tuple[str, str, bool]], pool: list):
    """Yields (protocol, bytes) inputs."""
    while True:
        proto, method, streaming = rng.choice(methods)
        kind = rng.random()
        if kind < 0.15:
            yield proto, rng.randbytes(rng.randint(0, 2048))
            continue
        frames = [encode_frame_bytes({"m": method if rng.random() < 0.9 else rng.choice(["", "zz", 5]),
                                      "a": _arg(rng, pool), "d": rng.choice([1, 0.5, -1, 1e9, "x"])})]
        if streaming:
            try:
                frames += [encode_frame_bytes({"s": _item(rng, pool)}) for _ in range(rng.randint(0, 4))]
            except Exception:
                pass
            if rng.random() < 0.5:
                frames.append(encode_frame_bytes({"end": True}))
        data = bytearray(b"".join(frames))
        if kind < 0.45 and data:  # mutate a valid input
            for _ in range(rng.randint(1, 8)):
                op = rng.random()
                i = rng.randrange(len(data))
                if op < 0.5:
                    data[i] = rng.randrange(256)
                elif op < 0.7:
                    data = data[:i]
                    if not data:
                        break
                elif op < 0.85:
                    data[0:4] = struct.pack(">I", rng.choice([0, 1 << 31, 0xFFFFFFFF, 64 << 20]))
                else:
                    data[i:i] = rng.randbytes(rng.randint(1, 64))
        yield proto, bytes(data)


async def _send_one(host, peer: str, proto: str, data: bytes) -> None:
    with trio.move_on_after(0.5):
        try:
            stream = await host.open_stream(peer, proto)
        except Exception:
            return
        try:
            await stream.write(data)
            with trio.move_on_after(0.15):
                while await stream.read(65536):
                    pass
        except Exception:
            pass
        finally:
            with trio.move_on_after(0.2):
                try:
                    await stream.reset()
                except Exception:
                    pass


def _http(url: str, body: bytes | None, method: str = "POST", ctype: str = "application/json") -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class _Crashes(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.seen.append("".join(traceback.format_exception(*record.exc_info))[-1500:])


async def test_fuzz_every_protocol_and_the_http_api(tmp_path):
    rng = random.Random(SEED)
    crashes = _Crashes()
    logging.getLogger("swarmlm.rpc").addHandler(crashes)
    pool = _hypothesis_pool()
    n_rpc = int(__import__("os").environ.get("SWARMLM_FUZZ_INPUTS", "1500"))
    async with running_nodes(tmp_path, [["--model", MODEL, "--layers", "0:6"]], http=True) as nodes:
        node = nodes[0]
        server = node.host.rpc_server
        server.penalties.strikes = 10**9  # fuzz every input (penalties for rule breakers: tests/test_net_limits.py)
        methods = sorted([(p, m, False) for p, m in server._unary] + [(p, m, True) for p, m in server._stream])
        protos = sorted({p for p, _, _ in methods})
        async with swarm_client(node) as client:
            params = SamplingParams(max_new_tokens=6)
            async with client.generate(GenerationRequest(model=MODEL, prompt="before", params=params)) as gen:
                before = [t async for c in gen for t in c.token_ids]
            rss0 = _rss_mb()
            calls0 = server._calls_total  # the client's long-lived state-sync link
            sent = 0
            gen_inputs = _inputs(rng, methods, pool)
            async with trio.open_nursery() as nursery:
                limiter = trio.CapacityLimiter(8)

                async def one(proto, data):
                    async with limiter:
                        await _send_one(client.host, node.peer_id, proto, data)

                for proto, data in gen_inputs:
                    await limiter.acquire_on_behalf_of(sent)
                    limiter.release_on_behalf_of(sent)
                    nursery.start_soon(one, proto, data)
                    sent += 1
                    if sent >= n_rpc:
                        break
            # HTTP: random bodies, malformed JSON, random JSON values, random paths
            base = f"http://{node.http_addr}"
            http_sent, statuses = 0, {}
            paths = ["/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/x", "/api/swarm", "/nope"]
            for i in range(300):
                path = rng.choice(paths)
                r = rng.random()
                if r < 0.3:
                    body = rng.randbytes(rng.randint(0, 300))
                elif r < 0.5:
                    body = json.dumps({"model": rng.choice([MODEL, "nope", 1]), "prompt": rng.choice(["hi", 5, None]),
                                       "messages": rng.choice([[], [{"role": "user"}], "m", [{"role": "user", "content": "hi"}]]),
                                       "max_tokens": rng.choice([-1, 0, 1, 10**12, "a"]), "temperature": rng.choice([-3, 1e9, "x"])}).encode()[: rng.randint(1, 400)]
                else:
                    body = json.dumps(pool[i % len(pool)], default=repr).encode()
                status, _ = await trio.to_thread.run_sync(_http, base + path, body, rng.choice(["POST", "GET", "PUT"]))
                statuses[status] = statuses.get(status, 0) + 1
                http_sent += 1
                assert status < 500 or status == 503, (path, body[:200], status)
            # clear errors for the classic bad inputs
            big = json.dumps({"model": MODEL, "prompt": "word " * 40000, "max_tokens": 4}).encode()
            st_big, b_big = await trio.to_thread.run_sync(_http, base + "/v1/completions", big)
            st_max, b_max = await trio.to_thread.run_sync(
                _http, base + "/v1/completions", json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 10**9}).encode())
            st_unk, b_unk = await trio.to_thread.run_sync(
                _http, base + "/v1/completions", json.dumps({"model": "builtin:nope", "prompt": "x"}).encode())
            st_bad, b_bad = await trio.to_thread.run_sync(_http, base + "/v1/chat/completions", b'{"model": "x", ')
            rss1 = _rss_mb()
            # the node is up and serves another client correctly; nothing was left behind
            assert await client.host.rpc.call(node.peer_id, "/swarmlm/echo/1", "echo", "still here", timeout=10) == "still here"
            async with client.generate(GenerationRequest(model=MODEL, prompt="before", params=params)) as gen:
                after = [t async for c in gen for t in c.token_ids]
            assert after == before
            with trio.move_on_after(30):
                while node.shard.sessions or server._calls_total > calls0:
                    await trio.sleep(0.1)
            left = (len(node.shard.sessions), server._calls_total, dict(server._calls_per_peer),
                    dict(server._streams_per_peer))
            assert not left[0] and left[1] <= calls0, f"left behind: sessions, calls, calls per peer, streams per peer {left}"
    print(f"\nfuzz: {sent} RPC inputs over {len(protos)} protocols ({', '.join(protos)}), {http_sent} HTTP inputs "
          f"(statuses {dict(sorted(statuses.items()))}); RSS {rss0:.0f} -> {rss1:.0f} MB; "
          f"rpc errors by code {dict(server.stats.by_code)}, rejected frames {server.stats.rejected_frames}")
    assert st_big in (400, 413) and b"token" in b_big.lower() or st_big == 413, (st_big, b_big[:200])
    assert st_max == 400 and b"max_tokens" in b_max, (st_max, b_max[:200])
    assert st_unk in (404, 400) and b"builtin:nope" in b_unk, (st_unk, b_unk[:200])
    assert st_bad == 400 and b"json" in b_bad.lower(), (st_bad, b_bad[:200])
    logging.getLogger("swarmlm.rpc").removeHandler(crashes)
    assert not crashes.seen, "a handler crashed on fuzzed input:\n" + crashes.seen[0]
    assert rss1 - rss0 < 300, f"memory grew by {rss1 - rss0:.0f} MB"


def _hypothesis_pool() -> list:
    """Draw a pool of arbitrary nested values with hypothesis (deterministic by its database-free seed)."""
    out: list = []

    @settings(max_examples=200, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(values)
    def collect(v):
        out.append(v)

    collect()
    return out
