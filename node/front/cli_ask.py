"""`swarmlm ask`: send a prompt to the swarm (as a light peer, or through a node's HTTP API) and
stream the answer; the route and timings follow at the end (``--json``: one object on stdout)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import httpx

from swarmlm.errors import UsageError as CliError


def _fraction(text: str) -> float:
    try:
        f = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= f <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text}")
    return f


def _sampling(ns: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"max_new_tokens": ns.max_tokens, "temperature": ns.temperature}
    if ns.top_p is not None:
        out["top_p"] = ns.top_p
    if ns.top_k is not None:
        out["top_k"] = ns.top_k
    if ns.seed is not None:
        out["seed"] = ns.seed
    if ns.stop:
        out["stop"] = ns.stop
    return out


def _messages(ns: argparse.Namespace) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": ns.system}] if ns.system else []
    return msgs + [{"role": "user", "content": ns.prompt}]


def _ask_p2p(ns: argparse.Namespace) -> dict[str, Any]:
    from swarmlm.node.client.sdk import Client  # lazy: keeps `swarmlm --help` free of torch and libp2p

    with Client(ns.bootstrap, ee_key=ns.ee_key, join_timeout_s=ns.join_timeout, wire_dtype=ns.wire_dtype,
                check_fraction=ns.check_fraction, route_mode=ns.route_mode) as client:
        pieces = []  # consensus: a node hosting the whole model coordinates the round (RPC)
        for text in client.chat(_messages(ns), model=ns.model, stream=True, mode=ns.mode, k=ns.k, **_sampling(ns)):
            pieces.append(text)
            if not ns.json:
                sys.stdout.write(text)
                sys.stdout.flush()
        s = client.last_summary
        return {"text": "".join(pieces), **(s.to_dict() if s else {})}


def _ask_http(ns: argparse.Namespace) -> dict[str, Any]:
    url = ns.http.rstrip("/")
    headers = {"authorization": f"Bearer {ns.token}"} if ns.token else {}
    model = ns.model
    with httpx.Client(timeout=httpx.Timeout(600, connect=10), headers=headers) as http:
        if not model:
            r = http.get(f"{url}/v1/models")
            if r.status_code != 200:
                raise CliError(f"{url}/v1/models answered {r.status_code}: {r.text[:200]}")
            data = r.json().get("data") or []
            if not data:
                raise CliError("the node knows no served model yet")
            model = data[0]["id"]
        s = _sampling(ns)
        body: dict[str, Any] = {"model": model, "messages": _messages(ns), "stream": True,
                                "max_tokens": s.pop("max_new_tokens"), "stream_options": {"include_usage": True},
                                **s}
        if ns.mode == "consensus":
            body["swarm"] = {"mode": "consensus", "k": ns.k}
        if ns.check_fraction is not None:
            body.setdefault("swarm", {})["check_fraction"] = ns.check_fraction
        pieces: list[str] = []
        final: dict[str, Any] = {}
        with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                r.read()
                try:
                    msg = r.json()["error"]["message"]
                except Exception:
                    msg = r.text[:300]
                raise CliError(f"the node answered {r.status_code}: {msg}")
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("error"):
                    raise CliError(f"the answer broke off: {chunk['error'].get('message', chunk['error'])}")
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        pieces.append(text)
                        if not ns.json:
                            sys.stdout.write(text)
                            sys.stdout.flush()
                    if choice.get("finish_reason"):
                        final["finish_reason"] = choice["finish_reason"]
                if chunk.get("usage"):
                    final["usage"] = chunk["usage"]
                if chunk.get("swarm"):
                    final.update(chunk["swarm"])
        return {"text": "".join(pieces), "model": model, **final}


def cmd_ask(ns: argparse.Namespace) -> int:
    if not ns.bootstrap and not ns.http:  # like the node's config: SWARMLM_BOOTSTRAP (comma-separated)
        ns.bootstrap = [a.strip() for a in os.environ.get("SWARMLM_BOOTSTRAP", "").split(",") if a.strip()]
    if bool(ns.bootstrap) == bool(ns.http):
        raise CliError("ask: give --bootstrap MADDR (join the swarm) or --http URL (a node's API), not both")
    t0 = time.perf_counter()
    result = _ask_http(ns) if ns.http else _ask_p2p(ns)
    result["wall_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    if ns.json:
        print(json.dumps(result))
        return 0
    print()
    route = result.get("route") or []
    if route:
        hops = " -> ".join(f"{h['peer_id'][-8:]}[{h['start']}:{h['end']}] {h['ms']:.1f}ms" for h in route)
        print(f"route: {hops}", file=sys.stderr)
    if result.get("tokens_per_s"):
        print(f"{result.get('completion_tokens', 0)} tokens ({result.get('verified_tokens', 0)} verified), "
              f"{result['tokens_per_s']:.1f} tok/s, first token after {result.get('ttft_ms', 0):.0f} ms, "
              f"{result.get('failovers', 0)} failovers", file=sys.stderr)
    if result.get("scores"):
        print(f"consensus round {result.get('round_id')}:", file=sys.stderr)
        for row in result["scores"]:
            answer = " ".join(str(row.get("answer", "")).split())
            print(f"  {'*' if row.get('winner') else ' '} {float(row.get('strength', 0)):.3f}  "
                  f"{str(row.get('node', ''))[-8:]}  {row.get('sampling', '')}  "
                  f"{answer[:60] + ('...' if len(answer) > 60 else '')!r}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="ask the swarm: stream an answer, then print the route and timings")
    p.add_argument("prompt")
    p.add_argument("--bootstrap", metavar="MADDR", action="append", help="join the swarm through this peer (default: $SWARMLM_BOOTSTRAP)")
    p.add_argument("--http", metavar="URL", help="use a node's HTTP API instead, e.g. http://127.0.0.1:8080")
    p.add_argument("--token", help="bearer token for --http")
    p.add_argument("--model", metavar="SPEC", help="model id (default: the first one the swarm serves fully)")
    p.add_argument("--mode", choices=["pipeline", "consensus"], default="pipeline")
    p.add_argument("--k", type=int, default=3, help="consensus: how many nodes answer")
    p.add_argument("--system", help="system message")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--route-mode", choices=["latency", "throughput"], default="latency",
                   help="latency: the fastest chain; throughput: spread requests over replicas by load")
    p.add_argument("--wire-dtype", choices=["fp16", "bf16"], help="down-cast activations between servers")
    p.add_argument("--check-fraction", type=_fraction, metavar="F",
                   help="verification: check this share of the steps of servers with standing on another "
                        "replica (servers new to this client: every step); 0 turns it off (default 0.1)")
    p.add_argument("--ee-key", metavar="KEYFILE", help="equivariant encryption: the client-side secret key")
    p.add_argument("--join-timeout", type=float, default=30.0)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_ask)
