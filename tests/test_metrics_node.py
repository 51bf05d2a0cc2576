"""GET /metrics on live in-process nodes: Prometheus text that parses, and counters that move when a
request goes through the pipeline (requests, tokens, per-hop latency, bytes, sessions, cache, NAT state)."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from helpers import running_nodes
from swarmlm.node.front.metrics import NodeMetrics, _path_label

MODEL = "builtin:tiny"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict, name: str, **labels: str) -> float:
    return m[(name, tuple(sorted(labels.items())))]


async def test_metrics_count_a_request_through_three_nodes(tmp_path):
    specs = [["--model", MODEL, "--layers", r] for r in ("0:2", "2:4", "4:6")]
    async with running_nodes(tmp_path, specs, http=True) as nodes:
        async with httpx.AsyncClient(trust_env=False, timeout=120) as http:
            url0 = f"http://{nodes[0].http_addr}"
            r = await http.post(f"{url0}/v1/completions", json={"model": MODEL, "prompt": "count me", "max_tokens": 6})
            assert r.status_code == 200, r.text
            generated = r.json()["usage"]["completion_tokens"]
            scraped = []
            for n in nodes:
                resp = await http.get(f"http://{n.http_addr}/metrics")
                assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
                scraped.append(samples(resp.text))
    first, middle, last = scraped
    assert value(first, "swarmlm_http_requests_total", path="/v1/completions", method="POST", code="200") == 1
    # the last hop holds the LM head: it sampled every generated token
    assert value(last, "swarmlm_tokens_generated_total") >= generated >= 1
    assert value(first, "swarmlm_tokens_generated_total") == 0
    for m, shard in zip(scraped, (n.shard for n in nodes)):
        steps = value(m, "swarmlm_steps_served_total")
        assert steps == shard.steps_served >= generated
        assert value(m, "swarmlm_hop_compute_seconds_count") == steps  # one observation per step
        assert value(m, "swarmlm_hop_compute_seconds_sum") > 0
        assert value(m, "swarmlm_tokens_computed_total") == shard.tokens_computed
        assert value(m, "swarmlm_sessions_open") == 0  # the session closed with the request
        assert value(m, "swarmlm_cache_tokens_budget") == 8192
        assert value(m, "swarmlm_bytes_total", direction="in", channel="rpc") > 0
        assert value(m, "swarmlm_bytes_total", direction="out", channel="state") > 0
        assert value(m, "swarmlm_rejected_frames_total") == 0
        assert value(m, "swarmlm_nat_state", state="unknown") == 1 and value(m, "swarmlm_nat_state", state="public") == 0
        assert value(m, "swarmlm_swarm_peers_online") == 3
        assert value(m, "swarmlm_model_layer_coverage", model=MODEL) == 1.0
        assert value(m, "swarmlm_peers_connected") >= 1
    # node 0's own client routed the request: its per-hop timings are in the route histogram (3 hops)
    assert value(first, "swarmlm_route_hop_seconds_count") == 3


def test_path_labels_stay_bounded():
    assert _path_label("/v1/models/builtin:tiny") == "/v1/models"
    assert _path_label("/static/health.js") == "/static"
    assert _path_label("/") == "/"
    assert _path_label("/etc/passwd") == "other"
    assert _path_label("/api/swarm") == "/api/swarm"


def test_two_nodes_in_one_process_have_separate_registries():
    class Stub:
        client = None

    a, b = NodeMetrics(Stub()), NodeMetrics(Stub())
    a.on_step(0.01, answered=True)
    assert a.tokens_generated._value.get() == 1 and b.tokens_generated._value.get() == 0


async def test_health_paths_stay_open_when_the_api_needs_a_token(tmp_path):
    async with running_nodes(tmp_path, [["--model", MODEL, "--layers", "0:6", "--http-token", "s3cret"]], http=True) as nodes:
        url = f"http://{nodes[0].http_addr}"
        async with httpx.AsyncClient(trust_env=False, timeout=60) as http:
            for path in ("/", "/api/swarm", "/api/swarm/fragment", "/metrics", "/static/health.js", "/static/health.css"):
                assert (await http.get(url + path)).status_code == 200, path
            for path in ("/static/../config.py", "/static/health.py"):  # only the page's two assets are served
                assert (await http.get(url + path)).status_code in (401, 404), path
            assert (await http.get(url + "/v1/models")).status_code == 401
            ok = await http.get(url + "/v1/models", headers={"authorization": "Bearer s3cret"})
            assert ok.status_code == 200
            m = samples((await http.get(url + "/metrics")).text)
    assert value(m, "swarmlm_http_requests_total", path="/v1/models", method="GET", code="401") == 1
