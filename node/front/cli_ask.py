"""`swarmlm ask`: send a prompt to the swarm (as a light peer, or through a node's HTTP API) and
stream the answer; the route and timings follow at the end on stderr (``--json``: one object on
stdout). Both ways report the same fields (``completion_tokens`` from the API's usage too)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import httpx

from swarmlm.errors import UsageError as CliError
from swarmlm.node.front.cli_common import bootstrap_addrs, http_url


def _fraction(text: str) -> float:
    try:
        f = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= f <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text}")
    return f


def _sampling(ns: argparse.Namespace) -> dict[str, Any]:
    """The sampling arguments under their OpenAI names (the SDK and the HTTP API take these)."""
    out: dict[str, Any] = {"max_tokens": ns.max_tokens, "temperature": ns.temperature}
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
        client.options.speculative = ns.speculative or bool(ns.draft_model)
        client.options.draft_model = ns.draft_model
        client.options.server_loop = ns.server_loop
        pieces = []  # consensus: a node hosting the whole model coordinates the round (RPC)
        for text in client.chat(_messages(ns), model=ns.model, stream=True, mode=ns.mode, k=ns.k, **_sampling(ns)):
            pieces.append(text)
            if not ns.json:
                sys.stdout.write(text)
                sys.stdout.flush()
        s = client.last_summary
        return {"text": "".join(pieces), **(s.to_dict() if s else {})}


def _ask_http(ns: argparse.Namespace) -> dict[str, Any]:
    url = http_url(ns.http)
    headers = {"authorization": f"Bearer {ns.token}"} if ns.token else {}
    model = ns.model
    with httpx.Client(timeout=httpx.Timeout(600, connect=10), headers=headers) as http:
        if not model:
            r = http.get(f"{url}/v1/models")
            if r.status_code != 200:
                raise CliError(f"{url}/v1/models answered {r.status_code}: {r.text[:200]}")
            data = [m for m in r.json().get("data") or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]
            full = [m["id"] for m in data if not m["id"].startswith("ee:")
                    and float((m.get("swarm") or {}).get("coverage", 1.0)) >= 1.0]
            if not full:
                raise CliError(f"{url} knows no fully served model yet" + (
                    f" (served in part: {', '.join(m['id'] for m in data)})" if data else ""))
            model = full[0]
        s = _sampling(ns)
        body: dict[str, Any] = {"model": model, "messages": _messages(ns), "stream": True,
                                "stream_options": {"include_usage": True}, **s}
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
                    final["prompt_tokens"] = chunk["usage"].get("prompt_tokens", 0)
                    final["completion_tokens"] = chunk["usage"].get("completion_tokens", 0)
                if chunk.get("swarm"):
                    final.update(chunk["swarm"])
        return {"text": "".join(pieces), "model": model, **final}


def cmd_ask(ns: argparse.Namespace) -> int:
    ns.bootstrap = bootstrap_addrs(ns.bootstrap, "ask", ns.http)
    if ns.ee_key and ns.http:
        raise CliError("ask: --ee-key encrypts on this machine, so it joins the swarm itself: use --bootstrap, "
                       "not --http (or start a gateway node with --ee-key)")
    if ns.speculative or ns.draft_model:
        _speculative_args(ns)
    if ns.server_loop:
        _server_loop_args(ns)
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
    sp = result.get("speculative")
    if sp:
        print(f"speculative: {sp.get('passes', 0)} verify passes, {sp.get('tokens_per_pass', 0)} tokens per pass, "
              f"{sp.get('accepted', 0)} of {sp.get('proposed', 0)} drafts kept", file=sys.stderr)
    if ns.mode == "pipeline" and (ns.check_fraction is None or ns.check_fraction > 0):  # checks are of pipeline steps
        print(_checks_line(result), file=sys.stderr)
    for line in _scores_lines(result):
        print(line, file=sys.stderr)
    return 0


def _scores_lines(result: dict[str, Any]) -> list[str]:
    """A consensus round's candidates, strongest first; ``*`` marks the winner, which with author
    priors (the authors' audit records, docs/CONSENSUS.md) need not be the strongest."""
    if not result.get("scores"):
        return []
    lines = [f"consensus round {result.get('round_id')}:"]
    for row in result["scores"]:
        answer = " ".join(str(row.get("answer", "")).split())
        prior = row.get("prior")
        prior_s = f"prior {prior:.2f}  " if isinstance(prior, (int, float)) else ""
        lines.append(f"  {'*' if row.get('winner') else ' '} {float(row.get('strength', 0)):.3f}  {prior_s}"
                     f"{str(row.get('node', ''))[-8:]}  {row.get('sampling', '')}  "
                     f"{answer[:60] + ('...' if len(answer) > 60 else '')!r}")
    return lines


def _speculative_args(ns: argparse.Namespace) -> None:
    """Speculative decoding drafts on this machine (docs/PIPELINE.md)."""
    if ns.http:
        raise CliError("ask: --speculative/--draft-model draft on this machine, so it joins the swarm itself: "
                       "use --bootstrap, not --http")
    if ns.mode != "pipeline":
        raise CliError("ask: --speculative/--draft-model need --mode pipeline")
    if ns.draft_model and ns.ee_key:
        raise CliError("ask: --draft-model drafts plain token ids, which an encrypted model does not take: "
                       "use --speculative (prompt lookup) with --ee-key")


def _server_loop_args(ns: argparse.Namespace) -> None:
    """The server token loop (docs/PIPELINE.md): unverified, unencrypted pipeline generations only."""
    if ns.http or ns.mode != "pipeline":
        raise CliError("ask: --server-loop sets up the servers' route from this machine: use --bootstrap and "
                       "--mode pipeline")
    if ns.ee_key:
        raise CliError("ask: --server-loop needs plain token ids on the head; it does not run with --ee-key")
    if ns.check_fraction != 0:
        raise CliError("ask: --server-loop runs without verification checks: add --check-fraction 0")


def _checks_line(result: dict[str, Any]) -> str:
    """What verification did: how many tokens every check confirmed, or why not."""
    checks, verified = result.get("checks", 0), result.get("verified_tokens", 0)
    unverifiable, total = result.get("unverifiable_steps", 0), result.get("completion_tokens", 0)
    if unverifiable:
        return (f"verification: {verified} of {total} tokens verified, {unverifiable} could not be: no second "
                "replica answered for some layers (start another node with the same layers to check them)")
    if checks:
        return f"verified: {verified} of {total} tokens, {checks} check rounds on a second replica, all agreed"
    return "verification: no step was sampled for a check (a larger --check-fraction or a longer answer checks more)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="ask the swarm: stream an answer, then print the route and timings")
    p.add_argument("prompt")
    p.add_argument("--bootstrap", metavar="MADDR", action="append", help="join the swarm through this peer (default: $SWARMLM_BOOTSTRAP)")
    p.add_argument("--http", metavar="HOST:PORT", help="use a node's HTTP API instead, e.g. 127.0.0.1:8080")
    p.add_argument("--token", help="bearer token for --http")
    p.add_argument("--model", metavar="SPEC", help="model id (default: the first one the swarm serves fully; "
                   "with --ee-key, the base model of a served variant your key file records)")
    p.add_argument("--mode", choices=["pipeline", "consensus"], default="pipeline")
    p.add_argument("--k", type=int, default=3, help="consensus: how many nodes answer")
    p.add_argument("--system", help="system message")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", help="stop string (repeatable, up to 4)")
    p.add_argument("--route-mode", choices=["latency", "throughput"], default="latency",
                   help="latency: the fastest chain; throughput: spread requests over replicas by load")
    p.add_argument("--wire-dtype", choices=["fp16", "bf16"], help="down-cast activations between servers")
    p.add_argument("--check-fraction", type=_fraction, metavar="F",
                   help="verification: check this share of the steps of servers with standing on another "
                        "replica (servers new to this client: every step); 0 turns it off (default 0.1)")
    p.add_argument("--speculative", action="store_true",
                   help="speculative decoding: drafts by prompt lookup, k+1 positions verified per pass")
    p.add_argument("--draft-model", metavar="SPEC", help="speculative decoding with drafts from this small local "
                   "model (same tokenizer as --model; implies --speculative)")
    p.add_argument("--server-loop", action="store_true", help="the server holding the LM head feeds each token "
                   "to the first hop itself (one trip per hop per token; needs --check-fraction 0)")
    p.add_argument("--ee-key", metavar="KEYFILE", help="equivariant encryption: the client-side secret key")
    p.add_argument("--join-timeout", type=float, default=30.0)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_ask)
