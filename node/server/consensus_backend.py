"""The model work of a consensus participant: the round's task text, answering, judging, calibration.

Everything here is blocking torch work over a node's whole-model ``Shard`` (embedding and LM head);
``node/server/consensus.py`` runs it in ``trio.to_thread.run_sync`` behind the shard's compute
limiter, so stream readers keep reading.

* ``ModelBackend.answer``: a candidate answer with this node's own sampling profile.
* ``ModelBackend.loglik``: the log-likelihood of an answer given the task (per token by default;
  ``"sum"`` favours the shortest answer, so the mean is what ``LogLikelihoodJudge`` expects).
* ``ModelBackend.judge(kind)``: a ``Judge``: ``"pairwise"`` (the default: ``PairwiseJudge``, the
  model's probabilities of the choice letters A/B in both orders, batched; likelihood breaks ties),
  ``"loglik"`` (``LogLikelihoodJudge``, scores cached per answer) or ``"prompt"`` (``PromptJudge``).
* ``ModelBackend.choose``: a calibration puzzle answered by the logits of the option letters.
* ``default_profile(peer_id)``: a node's sampling profile when none is configured (temperatures
  spread over the swarm by peer id, so candidates differ).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from swarmlm.consensus.calibration import LETTERS
from swarmlm.consensus.judging import LogLikelihoodJudge, PromptJudge
from swarmlm.consensus.pairwise import PairwiseJudge
from swarmlm.models.batchgen import next_token_logprobs
from swarmlm.consensus.records import ConsensusError
from swarmlm.models.generate import generate
from swarmlm.models.sampling import SamplingParams
from swarmlm.node.wire import MAX_TASK_TOKENS

PROFILE_TEMPERATURES = (0.0, 0.4, 0.7, 1.0)


@dataclass(frozen=True)
class Profile:
    """A node's sampling settings for its candidate answers."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0

    def text(self) -> str:
        return f"temperature={self.temperature:g} top_p={self.top_p:g} top_k={self.top_k}"

    @classmethod
    def parse(cls, text: str) -> "Profile":
        """``"temperature=0.7,top_p=0.9"`` (commas or spaces); unknown keys are an error."""
        kw: dict[str, Any] = {}
        for part in text.replace(",", " ").split():
            key, _, val = part.partition("=")
            if key not in ("temperature", "top_p", "top_k") or not val:
                raise ConsensusError(f"bad consensus sampling setting {part!r} (temperature=, top_p=, top_k=)")
            kw[key] = int(val) if key == "top_k" else float(val)
        return cls(**kw)


def default_profile(peer_id: str) -> Profile:
    t = PROFILE_TEMPERATURES[hashlib.sha256(peer_id.encode()).digest()[0] % len(PROFILE_TEMPERATURES)]
    return Profile(t, 0.9 if t > 0 else 1.0)


