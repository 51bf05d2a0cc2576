"""The HTTP API against browsers turned into weapons: DNS rebinding (a foreign Host), cross-site
requests (a foreign Origin, a text/plain body); operators can allow their own names and origins."""

from __future__ import annotations

import httpx

from helpers_http import MODEL, FakeGenerator, api_server, in_thread
from swarmlm.node.front.http_guard import host_allowed, origin_allowed, split_host

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
CHAT = "/v1/chat/completions"


def test_host_and_origin_rules():
    assert split_host("[::1]:8080") == "::1" and split_host("LocalHost:80") == "localhost"
    for ok in ("localhost:8080", "127.0.0.1:1", "[::1]:8080", "10.0.0.5", "node.localhost"):
        assert host_allowed(ok), ok
    for bad in ("evil.example", "evil.example:8080", "", "localhost.evil.example"):
        assert not host_allowed(bad), bad
    assert host_allowed("api.example.org", ["api.example.org"]) and host_allowed("x", ["*"])
    assert origin_allowed("http://127.0.0.1:8080", "127.0.0.1:8080")  # the health page's own script
    assert not origin_allowed("https://evil.example", "127.0.0.1:8080") and not origin_allowed("null", "localhost")
    assert origin_allowed("https://app.example", "127.0.0.1:8080", ["https://app.example/"])


async def test_rebinding_cross_site_and_non_json_requests_are_refused():
    gen = FakeGenerator()
    async with api_server(gen) as url:
        port = url.rsplit(":", 1)[1]

        def call():
            with httpx.Client(trust_env=False, timeout=30) as c:
                return {
                    "rebound": c.post(url + CHAT, json=BODY, headers={"host": f"evil.example:{port}"}),
                    "cross_site": c.post(url + CHAT, content=b'{"model": "x"}',
                                         headers={"origin": "https://evil.example", "content-type": "text/plain"}),
                    "text_plain": c.post(url + CHAT, content=b"{}", headers={"content-type": "text/plain"}),
                    "same_origin": c.get(url + "/v1/models", headers={"origin": url}),
                    "localhost": c.post(url + CHAT, json=BODY, headers={"host": f"localhost:{port}"}),
                }
        r = await in_thread(call)
    assert r["rebound"].status_code == 421 and r["rebound"].json()["error"]["code"] == "host_not_allowed"
    assert r["cross_site"].status_code == 403 and r["cross_site"].json()["error"]["code"] == "origin_not_allowed"
    assert r["text_plain"].status_code == 415
    assert r["same_origin"].status_code == 200 and r["localhost"].status_code == 200
    assert len(gen.requests) == 1  # only the well-formed local request reached the generator


async def test_operators_allow_their_own_names_and_origins():
    async with api_server(FakeGenerator(), allow_hosts=("api.example.org",),
                          allow_origins=("https://app.example.org",)) as url:
        def call():
            with httpx.Client(trust_env=False, timeout=30) as c:
                return (c.get(url + "/v1/models", headers={"host": "api.example.org"}),
                        c.get(url + "/v1/models", headers={"origin": "https://app.example.org"}))
        named, origin = await in_thread(call)
    assert named.status_code == 200 and origin.status_code == 200
