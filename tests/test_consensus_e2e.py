"""Consensus rounds end to end over the network: in-process nodes hosting ``builtin:tiny`` whole,
each with its own sampling profile, coordinated through ``/swarmlm/consensus/1``."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

import trio

from swarmlm.consensus.reputation import ReputationParams, compute_reputation
from swarmlm.consensus.round import Timeouts
from swarmlm.models.sampling import SamplingParams
from swarmlm.node.generation import GenerationRequest

from helpers import running_nodes

MODEL = "builtin:tiny"
PROFILES = ("temperature=0", "temperature=0.5 top_p=0.9", "temperature=0.9", "temperature=1.2 top_k=20")


@asynccontextmanager
async def consensus_nodes(base_dir, n: int, configure=None, http: bool = False, model: str = MODEL,
                          layers: str = "0:6"):
    """n full nodes hosting all of ``model`` (``layers`` = all its layers); ``configure(i, service)`` adjusts a node's consensus
    service before it runs. Each node's ``kill()`` stops it abruptly."""
    def setup(i, node):
        svc = node.consensus
        svc.options.profile = PROFILES[i % len(PROFILES)]
        svc.options.audit_share = 0.0  # no background audit rounds unless a test asks for them
        if configure is not None:
            configure(i, svc)

    args = [["--model", model, "--layers", layers]] * n
    async with running_nodes(base_dir, args, http=http, configure=setup) as nodes:
        with trio.fail_after(30):  # every node sees every other as a whole-model host
            while not all(len(nd.client.consensus.coordinators(model)) == n for nd in nodes):
                await trio.sleep(0.1)
        yield nodes


def request(k: int = 3, prompt: str = "Say hello.") -> GenerationRequest:
    return GenerationRequest(model=MODEL, messages=[{"role": "user", "content": prompt}],
                             params=SamplingParams(max_new_tokens=8), mode="consensus", consensus_k=k)


async def run_consensus(node, req):
    async with node.client.generate(req) as gen:
        text = "".join([c.text async for c in gen])
    return text, gen.summary


async def wait_round_everywhere(nodes, round_id: str) -> None:
    from swarmlm.consensus.audit import verify_record

    def has(nd) -> bool:
        return any(verify_record(bytes(r.body)).round_id == round_id for r in nd.state.state.records(kind="round"))

    with trio.fail_after(30):
        while not all(has(nd) for nd in nodes):
            await trio.sleep(0.1)


def reputation_of(node, now: float, params: ReputationParams | None = None) -> dict[str, float]:
    st = node.state.state
    return compute_reputation([bytes(r.body) for r in st.records(kind="round")], now,
                              calibrations=[bytes(r.body) for r in st.records(kind="calibration")],
                              audits=[bytes(r.body) for r in st.records(kind="audit")],
                              params=params or node.consensus.params).scores()


async def test_a_round_over_the_network_reaches_every_state(tmp_path):
    async with consensus_nodes(tmp_path, 4) as nodes:
        text, s = await run_consensus(nodes[1], request(k=3))
        assert s.round_id and len(s.scores) == 3
        winner = [row for row in s.scores if row["winner"]]
        assert len(winner) == 1 and winner[0]["answer"] == text == s.text
        assert abs(sum(row["strength"] for row in s.scores) - 1.0) < 1e-9
        ids = {nd.peer_id for nd in nodes}
        assert {row["node"] for row in s.scores} <= ids
        assert {row["sampling"].split(" finish=")[0] for row in s.scores} <= {f"temperature={t:g} top_p={p:g} top_k={k}" for t, p, k in
                                                         ((0, 1, 0), (0.5, 0.9, 0), (0.9, 1, 0), (1.2, 1, 20))}
        await wait_round_everywhere(nodes, s.round_id)
        now = time.time()
        a, b = reputation_of(nodes[0], now), reputation_of(nodes[3], now)
        assert a == b and a  # bit-identical on two nodes, and not empty
        assert nodes[2].consensus.reputation(now).scores() == a  # the node's running book agrees
        assert nodes[1].consensus.rounds[-1]["round_id"] == s.round_id


async def test_a_dead_node_is_dropped_and_the_round_finishes(tmp_path):
    def configure(i, svc):  # phases far longer than the test may take: they must close early
        svc.options.timeouts = Timeouts(candidates=600.0, commits=600.0, reveals=600.0)

    async with consensus_nodes(tmp_path, 4, configure) as nodes:
        dead = nodes[3].peer_id
        nodes[3].kill()
        with trio.fail_after(180):  # calls to the dead node fail, so no phase waits for its deadline
            text, s = await run_consensus(nodes[0], request(k=4))
        res = nodes[0].consensus.rounds[-1]
        assert dead in {d[0] for d in res["dropped"]}
        assert len(s.scores) == 3 and dead not in {row["node"] for row in s.scores}
        await wait_round_everywhere(nodes[:3], s.round_id)


async def test_a_late_candidate_is_dropped_at_the_deadline(tmp_path):
    def configure(i, svc):
        svc.options.timeouts = Timeouts(candidates=15.0, commits=120.0, reveals=30.0)
        if i == 2:
            svc.options.fault = "late"

    async with consensus_nodes(tmp_path, 4, configure) as nodes:
        late = nodes[2].peer_id
        text, s = await run_consensus(nodes[0], request(k=4))
        res = nodes[0].consensus.rounds[-1]
        assert [d for d in res["dropped"] if d[0] == late] == [[late, "missed candidates"]]
        assert len(s.scores) == 3
        await wait_round_everywhere(nodes, s.round_id)


