"""The health page in a real headless Chromium (DevTools protocol): a 3-node testnet shows 3 peers and full
coverage, the operator's view of the node (the address to hand out, CPU/RAM, sessions, requests and
errors, reachability explained) and the route of a light client's ask; after one node is killed and
another stops cleanly, the page, refreshing itself, shows the gap, the killed peer as gone and the
stopped one as "left" in the departed table with when it was last seen.
Screenshots go to test-artifacts/health.png and test-artifacts/health-after-leave.png."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from swarmlm.models.sampling import SamplingParams
from swarmlm.node.generation import GenerationRequest

from cdp import chromium, find_chromium
from helpers import running_nodes, swarm_client

MODEL = "builtin:tiny"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="chromium is not installed (apt-get install chromium, or run testnet/system-deps.sh)")


async def test_health_page_shows_swarm_and_updates_when_a_node_leaves(tmp_path):
    # a short state TTL: a node killed in-process keeps its sockets open (no FIN), so the page learns of
    # the departure from the missing heartbeats; a real process kill also shows at once as "disconnected"
    specs = [["--model", MODEL, "--layers", r, "--state-ttl-s", "4"] for r in ("0:2", "2:4", "4:6")]
    async with running_nodes(tmp_path, specs, http=True) as nodes:
        url = f"http://{nodes[0].http_addr}"
        async with httpx.AsyncClient(trust_env=False, timeout=120) as http:  # one request, so a route is shown
            r = await http.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "hello", "max_tokens": 4})
            assert r.status_code == 200, r.text
        async with swarm_client(nodes[0]) as light:  # what `swarmlm ask` does: its route shows on the page too
            async with light.generate(GenerationRequest(MODEL, prompt="hi", params=SamplingParams(max_new_tokens=3))) as g:
                [c async for c in g]
        async with chromium() as browser:
            page = await browser.open(url + "/")
            await page.wait_for("document.querySelector('#summary')?.dataset.online === '3'")
            summary = await page.evaluate("({...document.querySelector('#summary').dataset})")
            assert summary["peers"] == "3" and summary["complete"] == "true"
            assert await page.evaluate("document.querySelectorAll('tr.peer[data-status=online]').length") == 3
            assert await page.evaluate(f"document.querySelector('section.model[data-model=\"{MODEL}\"]').dataset.coverage") \
                == "complete"
            assert await page.evaluate("document.querySelectorAll('table.cov th.gap').length") == 0
            text = await page.evaluate("document.body.innerText")
            assert "Recent routes" in text and "No requests routed" not in text
            assert all(n.peer_id[-8:] in text for n in nodes)
            assert await page.evaluate("document.querySelector('#bootstrap-addr').textContent") == nodes[0].host.addrs[0]
            panel = await page.evaluate("({...document.querySelector('#this-node').dataset})")
            assert int(panel["requests"]) >= 1 and panel["errors"] == "0" and panel["sessions"] == "0"
            assert "CPU (this process)" in text and "RAM of the machine" in text and " MB" in text
            assert "two peers must dial it back" in await page.evaluate("document.querySelector('#summary abbr').title")
            assert await page.evaluate("document.querySelectorAll('tr.route.served').length") >= 1
            assert await page.evaluate("document.querySelectorAll('tr.route.own').length") >= 1
            await page.screenshot(ARTIFACTS / "health.png")

            leaving = nodes[2]
            leaving.kill()
            # the page refreshes itself (no reload): the peer shows as gone and layers [4, 6) as a gap
            await page.wait_for("document.querySelector('#summary')?.dataset.complete === 'false'")
            assert await page.evaluate("document.querySelector('#summary').dataset.online") == "2"
            status = await page.evaluate(f"document.querySelector('tr.peer[data-peer=\"{leaving.peer_id}\"]').dataset.status")
            assert status in ("disconnected", "offline")
            gaps = await page.evaluate("[...document.querySelectorAll('table.cov th.gap')].map(e => e.textContent)")
            assert gaps == ["4", "5"]

            stopping = nodes[1]
            stopping.stop()  # a clean shutdown (what SIGTERM and Ctrl-C do): its signed leaving mark
            row = f"table.departed tr[data-peer=\"{stopping.peer_id}\"]"
            await page.wait_for(f"document.querySelector('{row}')?.dataset.status === 'left'")
            assert (await page.evaluate(f"document.querySelector('{row} td.last-seen').textContent")).endswith(" ago")
            await page.screenshot(ARTIFACTS / "health-after-leave.png")
    assert (ARTIFACTS / "health.png").stat().st_size > 10_000
