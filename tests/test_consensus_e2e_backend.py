"""The model side of network rounds (``node/server/consensus_backend.py``) on ``builtin:tiny``: task texts,
sampling profiles, log-likelihood scores, judges and calibration answers."""

from __future__ import annotations

import pytest

from swarmlm.consensus.calibration import generate_puzzles
from swarmlm.consensus.records import ConsensusError
from swarmlm.node.server.consensus_backend import ModelBackend, Profile, default_profile
from swarmlm.node.wire import WireError, parse_task, task_text

MODEL = "builtin:tiny"


@pytest.fixture(scope="module")
def backend():
    import torch

    from swarmlm.models.generate import load_chain
    from swarmlm.models.registry import resolve
    from swarmlm.models.tokenizer import Tokenizer

    torch.set_num_threads(1)
    return ModelBackend(load_chain(MODEL, 1)[0], Tokenizer.from_dir(resolve(MODEL)))


def test_task_text_is_canonical_and_checked():
    msgs = [{"role": "user", "content": "hé"}]
    a = task_text(MODEL, None, msgs, 8, ["\n"])
    assert a == task_text(MODEL, None, [dict(reversed(list(m.items()))) for m in msgs], 8, ["\n"])
    t = parse_task(a)
    assert (t["model"], t["messages"], t["max_new_tokens"], t["stop"]) == (MODEL, msgs, 8, ["\n"])
    assert parse_task(task_text(MODEL, "plain", None, 4, []))["prompt"] == "plain"
    for bad in ("nope", '{"v": 1}', a.replace('"max_new_tokens":8', '"max_new_tokens":0'),
                a.replace('"stop":["\\n"]', '"stop":[""]')):
        with pytest.raises(WireError):
            parse_task(bad)
    with pytest.raises(WireError):
        task_text(MODEL, None, None, 8, [])


def test_profiles():
    p = Profile.parse("temperature=0.7, top_p=0.9 top_k=40")
    assert (p.temperature, p.top_p, p.top_k) == (0.7, 0.9, 40) and p.text() == "temperature=0.7 top_p=0.9 top_k=40"
    with pytest.raises(ConsensusError):
        Profile.parse("temp=1")
    assert default_profile("peer-a") == default_profile("peer-a")
    assert len({default_profile(f"peer-{i}").temperature for i in range(40)}) > 1  # spread over the swarm


def test_greedy_answer_is_the_likeliest_and_judges_prefer_it(backend):
    task = parse_task(task_text(MODEL, None, [{"role": "user", "content": "hello"}], 6, []))
    greedy = backend.answer(task, Profile(), seed=1)
    assert greedy == backend.answer(task, Profile(), seed=2)  # temperature 0: the seed does not matter
    pids = backend.prompt_ids(task)
    other = "zebra quantum " * 3
    assert backend.loglik(pids, greedy) > backend.loglik(pids, other)
    assert backend.loglik(pids, "") == -1e9
    judge = backend.judge(task, "loglik")
    assert judge.judge("", greedy, other) == "A" and judge.judge("", other, greedy) == "B"
    assert judge.judge("", greedy, greedy) == "tie"
    assert backend.judge(task, "prompt").judge("", greedy, other) in ("A", "B", "tie")


def test_pairwise_judge_reads_both_orders_in_one_batch(backend):
    task = parse_task(task_text(MODEL, None, [{"role": "user", "content": "hello"}], 6, []))
    judge = backend.judge(task)  # the default: pairwise
    pairs = [("Paris", "Lyon"), ("Lyon", "Paris"), ("yes", "no")]
    verdicts = judge.judge_many("Capital of France?", pairs)
    mirror = {"A": "B", "B": "A", "tie": "tie"}
    assert verdicts[1] == mirror[verdicts[0]]  # the two orders are one averaged preference
    lp = backend.choice_logprobs(["Which? A or B", "Which? B or A"])
    assert len(lp) == 2 and all(x < 0 for pair in lp for x in pair)
    assert lp[0] == backend.choice_logprobs(["Which? A or B"])[0] or \
        all(abs(x - y) < 1e-4 for x, y in zip(lp[0], backend.choice_logprobs(["Which? A or B"])[0]))
    text, finish = backend.answer_with_finish(task, Profile(), seed=1)
    assert finish in ("stop", "length")


def test_calibration_answers_are_option_indices(backend):
    puzzles = generate_puzzles("seed", 10)
    got = [backend.choose(p) for p in puzzles]
    assert all(0 <= g < len(p.options) for g, p in zip(got, puzzles))
    assert got == [backend.choose(p) for p in puzzles]  # deterministic


def test_an_answer_after_a_colon_is_scored_with_its_space(backend):
    """A base model's transcript ends in "Answer:": the answer follows a space, as the model writes it;
    after a chat template's newline the answer is scored as given."""
    tok = backend.tokenizer
    after_colon = tok.encode("Question: what is 2 + 2?\nAnswer:")
    assert backend.loglik(after_colon, "four") == backend.loglik(after_colon, " four")
    after_newline = tok.encode("Question: what is 2 + 2?\n")
    assert backend.loglik(after_newline, "four") != backend.loglik(after_newline, " four")


def test_a_bare_prompt_gets_the_bos_its_tokenizer_adds(tmp_path):
    """A model whose tokenizer adds a BOS (Gemma's does, SmolLM2's and tiny's do not) gets it before a
    bare prompt, as transformers' tokenizer call does; a chat template writes its own."""
    import json
    import shutil

    from swarmlm.models.generate import load_chain
    from swarmlm.models.registry import resolve
    from swarmlm.models.tokenizer import Tokenizer

    src = resolve(MODEL)
    dst = tmp_path / "with-bos"
    shutil.copytree(src, dst)
    tj = json.loads((dst / "tokenizer.json").read_text())
    bos = next(t for t in tj["added_tokens"] if t["content"] == "<|endoftext|>")
    tj["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [bos["id"]], "tokens": ["<|endoftext|>"]}}}
    (dst / "tokenizer.json").write_text(json.dumps(tj))
    be = ModelBackend(load_chain(MODEL, 1)[0], Tokenizer.from_dir(dst))
    ids = be.prompt_ids({"prompt": "Hello", "max_new_tokens": 4})
    assert ids[0] == bos["id"] and ids[1:] == be.tokenizer.encode("Hello")
    plain = ModelBackend(be.shard, Tokenizer.from_dir(src))
    assert plain.prompt_ids({"prompt": "Hello", "max_new_tokens": 4}) == plain.tokenizer.encode("Hello")