async def test_calibration_over_the_network_gates_judging(tmp_path):
    def configure(i, svc):
        svc.options.calibration = "required"
        # nodes 0 and 1 know the answers, node 2 always picks a wrong option (tiny's weights are random)
        svc.options.puzzle_answerer = (lambda p: p.answer) if i < 2 else (lambda p: (p.answer + 1) % len(p.options))

    async with consensus_nodes(tmp_path, 3, configure) as nodes:
        from swarmlm.consensus.calibration import verify_calibration

        def verdicts(nd):
            return {(c.subject, c.passed) for c in (verify_calibration(bytes(r.body))
                                                     for r in nd.state.state.records(kind="calibration"))}

        want = {(nodes[0].peer_id, 1), (nodes[1].peer_id, 1), (nodes[2].peer_id, 0)}
        with trio.fail_after(60):  # every node got examined by a peer; every state holds the three records
            while not all(verdicts(nd) == want for nd in nodes):
                await trio.sleep(0.2)
        text, s = await run_consensus(nodes[2], request(k=3))  # an uncalibrated node may still coordinate
        res = nodes[2].consensus.rounds[-1]
        assert len(s.scores) == 3 and res["coordinator"] == nodes[2].peer_id
        await wait_round_everywhere(nodes, s.round_id)
        from swarmlm.consensus.audit import verify_record

        rec = next(verify_record(bytes(r.body)) for r in nodes[0].state.state.records(kind="round"))
        assert set(rec.votes) == {nodes[0].peer_id, nodes[1].peer_id}  # the failed node does not judge
        now = time.time()
        reps = []
        for nd in (nodes[0], nodes[1]):
            st = nd.state.state
            reps.append(compute_reputation([bytes(r.body) for r in st.records(kind="round")], now,
                                           calibrations=[bytes(r.body) for r in st.records(kind="calibration")]))
        assert reps[0].scores() == reps[1].scores() and reps[0].weight(nodes[2].peer_id, now) == 0.0
        assert reps[0].weight(nodes[0].peer_id, now) > 0.0


def test_the_largest_round_record_fits_a_swarm_state_record():
    from swarmlm.consensus.detail import MAX_DETAIL_BYTES, detail_ref
    from swarmlm.consensus.local import run_local_round
    from swarmlm.consensus.round import Finished
    from swarmlm.crypto.identity import Identity
    from swarmlm.net.state.schema import make_record
    from swarmlm.node.server.consensus import INLINE_RECORD_BYTES, max_judges
    from swarmlm.node.server.consensus_detail import DETAIL_KIND
    from swarmlm.node.wire import MAX_K

    class Prefer:
        def judge(self, prompt, a, b):
            return "A"

    ids = [Identity.generate() for _ in range(MAX_K + 12)]
    sizes = []
    for k in range(2, MAX_K + 1):  # worst case: judges that are not candidates see every candidate
        judges = {i: Prefer() for i in ids[MAX_K:MAX_K + max_judges(k, 99)]}
        _, log = run_local_round(ids[0], "q" * 2000, {i: f"answer {n}" for n, i in enumerate(ids[:k])}, judges,
                                 {i.peer_id: 1.0 for i in ids})
        env = next(a for a in log if isinstance(a, Finished)).packet.envelope.encode()
        sizes.append(len(env))
        if len(env) <= INLINE_RECORD_BYTES:  # stored whole
            make_record(ids[0], "round", env, time.time())  # raises if too large
        else:  # stored as a detail blob: only its reference goes into the state
            assert len(env) <= MAX_DETAIL_BYTES
            make_record(ids[0], DETAIL_KIND, detail_ref(env).to_obj(), time.time())
    assert max(sizes) > 16 * 1024  # the largest rounds would not fit a state record whole


async def test_a_round_with_prompt_judges(tmp_path):
    def configure(i, svc):
        svc.options.judge = "prompt"  # the model is asked "A, B or tie?" instead of scoring likelihoods

    async with consensus_nodes(tmp_path, 3, configure) as nodes:
        text, s = await run_consensus(nodes[0], request(k=3))
        assert len(s.scores) == 3 and text == [r for r in s.scores if r["winner"]][0]["answer"]
        await wait_round_everywhere(nodes, s.round_id)


def test_verdict_records_become_reputation_verdicts():
    """Signed "fail" verdict records of the state are what the reputation fold slashes by (the
    consensus service and the health page both read them this way)."""
    import time

    from swarmlm.consensus.reputation import Verdict, compute_reputation
    from swarmlm.node.verification import verdicts_from_state

    class Rec:
        def __init__(self, key, author, created, body):
            self.key, self.author, self.created, self.body = key, author, created, body

    class State:
        def __init__(self, recs):
            self.recs = recs

        def records(self, kind=None):
            return [r for k, r in self.recs if kind is None or k == kind]

    st = State([("verdict", Rec("k1", "reporter", 10.0, {"subject": "bad", "verdict": "fail"})),
                ("verdict", Rec("k2", "reporter", 11.0, {"subject": "ok", "verdict": "pass"})),
                ("verdict", Rec("k3", "bad", 12.0, {"subject": "bad", "verdict": "fail"}))])
    vs = verdicts_from_state(st)
    assert [(v.subject, v.reporter, v.id) for v in vs] == [("bad", "reporter", "k1")]  # none about itself
    assert all(isinstance(v, Verdict) for v in vs)
    # the fold ignores a node's verdict about itself and is deterministic
    a = compute_reputation([], time.time(), verdicts=vs).scores()
    b = compute_reputation([], time.time(), verdicts=list(reversed(vs))).scores()
    assert a == b
