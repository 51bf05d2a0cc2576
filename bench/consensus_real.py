"""`swarmlm bench consensus --real`: consensus rounds with a real model on the shipped labeled set.

N nodes in one process (node i runs the (i mod count)-th of ``--models``: SmolLM2-135M by default;
with a second model, e.g. Gemma 3 270M, the judges differ) share one whole-model shard per model.
They answer with different sampling profiles and seeds (one batched lockstep generation per question and model,
``models.batchgen``; a fresh seed per question and node), judge each other's answers with the node's
default judge (pairwise choice-letter probabilities in both orders, likelihood as tie-breaker;
``--judge loglik`` for the old mean log-likelihood judge), and ``consensus.realeval`` scores best
single node, majority over normalized answers, BT, BT + reputation and the degenerate-winner share
against the labels (``consensus/data/questions.jsonl``). ``--limit N`` takes N questions spread
evenly over the set (every category); ``--dump FILE`` keeps every round for study.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from swarmlm.bench.common import emit, log, parser
from swarmlm.consensus.evalset import Question, load_questions, prompt_of
from swarmlm.consensus.judging import LogLikelihoodJudge
from swarmlm.consensus.pairwise import PairwiseJudge
from swarmlm.consensus.realeval import run_eval
from swarmlm.models.batchgen import generate_many
from swarmlm.models.registry import GEMMA3, SMOLLM2
from swarmlm.models.sampling import SamplingParams
from swarmlm.node.server.consensus_backend import ModelBackend

PROFILES = ((0.0, 1.0), (0.5, 0.9), (0.7, 0.9), (0.9, 0.95), (1.0, 1.0), (0.6, 0.8), (0.8, 1.0))


def node_seed(seed: int, qid: str, node: int) -> int:
    """A node's sampling seed for one question: fresh per question, as a node draws one per round (one
    seed for every question made a node's first token the same draw each time: a base model whose
    newline is likely after "Answer:" then answered nothing, every time)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{qid}/{node}".encode()).digest()[:4], "big") >> 1


def subset(questions: tuple[Question, ...], limit: int) -> list[Question]:
    if limit <= 0 or limit >= len(questions):
        return list(questions)
    step = len(questions) / limit
    return [questions[int(i * step)] for i in range(limit)]


def run(models: list[str], nodes: int, limit: int, max_tokens: int, judge_kind: str, seed: int,
        reputation: str = "audits", dump: str | None = None) -> dict[str, Any]:
    """Node ``i`` answers and judges with ``models[i % len(models)]``."""
    import torch  # lazy: only the --real bench needs torch

    from swarmlm.models.generate import load_chain  # lazy: loads torch models
    from swarmlm.models.registry import resolve  # lazy: with the model
    from swarmlm.models.tokenizer import Tokenizer  # lazy: with the model

    torch.manual_seed(seed)
    backends = {m: ModelBackend(load_chain(m, 1)[0], Tokenizer.from_dir(resolve(m))) for m in dict.fromkeys(models)}
    model_of = [models[i % len(models)] for i in range(nodes)]
    qs = subset(load_questions(), limit)
    timing = {"answer_s": 0.0, "judge_s": 0.0}
    current: list[Question] = []  # the question being answered and judged

    def task(q: Question) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": prompt_of(q)}], "max_new_tokens": max_tokens, "stop": ["\n"]}

    def answer(q: Question) -> list[tuple[str, bool]]:
        t = time.perf_counter()
        current[:] = [q]
        got: dict[int, tuple[str, bool]] = {}
        for m, be in backends.items():  # one lockstep batch per model
            mine = [i for i in range(nodes) if model_of[i] == m]
            params = [SamplingParams(temperature=PROFILES[i % len(PROFILES)][0], top_p=PROFILES[i % len(PROFILES)][1],
                                     seed=node_seed(seed, q.id, i), max_new_tokens=max_tokens, stop=["\n"])
                      for i in mine]
            outs = generate_many(be.shard, be.prompt_ids(task(q)), params, be.tokenizer)
            got.update({i: (o.text.strip(), o.finish_reason == "length") for i, o in zip(mine, outs)})
        timing["answer_s"] += time.perf_counter() - t
        return [got[i] for i in range(nodes)]

    class Shared:  # the nodes of one model judge alike: one judge per question and model, its verdicts cached
        def __init__(self, be: ModelBackend) -> None:
            self.be = be
            self.q: Question | None = None
            self.inner: Any = None

        def judge_many(self, prompt: str, pairs: list[tuple[str, str]]) -> list[str]:
            t = time.perf_counter()
            q, be = current[0], self.be
            if self.q is not q:
                pids = be.prompt_ids(task(q))
                cache: dict[str, float] = {}

                def score(_p: str, a: str) -> float:
                    if a not in cache:
                        cache[a] = be.loglik(pids, a)
                    return cache[a]

                self.q = q
                self.inner = PairwiseJudge(be.choice_logprobs, tiebreak=score) if judge_kind == "pairwise" \
                    else LogLikelihoodJudge(score, margin=be.margin)
            inner = self.inner
            out = inner.judge_many(prompt, pairs) if hasattr(inner, "judge_many") else \
                [inner.judge(prompt, a, b) for a, b in pairs]
            timing["judge_s"] += time.perf_counter() - t
            return out

        def judge(self, prompt: str, a: str, b: str) -> str:
            return self.judge_many(prompt, [(a, b)])[0]

    judges = {m: Shared(be) for m, be in backends.items()}
    t0 = time.perf_counter()

    tally = [0, 0, 0, 0, 0]

    def progress(k: int, o: Any) -> None:
        if dump:
            with open(dump, "a") as f:
                f.write(json.dumps({"id": o.id, "correct": o.correct, **o.detail}) + "\n")
        tally[0] += o.majority
        tally[1] += o.bt
        tally[2] += o.bt_rep
        tally[3] += any(o.correct)
        tally[4] += o.bt_rep_judges
        if (k + 1) % 5 == 0 or k + 1 == len(qs):
            log(f"{k + 1}/{len(qs)} questions, {time.perf_counter() - t0:.0f} s: right so far majority {tally[0]}, "
                f"bt {tally[1]}, bt_rep {tally[2]} (judges alone {tally[4]}), some node {tally[3]}")

    res = run_eval(qs, answer, [judges[m] for m in model_of], progress,  # type: ignore[list-item]
                   reputation=reputation)
    out = res.summary()
    out.update({"model": ",".join(dict.fromkeys(models)), "node_models": model_of, "judge": judge_kind,
                "reputation": reputation, "max_tokens": max_tokens, "seed": seed,
                "elapsed_s": round(time.perf_counter() - t0, 1),
                "answer_s": round(timing["answer_s"], 1), "judge_s": round(timing["judge_s"], 1),
                "profiles": [f"temperature={PROFILES[i % len(PROFILES)][0]:g} top_p={PROFILES[i % len(PROFILES)][1]:g}"
                             for i in range(nodes)]})
    return out


