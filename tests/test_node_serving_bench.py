"""`swarmlm bench serve --json` on builtin:tiny: one JSON object with the issue's shape (whole model and
3-node pipeline, batching on and off, per concurrency level) and no failed request."""

from __future__ import annotations

import json
import os
import subprocess
import sys

LEVEL_KEYS = {"agg_tok_s", "ttft_ms_p50", "ttft_ms_p95", "itl_ms_p50", "itl_ms_p95", "failed"}


def test_bench_serve_prints_the_figures():
    proc = subprocess.run([sys.executable, "-m", "swarmlm.node.front.cli", "bench", "serve", "--json", "--model",
                           "builtin:tiny", "--clients", "1,16", "--tokens", "3"], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, SWARMLM_LOG_QUIET="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    r = json.loads(lines[0])
    for kind in ("whole", "pipeline"):
        assert set(r[kind]) == {"on", "off"}
        for mode in ("on", "off"):
            assert set(r[kind][mode]) == {"1", "16"}
            for level in r[kind][mode].values():
                assert set(level) >= LEVEL_KEYS and level["failed"] == 0 and level["agg_tok_s"] > 0
        assert r["speedup_16"][kind] == round(r[kind]["on"]["16"]["agg_tok_s"] / r[kind]["off"]["1"]["agg_tok_s"], 2)
        assert r["max_batch_tokens"][kind] >= 64
