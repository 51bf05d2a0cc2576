"""The health page in a real headless Chromium (DevTools protocol): a 3-node testnet shows 3 peers and full
coverage; after one node leaves the page, refreshing itself, shows the gap and the peer as gone.
Screenshots go to test-artifacts/health.png and test-artifacts/health-after-leave.png."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cdp import chromium, find_chromium
from helpers import running_nodes

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
            await page.screenshot(ARTIFACTS / "health-after-leave.png")
    assert (ARTIFACTS / "health.png").stat().st_size > 10_000
