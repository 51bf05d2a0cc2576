"""Generated token ids to streamed text: incremental detokenization and stop strings, in one place.

``TextStream(tokenizer, stops)`` takes the tokens of a generation one by one (``push``) and says
what text may be shown now (``release``): text is held back while its tail could still be the start
of a stop string, and once a stop string appears the text is cut before it and ``stopped`` is set.
``release(upto_tokens=n)`` also holds back the text of tokens after the first ``n`` (a pipeline
client shows only verified tokens). ``finish()`` flushes what is left at the end; ``truncate(n)``
drops the tokens after the first ``n`` (they were not verified). Used by the local generation loop
(``models/generate.py``) and by the pipeline client.
"""

from __future__ import annotations

from typing import Any, Sequence

from swarmlm.models.tokenizer import IncrementalDecoder


def stop_hold(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could begin a stop string."""
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return hold


def find_stop(text: str, stops: Sequence[str]) -> int:
    """Where the earliest stop string in ``text`` begins, or -1."""
    return min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)


class TextStream:
    def __init__(self, tokenizer: Any, stops: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.tokens: list[int] = []
        self.text = ""
        self.emitted = 0  # characters of ``text`` released so far
        self.stopped = False  # a stop string appeared; ``text`` ends before it
        self._lens = [0]  # len(text) after each token
        self._dec = IncrementalDecoder(tokenizer)

    def push(self, token: int) -> None:
        """Add the next generated token (ignored once a stop string was found)."""
        if self.stopped:
            return
        self.tokens.append(int(token))
        self.text += self._dec.push(token)
        self._cut_at_stop()
        self._lens.append(len(self.text))

    def _cut_at_stop(self) -> None:
        hit = find_stop(self.text, self.stops)
        if hit >= 0:
            self.text = self.text[:hit]
            self.stopped = True

    def release(self, upto_tokens: int | None = None) -> str:
        """The text that may be shown now and was not yet: everything before a possible stop-string
        start (all of it once stopped), and only the text of the first ``upto_tokens`` tokens."""
        safe = len(self.text) if self.stopped else len(self.text) - stop_hold(self.text, self.stops)
        if upto_tokens is not None:
            safe = min(safe, self._lens[min(max(upto_tokens, 0), len(self._lens) - 1)])
        return self._take(safe)

    def finish(self) -> str:
        """The generation ended: flush the decoder and release the rest (still cut at a stop string)."""
        if not self.stopped:
            self.text += self._dec.flush()
            self._cut_at_stop()
        return self._take(len(self.text))

    def truncate(self, n_tokens: int) -> None:
        """Forget the tokens after the first ``n_tokens`` (text already released stays released)."""
        keep = self.tokens[:n_tokens]
        self.tokens, self.text, self.stopped, self._lens = [], "", False, [0]
        self._dec = IncrementalDecoder(self.tokenizer)
        for t in keep:
            self.push(t)
        self.emitted = min(self.emitted, len(self.text))

    def _take(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        out = self.text[self.emitted:upto]
        self.emitted = upto
        return out