def summary(r: dict[str, Any]) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:5.1f}%"

    return "\n".join([
        f"consensus on real answers: {r['model']}, {r['nodes']} nodes, {r['questions']} questions, "
        f"judge {r['judge']}, max_tokens {r['max_tokens']}",
        f"  best single node     {pct(r['best_single_node_acc'])}   (per node {r['per_node_acc']})",
        f"  majority (normalized){pct(r['majority_acc'])}",
        f"  Bradley-Terry        {pct(r['bt_acc'])}",
        f"  BT + reputation      {pct(r['bt_rep_acc'])}   (judges' standing alone, no author prior: "
        f"{pct(r['bt_rep_judges_only_acc'])})",
        f"  some node right      {pct(r['any_correct_acc'])}",
        f"  degenerate winners   {pct(r['degenerate_winner_share'])}   (strongest was screened: "
        f"{pct(r['degenerate_top_share'])}; screened {r['screened_candidates']})",
        f"  {r['elapsed_s']} s ({r['answer_s']} s answering, {r['judge_s']} s judging)"])


def main(argv: list[str] | None = None) -> int:
    p = parser("consensus --real", __doc__.splitlines()[0])
    p.add_argument("--real", action="store_true", required=True)
    p.add_argument("--models", "--model", dest="models", default=SMOLLM2,
                   help=f"comma-separated model specs; node i runs the (i mod count)-th (default {SMOLLM2}; "
                        f"{SMOLLM2},{GEMMA3} for judges that differ)")
    p.add_argument("--nodes", type=int, default=5, help="answering and judging nodes (default 5)")
    p.add_argument("--limit", type=int, default=0, help="questions, spread over the set (default: all)")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--judge", choices=("pairwise", "loglik"), default="pairwise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reputation", choices=("audits", "consensus"), default="audits",
                   help="standing from every 5th question as a known-answer audit (the node's default) or by agreement")
    p.add_argument("--dump", help="append each question's round (answers, normalized answers, screens, strengths, "
                                  "priors, which were right) to this file as a JSON line")
    ns = p.parse_args(argv)
    if not 3 <= ns.nodes <= 16 or not 1 <= ns.max_tokens <= 256 or ns.limit < 0 or not ns.models.strip(","):
        p.error("--nodes must be 3..16, --max-tokens 1..256, --limit at least 0 and --models name a model")
    models = [m for m in ns.models.split(",") if m]
    emit(run(models, ns.nodes, ns.limit, ns.max_tokens, ns.judge, ns.seed, ns.reputation, ns.dump), ns.json, summary)
    return 0
