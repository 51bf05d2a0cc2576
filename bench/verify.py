"""`swarmlm bench verify`: verified shards and failover against real node processes.

A local swarm of ``builtin:tiny`` (6 layers) in three ranges, first ``[0, 2)``, middle ``[2, 4)`` and
head ``[4, 6)``, 2 honest replicas each, plus (as separate ``swarmlm node run`` processes):

- liars, one per lie and hop: ``large`` (``--fault wrong-activations``, the head ``wrong-head``),
  ``subtle`` (``perturb:EPS``, weights scaled by ``1 + EPS * N(0, 1)``, 1% by default) and
  ``trigger`` (``trigger:K``: lies only at inputs that hash to 0 mod K);
- a busy replica of the middle range (``--max-cache-tokens 8``), a dead one (``kill -9``, still
  listed) and a dead head replica on the route (``kill -9``, still listed).

Runs (``--runs`` asks each, ``--tokens`` new tokens, greedy):

- **liars**: per lie, hop and ``--fractions`` value a client whose first route goes through the
  liar (its range's other replicas stay references; once the liar is banned the client plans as
  usual) and samples
  every hop at that fraction (``standing_steps`` 0, so the fraction alone decides); ``detected``:
  runs where a signed "fail" verdict caught it, ``median_step`` the route session step it was caught
  at (0: the prefill); ``wrong_answers``: runs whose answer differs from the local one (an
  undetected lie that changed a token; none of those tokens counted as verified). Every token counted as verified is compared with a local run of the whole
  model: mismatches add to ``wrong_verified_tokens``; a verdict against an honest peer adds to
  ``false_accusations``.
- **honest**: ``--honest-asks`` asks, ``--concurrency`` at a time (servers batch them), every
  step checked; ``honest_checks`` counts the comparisons (hop x round) they made.
- **availability**: per fault the asks that answered exactly the local tokens (``ok``/``runs``) and
  ``failover_p95_s``: the 95th percentile of the ask's time over the same client's median ask
  without the fault, just before (what the fault cost the user). ``dead_reference`` / ``busy_reference``: the check's reference is (with
  probability 1/2, the order is shuffled) the dead or busy replica; ``dead_route``: a fresh client
  prefers the dead head replica.
- **default_cost**: tokens/s of a default client (``ClientOptions()``) over an unverified one
  (``check_fraction`` 0), alternating asks on the honest swarm -- measured last, after the liar and
  busy processes were stopped (SIGTERM: they leave the swarm state) and with the dead ones banned, so
  only the 6 honest processes run, as the issue defines it --, once the servers have earned standing
  with it (checked at the default fraction 0.1); ``default_cost_new_servers`` the same while they are
  new to it (every step checked); with ``--cost-model MODEL`` also on a 4-process swarm of that
  model (``bench/verify_cost.py``: ``cost_on``). ``--only cost`` measures just this, on a swarm of
  the 6 honest processes (3 ranges x 2, no liars: a quieter machine, a minute).
- **numerics** (``bench/verify_drift.py``, in this process): honest drift per dtype, the tolerance's
  margin over it and ``min_detected_perturbation`` per dtype.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import tempfile
import time
from typing import Any

import trio

from swarmlm.bench.common import emit, parser, percentile
from swarmlm.bench.common import log as _log
from swarmlm.bench import verify_cost
from swarmlm.bench.verify_drift import measure
from swarmlm.models.generate import generate, load_chain
from swarmlm.models.registry import resolve
from swarmlm.models.sampling import SamplingParams
from swarmlm.models.tokenizer import Tokenizer
from swarmlm.node.client.routing import plan_route
from swarmlm.node.dial import DOWN
from swarmlm.node.generation import GenerationRequest
from swarmlm.testnet.local import LocalTestnet

MODEL = "builtin:tiny"
PROMPT = "verify the swarm"
HOPS = {"first": "0:2", "middle": "2:4", "head": "4:6"}
ENV = {"OMP_NUM_THREADS": "1", "SWARMLM_LOG_QUIET": "1"}


def _lie_fault(lie: str, hop: str, eps: float, k: int) -> str:
    if lie == "large":
        return "wrong-head" if hop == "head" else "wrong-activations"
    return f"perturb:{eps}" if lie == "subtle" else f"trigger:{k}"


def _layout(ns: Any) -> tuple[dict[int, list[str]], dict[str, Any]]:
    """Per node process its arguments, and which node index plays which role."""
    args: dict[int, list[str]] = {}
    roles: dict[str, Any] = {"honest": {}, "liars": {}}
    for hop, rng in HOPS.items():
        roles["honest"][hop] = []
        for _ in range(2):
            roles["honest"][hop].append(len(args))
            args[len(args)] = ["--layers", rng]
    roles["busy"] = len(args)
    args[len(args)] = ["--layers", HOPS["middle"], "--max-cache-tokens", "8"]
    roles["dead_ref"] = len(args)
    args[len(args)] = ["--layers", HOPS["middle"]]
    roles["dead_route"] = len(args)
    args[len(args)] = ["--layers", HOPS["head"]]
    for lie in ns.lies:
        for hop in ns.hops:
            roles["liars"][(lie, hop)] = len(args)
            args[len(args)] = ["--layers", HOPS[hop], "--fault", _lie_fault(lie, hop, ns.eps, ns.trigger)]
    return args, roles


def _through(client: Any, liar: str) -> Any:
    """``client.plan`` routing through ``liar`` while it is not banned (the bench's forced first route)."""
    def plan(model: str, need_tokens: int, prefer: tuple[str, ...] = ()) -> Any:
        servers = client.servers(model)
        if liar not in client.bans.active():
            mine = next(((s.start, s.end) for s in servers if s.peer_id == liar), None)
            servers = [s for s in servers if s.peer_id == liar or (s.start, s.end) != mine]
        return plan_route(servers, client.n_layers(model), need_cache_tokens=need_tokens,
                          banned=client.bans.active(), rng=client.rng)
    return plan


class Run:
    """The bench's state: the swarm, the local tokens and the totals."""

    def __init__(self, ns: Any, net: Any, ids: list[str], roles: dict[str, Any], want: list[int]) -> None:
        self.ns, self.net, self.ids, self.roles, self.want = ns, net, ids, roles, want
        self.params = SamplingParams(max_new_tokens=ns.tokens)
        self.liars = {ids[i] for i in roles["liars"].values()}
        self.r: dict[str, Any] = {"wrong_verified_tokens": 0, "false_accusations": 0, "honest_checks": 0}

    def reset(self, client: Any, *, ban: set[str] = frozenset()) -> None:
        client.bans.until.clear()
        DOWN.marks.clear()
        client.verify_stats.clear()
        for p in ban:
            client.bans.ban(p, duration_s=3600)

    async def ask(self, client: Any, fraction: float | None = None, liar: str | None = None) -> tuple[Any, float]:
        """One ask; tallies wrong verified tokens and false accusations. ``(generation or None, s)``."""
        req = GenerationRequest(model=MODEL, prompt=PROMPT, params=self.params, check_fraction=fraction)
        t0 = time.perf_counter()
        gen = None
        try:
            async with client.generate(req) as g:
                async for _ in g:
                    pass
            gen = g
        except Exception as exc:  # counted as not ok: an availability bench must not stop on one failure
            log(f"  ask failed: {type(exc).__name__}: {str(exc)[:160]}")
        wall = time.perf_counter() - t0
        if gen is not None:
            for a, b in gen.verified:
                self.r["wrong_verified_tokens"] += sum(x != y for x, y in zip(gen.token_ids[a:b], self.want[a:b]))
        accused = set(client.verify_stats.get("detected", [])) | set(client.verify_stats.get("lying_references", []))
        self.r["false_accusations"] += len(accused - {liar} - self.liars)
        return gen, wall

    async def liars_runs(self, addr: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for frac in self.ns.fractions:
            async with verify_cost.client(addr, standing_steps=0, verdict_ban_s=0.0) as client:
                await verify_cost.listed(client, MODEL, self.ids)
                client.rng = random.Random(20)
                for (lie, hop), i in self.roles["liars"].items():
                    liar = self.ids[i]
                    steps, detected, wrong = [], 0, 0
                    client.plan = _through(client, liar)
                    for _ in range(self.ns.runs):
                        self.reset(client, ban=self.liars - {liar})
                        gen, _ = await self.ask(client, frac, liar)
                        wrong += gen is None or gen.token_ids != self.want  # an undetected lie changes it
                        if liar in client.verify_stats.get("detected", []):
                            detected += 1
                            steps.append(client.verify_stats["detected_steps"][0])
                    row = {"detected": detected, "runs": self.ns.runs,
                           "median_step": statistics.median(steps) if steps else None, "wrong_answers": wrong}
                    out.setdefault(lie, {}).setdefault(hop, {})[str(frac)] = row
                    log(f"  {lie} liar at the {hop} hop, fraction {frac}: {row}")
        return out

    def stop_faulty(self) -> None:
        """(Blocking.) SIGTERM every liar and the busy replica, then wait for them: the honest swarm is
        left (the dead replicas were killed by ``availability``; every client here bans them all)."""
        procs = [self.net.nodes[i].proc for i in [*self.roles["liars"].values(), self.roles["busy"]]]
        for p in procs:
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            if p is not None:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(10)

    def faulty(self) -> set[str]:
        r = self.roles
        return self.liars | {self.ids[r["busy"]], self.ids[r["dead_ref"]], self.ids[r["dead_route"]]}

    async def honest_runs(self, addr: str) -> None:
        async with verify_cost.client(addr, check_fraction=1.0, standing_steps=0) as client:
            await verify_cost.listed(client, MODEL, self.ids)
            self.reset(client, ban=self.faulty())
            for _ in range(2):  # warm-up: tokenizer, connections
                await self.ask(client, 0.0)
            left = self.ns.honest_asks

            async def one() -> None:
                gen, _ = await self.ask(client)
                self.r["honest_wrong_answers"] = self.r.get("honest_wrong_answers", 0) + (
                    gen is None or gen.token_ids != self.want)

            while left > 0:
                async with trio.open_nursery() as nursery:
                    for _ in range(min(left, self.ns.concurrency)):
                        nursery.start_soon(one)
                left -= self.ns.concurrency
            self.r["honest_checks"] = client.verify_stats.get("checks", 0)
            self.r["honest_mismatches"] = client.verify_stats.get("mismatches", 0)

    async def availability(self, addr: str) -> dict[str, Any]:
        r, ids, out = self.roles, self.ids, {}
        mid, head = r["honest"]["middle"], r["honest"]["head"]
        busy, dead_ref, dead_route = ids[r["busy"]], ids[r["dead_ref"]], ids[r["dead_route"]]
        # per fault: (its ban list, fraction, preferred peers; the fault-free baseline's the same)
        cases = {"dead_route": ({busy, dead_ref}, None, (ids[mid[0]], dead_route), (ids[mid[0]], ids[head[0]])),
                 "dead_reference": ({busy, dead_route}, 1.0, (ids[mid[0]],), (ids[mid[0]],)),
                 "busy_reference": ({dead_ref, dead_route}, 1.0, (ids[mid[0]],), (ids[mid[0]],))}
        killed = False
        for name, (ban, frac, prefer, calm) in cases.items():  # the dead route first: listed for 60 s
            row: dict[str, Any] = {"ok": 0, "runs": self.ns.runs, "failovers": 0, "verified_tokens": 0}
            async with verify_cost.client(addr, check_fraction=frac or 0.1, standing_steps=0) as c:
                await verify_cost.listed(c, MODEL, [ids[i] for i in mid + head] + ([] if killed else [dead_route]))
                c.rng = random.Random(20)
                base = []  # the same client and fraction without the fault, just before
                for _ in range(3):
                    self.reset(c, ban=ban | self.liars | {busy, dead_ref, dead_route})
                    c.options.prefer = calm
                    base.append((await self.ask(c, frac))[1])
                if not killed:
                    self.net.kill(r["dead_ref"])
                    self.net.kill(r["dead_route"])  # both still listed for the state's TTL (60 s)
                    killed = True
                extra = []
                for _ in range(self.ns.runs):
                    self.reset(c, ban=ban | self.liars)  # DOWN cleared: each run meets the fault afresh
                    c.options.prefer = prefer
                    gen, wall = await self.ask(c, frac)
                    if gen is not None and gen.token_ids == self.want:
                        row["ok"] += 1
                        row["verified_tokens"] += gen.summary.verified_tokens
                        row["failovers"] += gen.summary.failovers
                    extra.append(max(0.0, wall - statistics.median(base)))
                    for k in ("reference_errors", "reference_busy"):
                        row[k] = row.get(k, 0) + c.verify_stats.get(k, 0)
            row["failover_p95_s"] = round(percentile(extra, 0.95), 2)
            row["base_s"] = round(statistics.median(base), 2)
            out[name] = row
            log(f"  {name}: {row}")
        return out

    async def default_cost(self, addr: str) -> dict[str, Any]:
        out = await verify_cost.measure(addr, MODEL, self.ids[:6], PROMPT, self.ns.tokens, self.ns.cost_asks,
                                        lambda c: self.reset(c, ban=self.faulty()))
        return {"default_cost": out["established"]["ratio"], "default_cost_new_servers": out["new_servers"]["ratio"],
                "cost": out}


async def _run(ns: Any, result: dict[str, Any]) -> None:
    args, roles = _layout(ns)
    tok = Tokenizer.from_dir(resolve(MODEL))
    want = generate(load_chain(MODEL, 1), tok.encode(PROMPT), SamplingParams(max_new_tokens=ns.tokens), tok).token_ids
    base = tempfile.mkdtemp(prefix="swarmlm-bench-verify-")
    net = LocalTestnet(len(args), base, extra_args=["--model", MODEL], per_node_args=args, env=ENV)
    log(f"starting {len(args)} node processes ({MODEL}) in {base}")
    await trio.to_thread.run_sync(net.up)
    try:
        ids = [n.ready["peer_id"] for n in net.nodes]
        run = Run(ns, net, ids, roles, want)
        addr = net.nodes[0].addr
        log("honest swarm, every step checked, concurrent clients")
        await run.honest_runs(addr)
        log("liars")
        result["lies"] = await run.liars_runs(addr)
        log("availability: dead and busy references, a dead server on the route")
        result["availability"] = await run.availability(addr)
        result.update(run.r)
        log("default client vs unverified, on the honest swarm (liar and busy processes stopped)")
        await trio.to_thread.run_sync(run.stop_faulty)
        result.update(await run.default_cost(addr))
    finally:
        await trio.to_thread.run_sync(net.down)
    if ns.cost_model:
        result["cost_on"] = {ns.cost_model: await verify_cost.on_swarm(ns.cost_model, PROMPT, ns.tokens, ns.cost_asks)}


def _summary(r: dict[str, Any]) -> str:
    lines = [f"bench verify ({r['model']}, {r['tokens']} tokens, {r['runs']} runs):",
             f"  wrong_verified_tokens {r['wrong_verified_tokens']}, false_accusations {r['false_accusations']} "
             f"over {r['honest_checks']} honest checks, default_cost {r.get('default_cost')} "
             f"({r.get('default_cost_new_servers')} while the servers are new)"]
    for lie, hops in r.get("lies", {}).items():
        for hop, fr in hops.items():
            lines.append(f"  {lie:>7} liar, {hop:>6} hop: " + ", ".join(
                f"f={f}: {v['detected']}/{v['runs']} (step {v['median_step']})" for f, v in fr.items()))
    for name, v in r.get("availability", {}).items():
        lines.append(f"  {name}: {v['ok']}/{v['runs']} ok, failover p95 {v['failover_p95_s']} s")
    lines.append(f"  min_detected_perturbation {r.get('min_detected_perturbation')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser("verify", "verified shards and failover against real node processes: liars, dead and busy replicas")
    p.add_argument("--runs", type=int, default=5, help="asks per liar, fraction and fault")
    p.add_argument("--tokens", type=int, default=12, help="new tokens per ask")
    p.add_argument("--fractions", default="1.0,0.1", help="check fractions the liars are met with")
    p.add_argument("--lies", default="large,subtle,trigger")
    p.add_argument("--hops", default="first,middle,head")
    p.add_argument("--eps", type=float, default=0.01, help="the subtle liar's weight perturbation")
    p.add_argument("--trigger", type=int, default=3, help="the input-triggered liar lies at 1 input in K")
    p.add_argument("--honest-asks", type=int, default=48, help="honest asks with every step checked")
    p.add_argument("--concurrency", type=int, default=4, help="honest asks at once (servers batch them)")
    p.add_argument("--cost-asks", type=int, default=20, help="asks per client and phase for default_cost (medians of fewer swing by 0.1)")
    p.add_argument("--cost-model", help="also measure default_cost on a 4-process swarm of this model "
                                        "(e.g. builtin:smollm2-135m: a step is real compute there)")
    p.add_argument("--drift-model", default="builtin:tiny", help="model whose middle shard's numerics are measured")
    p.add_argument("--only", choices=["all", "cost"], default="all",
                   help="cost: only default_cost, on 6 honest processes of builtin:tiny (3 ranges x 2; no liars)")
    ns = p.parse_args(argv)
    try:
        ns.fractions = [float(x) for x in ns.fractions.split(",") if x.strip()]
    except ValueError:
        p.error(f"--fractions: comma-separated numbers between 0 and 1, got {ns.fractions!r}")
    ns.lies = [x for x in ns.lies.split(",") if x.strip()]
    ns.hops = [x for x in ns.hops.split(",") if x.strip()]
    if not all(0.0 < f <= 1.0 for f in ns.fractions) or not ns.fractions:
        p.error("--fractions: comma-separated numbers in (0, 1]")
    if not set(ns.lies) <= {"large", "subtle", "trigger"} or not set(ns.hops) <= set(HOPS):
        p.error("--lies takes large, subtle, trigger; --hops takes first, middle, head (comma-separated)")
    if min(ns.runs, ns.tokens, ns.honest_asks, ns.concurrency, ns.cost_asks) < 1 or ns.trigger < 1 or ns.eps <= 0:
        p.error("--runs, --tokens, --honest-asks, --concurrency, --cost-asks and --trigger must be >= 1, --eps > 0")
    if ns.only == "cost":
        return _cost_only(ns)
    result: dict[str, Any] = {"model": MODEL, "tokens": ns.tokens, "runs": ns.runs, "fractions": ns.fractions,
                              "eps": ns.eps, "trigger": ns.trigger}
    log(f"numerics: honest drift and the smallest detected perturbation ({ns.drift_model})")
    num = measure(ns.drift_model)
    trio.run(_run, ns, result)
    result.update({"min_detected_perturbation": num["min_detected_perturbation"], "honest_drift": num["drift"],
                   "tolerance": num["tolerance"], "margin": num["margin"]})
    emit(result, ns.json, _summary)
    return 0


def _cost_only(ns: Any) -> int:
    """``--only cost``: the honest half of the swarm (builtin:tiny, 3 ranges x 2) and ``default_cost``."""
    log(f"default client vs unverified, {ns.cost_asks} asks each of {ns.tokens} tokens")
    out = trio.run(verify_cost.on_swarm, MODEL, PROMPT, ns.tokens, ns.cost_asks, 3)
    result = {"model": MODEL, "tokens": ns.tokens, "cost_asks": ns.cost_asks, "default_cost": out["established"]["ratio"],
              "default_cost_new_servers": out["new_servers"]["ratio"], "cost": out}
    if ns.cost_model:
        result["cost_on"] = {ns.cost_model: trio.run(verify_cost.on_swarm, ns.cost_model, PROMPT, ns.tokens, ns.cost_asks)}
    emit(result, ns.json, lambda r: f"bench verify --only cost ({MODEL}, {ns.tokens} tokens, {ns.cost_asks} asks): "
                                    f"default_cost {r['default_cost']} ({r['default_cost_new_servers']} while the "
                                    f"servers are new)")
    return 0


_T0 = time.monotonic()


def log(msg: str) -> None:
    _log(f"{time.monotonic() - _T0:6.1f}s {msg}")