@dataclass
class ModelBackend:
    """Blocking model calls over one whole-model shard (call them from a worker thread)."""

    shard: Any
    tokenizer: Any
    norm: str = "mean"  # "mean" | "sum" token log-likelihood
    margin: float = 0.05
    _letters: list[int] | None = field(default=None, repr=False)
    _choices: list[list[int]] | None = field(default=None, repr=False)

    def prompt_ids(self, task: dict[str, Any]) -> list[int]:
        tok = self.tokenizer
        if "messages" in task:
            ids = tok.encode_chat(task["messages"])
        else:  # a bare prompt: with the BOS the model's tokenizer adds (Gemma's; SmolLM2's adds none)
            ids = tok.encode(task["prompt"], add_special_tokens=True)
        if not ids:
            raise ConsensusError("the task's prompt is empty")
        if len(ids) + task["max_new_tokens"] > MAX_TASK_TOKENS:
            raise ConsensusError(f"the task needs more than {MAX_TASK_TOKENS} tokens")
        return ids

    def answer(self, task: dict[str, Any], profile: Profile, seed: int) -> str:
        return self.answer_with_finish(task, profile, seed)[0]

    def answer_with_finish(self, task: dict[str, Any], profile: Profile, seed: int) -> tuple[str, str | None]:
        """The answer and why it ended (``"stop"`` or ``"length"``: the screens read the latter)."""
        params = SamplingParams(temperature=profile.temperature, top_k=profile.top_k, top_p=profile.top_p,
                                seed=seed, max_new_tokens=task["max_new_tokens"], stop=list(task["stop"]))
        res = generate([self.shard], self.prompt_ids(task), params.validate(), self.tokenizer)
        return res.text.strip(), res.finish_reason

    def choice_logprobs(self, texts: list[str]) -> list[tuple[float, float]]:
        """log P("A"), log P("B") as the reply's first token to each judging text (one batched pass)."""
        tok = self.tokenizer
        if self._choices is None:
            self._choices = [sorted({ids[-1] for ids in (tok.encode(c), tok.encode(" " + c)) if ids})
                             for c in ("A", "B")]
        seqs = [(tok.encode_chat([{"role": "user", "content": t}]) if tok.chat_template else tok.encode(t))
                [-MAX_TASK_TOKENS:] for t in texts]
        out = []
        for lp in next_token_logprobs(self.shard, seqs):
            a, b = (float(torch.logsumexp(lp[ids], 0)) for ids in self._choices)
            out.append((a, b))
        return out

    def loglik(self, prompt_ids: list[int], answer: str) -> float:
        """Mean (or summed) log-probability of the answer's tokens after the prompt."""
        last = self.tokenizer.decode(list(prompt_ids[-1:]), skip_special_tokens=False)
        if last and not last[-1].isspace() and answer[:1] not in ("", " ", "\n"):
            answer = " " + answer  # after "Answer:" (a base model's transcript) an answer follows a space
        ans = self.tokenizer.encode(answer)[: max(1, MAX_TASK_TOKENS - len(prompt_ids))]
        if not ans:
            return -1e9  # an empty answer is the worst answer
        ids = list(prompt_ids) + ans
        sess = self.shard.new_session(len(ids))
        try:
            logits = self.shard.forward(torch.tensor([ids]), sess, 0)
        finally:
            sess.free()
        logp = torch.log_softmax(logits[0, len(prompt_ids) - 1:len(ids) - 1].float(), dim=-1)
        got = logp.gather(1, torch.tensor(ans).unsqueeze(1)).squeeze(1)
        return float(got.sum() if self.norm == "sum" else got.mean())

    def greedy(self, text: str, max_new_tokens: int = 4) -> str:
        tok = self.tokenizer
        ids = tok.encode_chat([{"role": "user", "content": text}]) if tok.chat_template else tok.encode(text)
        return generate([self.shard], ids, SamplingParams(max_new_tokens=max_new_tokens), tok).text

    def judge(self, task: dict[str, Any], kind: str = "pairwise") -> Any:
        """A ``Judge`` for one round (its scores cached per answer)."""
        if kind == "prompt":
            return PromptJudge(self.greedy)
        pids = self.prompt_ids(task)
        cache: dict[str, float] = {}

        def score(_prompt: str, answer: str) -> float:
            if answer not in cache:
                cache[answer] = self.loglik(pids, answer)
            return cache[answer]

        if kind == "pairwise":
            return PairwiseJudge(self.choice_logprobs, tiebreak=score)
        return LogLikelihoodJudge(score, margin=self.margin)

    def choose(self, puzzle: Any) -> int:
        """A calibration puzzle's option index: the most likely of the letters A-D as the next token."""
        tok = self.tokenizer
        text = puzzle.prompt()
        ids = tok.encode_chat([{"role": "user", "content": text}]) if tok.chat_template else tok.encode(text)
        if self._letters is None:
            self._letters = [tok.encode(x)[0] if tok.encode(x) else 0 for x in LETTERS]
        sess = self.shard.new_session(len(ids))
        try:
            logits = self.shard.forward(torch.tensor([ids]), sess, 0, last_only=True)
        finally:
            sess.free()
        cand = logits[0, -1, self._letters[: len(puzzle.options)]]
        return int(torch.argmax(cand))
