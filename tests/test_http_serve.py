"""The HTTP runner: port 0 reports the bound port, cancellation and the shutdown trigger stop it,
bind failures are clear errors, and a client that disconnects cancels its generation."""

from __future__ import annotations

import socket

import httpx
import pytest
import trio

from helpers_http import MODEL, FakeGenerator, api_server, in_thread
from swarmlm.node.front.http_api import HttpAddress, HttpServeError, create_app, serve_http


def get_models(url: str) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=60) as c:
        return c.get(url + "/v1/models")


async def test_port_zero_reports_bound_port_and_cancel_closes_it():
    app = create_app(FakeGenerator())
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(serve_http, app, "127.0.0.1", 0)
        assert isinstance(addr, HttpAddress) and addr.host == "127.0.0.1" and addr.port > 0
        assert addr.url == f"http://127.0.0.1:{addr.port}" and str(addr) == f"127.0.0.1:{addr.port}"
        r = await in_thread(get_models, addr.url)
        assert r.status_code == 200 and r.json()["data"][0]["id"] == MODEL
        nursery.cancel_scope.cancel()
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", addr.port)


async def test_shutdown_trigger_stops_it_gracefully():
    stop = trio.Event()
    app = create_app(FakeGenerator())
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(lambda task_status: serve_http(app, "127.0.0.1", 0, shutdown_trigger=stop.wait,
                                                                  task_status=task_status))
        assert (await in_thread(get_models, addr.url)).status_code == 200
        stop.set()
    # the nursery exited without being cancelled: serve_http returned on its own
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", addr.port)


async def test_bind_failures_are_clear_errors():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    app = create_app(FakeGenerator())
    try:
        with pytest.raises(HttpServeError, match=f"127.0.0.1:{port}"):
            await serve_http(app, "127.0.0.1", port)
    finally:
        taken.close()
    with pytest.raises(HttpServeError, match="203.0.113.7"):
        await serve_http(app, "203.0.113.7", 0)  # TEST-NET-3: not an address of this machine


async def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    app = create_app(FakeGenerator())
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(serve_http, app, "::1", 0)
        assert addr.url == f"http://[::1]:{addr.port}"
        assert (await in_thread(get_models, addr.url)).status_code == 200
        nursery.cancel_scope.cancel()


async def test_client_disconnect_cancels_the_generation():
    hold = trio.Event()  # never set: the fake waits after its first chunk until cancelled
    gen = FakeGenerator(hold=hold)
    async with api_server(gen) as url:
        def call():
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
            with httpx.Client(trust_env=False, timeout=60) as c:
                with c.stream("POST", url + "/v1/chat/completions", json=body) as r:
                    lines = r.iter_lines()
                    got = [next(lines) for _ in range(4)]  # role chunk, blank, first word, blank
            return r.status_code, got
        status, got = await in_thread(call)
        with trio.fail_after(60):  # a hang guard, not a timing assertion
            await gen.exited.wait()
        assert status == 200 and got[0].startswith("data: ") and got[2].startswith("data: ")
        assert not hold.is_set() and gen.entered == 1
        assert (await in_thread(get_models, url)).status_code == 200


async def test_cancelling_with_a_stream_in_flight_stops_cleanly():
    hold = trio.Event()
    gen = FakeGenerator(hold=hold)
    app = create_app(gen)
    results: list = []

    def call(url: str):
        body = {"model": MODEL, "prompt": "p", "stream": True}
        try:
            with httpx.Client(trust_env=False, timeout=60) as c:
                with c.stream("POST", url + "/v1/completions", json=body) as r:
                    for line in r.iter_lines():
                        results.append(line)
        except httpx.HTTPError as exc:
            results.append(exc)

    with trio.fail_after(60):  # hang guard
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as server:
                addr = await server.start(serve_http, app, "127.0.0.1", 0)
                outer.start_soon(in_thread, call, addr.url)
                await gen.waiting.wait()  # the first chunk went out; the fake now waits on `hold`
                server.cancel_scope.cancel()
            await gen.exited.wait()
    assert results and results[0].startswith("data: ")
    assert not any(isinstance(x, str) and "[DONE]" in x for x in results)
