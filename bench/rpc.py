"""`swarmlm bench rpc`: our libp2p RPC against raw trio TCP with the same framing, on loopback.

Both run the very same ``RpcServer``/``RpcClient`` (frames, msgpack, out-of-band tensor buffers);
only the byte stream differs: a Noise+Yamux libp2p stream of a ``SwarmHost`` vs a plain
``trio.open_tcp_stream`` wrapped in ``TrioByteStream``. The server is a separate process
(``python -m swarmlm.bench.rpc --serve --ready FILE``) serving both; the client is this process.

Measured in ``--rounds`` interleaved rounds (both transports see the same machine load), medians:

* round trip of an echo call on a reused stream, for 64 B, 16 KiB and 1 MiB uint8 tensors;
* bulk MiB/s (JSON keys ``*_mbps``) of a stream call pushing ``--bulk-mb`` 1 MiB items over one
  stream;
* connect: TCP dial + Noise + Yamux + multistream-select + first echo answered on a fresh
  connection (a fresh client host each time); raw: TCP dial + first echo.

NAT traversal (relay, DCUtR, dial-back) is off on these loopback hosts.

``--stock`` builds both hosts from unmodified py-libp2p components (no ``net.transport`` fast path), for the
before/after comparison. With ``--json`` exactly one JSON object goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch  # before any measured call (the server decodes tensors; importing it costs ~1 s)
import trio

from swarmlm.bench.common import emit, log, median, parser
from swarmlm.crypto.identity import Identity
from swarmlm.net.host import HostConfig, SwarmHost
from swarmlm.net.rawstream import TrioByteStream
from swarmlm.net.rpc import FrameStream, RpcClient
from swarmlm.net.rpc_server import RpcServer, ServerLimits

PROTO = "/swarmlm/bench/1"
PAYLOADS = (64, 16384, 1048576)
RAW_PEER = "raw-tcp"


def make_server():
    srv = RpcServer(ServerLimits(max_calls_per_peer=64))

    async def echo(ctx: Any, args: Any) -> Any:
        return args

    async def sink(call: Any, args: Any) -> Any:
        total = 0
        async for item in call:
            total += item.numel()
        return {"bytes": total}

    srv.add_unary(PROTO, "echo", echo)
    srv.add_stream(PROTO, "sink", sink)
    return srv


def _host_config(stock: bool):
    cfg = HostConfig(listen=["/ip4/127.0.0.1/tcp/0"], ping_interval_s=3600.0, discovery_interval_s=3600.0,
                     fastpath=not stock)
    for name in ("relay", "hole_punch", "reachability"):  # NAT traversal plays no part on loopback
        if hasattr(cfg, name):
            setattr(cfg, name, False)
    return cfg


# ---------------------------------------------------------------------------- server process
async def serve(ready: Path, stock: bool) -> None:
    server = make_server()
    host = SwarmHost(Identity.generate(), _host_config(stock), rpc_server=server)

    async def raw_handler(stream: trio.SocketStream) -> None:
        await server.serve_stream(TrioByteStream(stream), PROTO, RAW_PEER)

    async with host.running():
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, raw_handler, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            addr = [a for a in host.addrs if "/127.0.0.1/" in a][0]
            tmp = ready.with_suffix(".tmp")
            tmp.write_text(json.dumps({"libp2p": addr, "raw": ["127.0.0.1", port], "pid": os.getpid()}))
            tmp.rename(ready)
            parent = os.getppid()
            while os.getppid() == parent:  # exit with the bench process
                await trio.sleep(0.5)
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------- client side
def _payload(n: int):
    return torch.full((n,), 7, dtype=torch.uint8)


async def _round_trips(client: Any, peer: str, n: int, iters: int, warmup: int) -> list[float]:
    x = _payload(n)
    out = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        y = await client.call(peer, PROTO, "echo", x, timeout=60)
        dt = (time.perf_counter() - t0) * 1000.0
        if i >= warmup:
            out.append(dt)
    if y.numel() != n:
        raise RuntimeError(f"echo returned {y.numel()} bytes, sent {n}")
    return out


async def _bulk(client: Any, peer: str, mb: int) -> float:
    """MiB/s of one stream call pushing ``mb`` items of 1 MiB."""
    item = _payload(1 << 20)
    t0 = time.perf_counter()
    async with client.stream(peer, PROTO, "sink", None, timeout=600) as call:
        for _ in range(mb):
            await call.send(item)
        await call.end()
        async for _ in call:
            pass
    dt = time.perf_counter() - t0
    if call.result != {"bytes": mb << 20}:
        raise RuntimeError(f"bulk sink answered {call.result}")
    return mb / dt


async def _run(info: dict, args: Any) -> dict[str, dict[str, Any]]:
    """Both transports, interleaved round by round so that both see the same machine load."""
    host, port = info["raw"]
    cfg = _host_config(args.stock)

    async def raw_open(peer: str, protocol: str) -> TrioByteStream:
        return TrioByteStream(await trio.open_tcp_stream(host, port))

    async def raw_connect() -> float:
        t0 = time.perf_counter()
        fs = FrameStream(await raw_open(RAW_PEER, PROTO))
        await fs.send({"m": "echo", "a": None, "d": 10})
        await fs.recv()
        ms = (time.perf_counter() - t0) * 1000.0
        await fs.stream.close()
        return ms

    async def libp2p_connect() -> float:
        async with SwarmHost(Identity.generate(), cfg).running() as h:
            t0 = time.perf_counter()
            peer = await h.connect(info["libp2p"])
            await h.rpc.call(peer, PROTO, "echo", None, timeout=10)
            return (time.perf_counter() - t0) * 1000.0

    res = {name: {"rtt_ms": {n: [] for n in PAYLOADS}, "bulk_mbps": [], "connect_ms": []}
           for name in ("libp2p", "raw")}
    async with SwarmHost(Identity.generate(), cfg).running() as h:
        sides = {"libp2p": (h.rpc, await h.connect(info["libp2p"]), libp2p_connect),
                 "raw": (RpcClient(raw_open), RAW_PEER, raw_connect)}
        for name, (client, peer, _) in sides.items():  # warm up streams, windows and buffers
            for n in PAYLOADS:
                await _round_trips(client, peer, n, 0, warmup=5)
            await _bulk(client, peer, min(8, args.bulk_mb))
        rounds = max(1, args.rounds)
        for r in range(rounds):
            for name in (("libp2p", "raw") if r % 2 == 0 else ("raw", "libp2p")):
                client, peer, connect = sides[name]
                out = res[name]
                for n in PAYLOADS:
                    iters = max(1, (args.iters if n < (1 << 20) else max(10, args.iters // 10)) // rounds)
                    out["rtt_ms"][n] += await _round_trips(client, peer, n, iters, warmup=1)
                out["bulk_mbps"].append(await _bulk(client, peer, args.bulk_mb))
                for _ in range(max(1, args.connects // rounds)):
                    out["connect_ms"].append(await connect())
            log(f"round {r + 1}/{rounds}: " + "; ".join(
                f"{k} 16K {median(v['rtt_ms'][16384]):.3f} ms, bulk {v['bulk_mbps'][-1]:.0f} MiB/s, "
                f"connect {v['connect_ms'][-1]:.1f} ms" for k, v in res.items()))
    for name, out in res.items():
        for n in PAYLOADS:
            rt = out["rtt_ms"][n]
            log(f"{name}: {n:>8} B round trip median {median(rt):.3f} ms (min {min(rt):.3f}, n={len(rt)})")
        log(f"{name}: bulk " + ", ".join(f"{v:.0f}" for v in out["bulk_mbps"]) + " MiB/s; connect "
            + ", ".join(f"{v:.1f}" for v in out["connect_ms"]) + " ms")
    return res


def _start_server(stock: bool, verbose: bool = False) -> tuple[subprocess.Popen, dict, Path]:
    tmpdir = Path(tempfile.mkdtemp(prefix="swarmlm-bench-rpc-"))
    ready = tmpdir / "ready.json"
    cmd = [sys.executable, "-m", "swarmlm.bench.rpc", "--serve", "--ready", str(ready)] + (["--stock"] if stock else [])
    cmd += ["--verbose"] if verbose else []
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"bench server exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("bench server did not come up within 60 s")
        time.sleep(0.05)
    return proc, json.loads(ready.read_text()), tmpdir


def _result(lp: dict[str, Any], raw: dict[str, Any], args: Any, load: tuple[float, float, float]) -> dict[str, Any]:
    payloads = {}
    for n in PAYLOADS:
        a, b = median(lp["rtt_ms"][n]), median(raw["rtt_ms"][n])
        payloads[str(n)] = {"libp2p_ms": round(a, 3), "raw_ms": round(b, 3), "ratio": round(a / b, 2)}
    bl, br = median(lp["bulk_mbps"]), median(raw["bulk_mbps"])
    return {
        "payloads": payloads,
        "bulk": {"libp2p_mbps": round(bl, 1), "raw_mbps": round(br, 1), "ratio": round(bl / br, 3),
                 "mb": args.bulk_mb},
        "connect_ms": round(median(lp["connect_ms"]), 2),
        "raw_connect_ms": round(median(raw["connect_ms"]), 2),
        "stock_libp2p": bool(args.stock),
        "iters": args.iters, "rounds": args.rounds, "connects": args.connects,
        "loadavg_before": [round(v, 2) for v in load],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "cpus": os.cpu_count(),
    }


def _summary(r: dict[str, Any]) -> str:
    lines = [f"swarmlm bench rpc ({'stock py-libp2p' if r['stock_libp2p'] else 'our fast path'}; "
             f"load {r['loadavg_before'][0]:.2f} on {r['cpus']} CPUs)",
             f"{'payload':>10} {'libp2p ms':>10} {'raw ms':>10} {'ratio':>7}"]
    for n, v in r["payloads"].items():
        lines.append(f"{n:>10} {v['libp2p_ms']:>10.3f} {v['raw_ms']:>10.3f} {v['ratio']:>7.2f}")
    b = r["bulk"]
    lines.append(f"bulk {b['mb']} MiB: libp2p {b['libp2p_mbps']:.0f} MiB/s, raw {b['raw_mbps']:.0f} MiB/s, "
                 f"ratio {b['ratio']:.2f}")
    lines.append(f"connect: libp2p {r['connect_ms']:.1f} ms, raw {r['raw_connect_ms']:.2f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser("rpc", "round trip, bulk and connect time: our libp2p RPC vs raw trio TCP, same framing")
    p.add_argument("--iters", type=int, default=300, help="round trips per small payload (1 MiB: a tenth)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (one bulk transfer per round)")
    p.add_argument("--bulk-mb", type=int, default=64, help="MiB per bulk transfer (1 MiB items)")
    p.add_argument("--connects", type=int, default=10, help="fresh connections per transport (over all rounds)")
    p.add_argument("--stock", action="store_true", help="unmodified py-libp2p components (baseline)")
    p.add_argument("--serve", action="store_true", help=argparse_hidden())
    p.add_argument("--ready", type=Path, help=argparse_hidden())
    p.add_argument("--verbose", action="store_true", help="keep py-libp2p's own log lines")
    args = p.parse_args(argv)
    if not args.verbose:  # teardown of the throw-away connect hosts makes py-libp2p chatty
        logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    if args.serve:
        trio.run(serve, args.ready, args.stock)
        return 0
    load = os.getloadavg()
    log(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    proc, info, tmpdir = _start_server(args.stock, args.verbose)
    try:
        log(f"server pid {proc.pid}: libp2p {info['libp2p']}, raw {info['raw'][0]}:{info['raw'][1]}")
        res = trio.run(_run, info, args)
        lp, raw = res["libp2p"], res["raw"]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        for f in tmpdir.iterdir():
            f.unlink()
        tmpdir.rmdir()
    emit(_result(lp, raw, args, load), args.json, _summary)
    return 0


def argparse_hidden() -> str:
    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
