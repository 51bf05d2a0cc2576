"""Reference sessions reused across generations (``node/client/reference_pool.py``): the pool's
bounds (pure), and in-process swarms where a second generation checks every step on streams the
first one left open -- rewound to position 0, the same verified tokens, no mismatch -- and where a
pooled stream the replica ended meanwhile is replaced by a fresh one on the same replica."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from swarmlm.models.generate import generate, load_chain
from swarmlm.models.registry import resolve
from swarmlm.models.sampling import SamplingParams
from swarmlm.models.tokenizer import Tokenizer
from swarmlm.node.client.reference_pool import ReferencePool, pool_key
from swarmlm.node.client.routing import plan_route
from swarmlm.node.generation import GenerationRequest

from helpers import running_nodes, swarm_client

MODEL = "builtin:tiny"
torch.set_num_threads(1)
SPECS = [["--model", MODEL, "--layers", "0:3"], ["--model", MODEL, "--layers", "0:3"],
         ["--model", MODEL, "--layers", "3:6"], ["--model", MODEL, "--layers", "3:6"]]


def _ref(peer: str, key: tuple = (0, 3, False, None), max_length: int = 16, ok: bool = True) -> SimpleNamespace:
    r = SimpleNamespace(peer=peer, key=key, max_length=max_length, reusable=ok, length=9, rewound=False)
    r.rewind = lambda: setattr(r, "rewound", True)
    return r


def test_the_pool_reuses_only_matching_healthy_references_within_its_bounds():
    now = [0.0]
    pool = ReferencePool(ttl_s=10.0, size=3, per_peer=1, clock=lambda: now[0])
    a, broken = _ref("A"), _ref("B", ok=False)
    assert pool.put(a) == [] and pool.put(broken) == [broken]  # a failed stream is closed, not kept
    assert pool.take("A", (3, 6, False, None), 16)[0] is None  # other layers
    assert pool.take("A", a.key, 32)[0] is None  # too short for this generation
    got, stale = pool.take("A", a.key, 16)
    assert got is a and a.rewound and stale == [] and len(pool) == 0
    a2 = _ref("A")
    pool.put(a)
    assert pool.put(a2) == [a]  # one idle stream per replica: the oldest goes
    c, d, e = _ref("C"), _ref("D"), _ref("E")
    pool.put(c)
    pool.put(d)
    assert pool.put(e) == [a2] and len(pool) == 3  # three in all
    now[0] = 11.0
    got, stale = pool.take("C", c.key, 16)
    assert got is None and set(map(id, stale)) == {id(c), id(d), id(e)}  # idle too long: closed
    assert pool.drain() == []


def test_a_greedy_head_key_ignores_the_seed_and_a_sampled_one_does_not():
    g1 = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 1}
    g2 = dict(g1, seed=2)
    assert pool_key(3, 6, True, g1) == pool_key(3, 6, True, g2)
    s1, s2 = dict(g1, temperature=0.8), dict(g2, temperature=0.8)
    assert pool_key(3, 6, True, s1) != pool_key(3, 6, True, s2)
    assert pool_key(3, 6, True, g1) != pool_key(3, 6, False, g1)


async def _ask(client, prompt, params):
    async with client.generate(GenerationRequest(model=MODEL, prompt=prompt, params=params)) as gen:
        async for _ in gen:
            pass
    return gen


async def test_later_generations_check_every_step_on_reused_references(tmp_path):
    params = SamplingParams(max_new_tokens=6)
    tok = Tokenizer.from_dir(resolve(MODEL))
    want = {p: generate(load_chain(MODEL, 1), tok.encode(p), params, tok).token_ids for p in ("one", "two")}
    async with running_nodes(tmp_path, SPECS) as nodes, swarm_client(nodes[0]) as client:
        client.options.check_fraction = 1.0
        refs = {nodes[1].peer_id, nodes[3].peer_id}  # routes through nodes 0 and 2: these two are the references
        client.plan = lambda model, need, prefer=(): plan_route(client.servers(model), client.n_layers(model),
                                                                need_cache_tokens=need, banned=refs)
        st = client.verify_stats
        g1 = await _ask(client, "one", params)
        opened = st["references_opened"]
        assert g1.token_ids == want["one"] and g1.summary.verified_tokens == len(want["one"]), st
        assert {r.peer for _, r in client.references._idle} == refs  # both hops' references kept open
        # a different prompt: the reused streams are rewound, so nothing of the first one leaks in
        for prompt in ("two", "one"):
            g = await _ask(client, prompt, params)
            assert g.token_ids == want[prompt] and g.summary.verified_tokens == len(want[prompt]), st
        assert st["references_reused"] == 4 and st["references_opened"] == opened and not st.get("mismatches") and not st.get("reference_errors"), st
        # the replicas drop the caches of the pooled streams meanwhile (as after an idle sweep): the
        # stream fails at its next check and a fresh one is opened, not counted as a reference error
        assert len(client.references) == 2
        for n in nodes:
            for sid in [s for s in n.shard.cache._sessions if s.startswith("check-")]:
                n.shard.cache.close(sid)
        g = await _ask(client, "two", params)
        assert g.token_ids == want["two"] and g.summary.verified_tokens == len(want["two"]), (st, g.summary)
        assert st.get("references_stale", 0) >= 1 and not st.get("reference_errors"), st
        assert not g.summary.unverifiable_steps
