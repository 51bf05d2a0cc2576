"""How fast a shard server is and how busy, from the steps it actually served (sans-I/O).

A batch of ``n`` token positions through the hosted layers costs about ``fixed + n * per_token``
milliseconds (``fixed``: reading the weights once; ``per_token``: each row's arithmetic). Start-up
fits the two numbers from a one-token decode and a short prefill (``node/server/hosting.py``
``measure_speed``). Every served batch then updates one live factor, ``scale`` = observed / predicted
time, as a decaying average in log space, so a machine that gets slower (or faster) is seen within a
few dozen batches whatever the batch sizes were. From the model:

- ``ms_per_layer``: one decode token at batch 1, per layer (what routing and placement compare);
- ``capacity_tok_s(n)``: tokens per second when ``n`` sessions decode together (what it can sustain);
- ``served_tok_s(now)``: token positions actually computed per second (prefill and decode), an
  exponentially decaying rate over ``tau_s`` seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_RATIO, MAX_RATIO = 0.01, 100.0  # one batch moves the estimate by at most this factor (before alpha)


@dataclass
class SpeedModel:
    layers: int
    step_ms: float  # start-up estimate: one token through the hosted layers
    token_ms: float  # start-up estimate: each further token of the same batch
    alpha: float = 0.05  # weight of one batch in the live factor
    tau_s: float = 10.0  # time constant of the served rate
    scale: float = 1.0
    batches: int = 0
    _rate: float = 0.0
    _rate_at: float | None = None

    def __post_init__(self) -> None:
        self.step_ms = max(float(self.step_ms), 1e-6)
        self.token_ms = min(max(float(self.token_ms), 0.0), self.step_ms)

    @property
    def fixed_ms(self) -> float:
        return self.step_ms - self.token_ms

    def predict_ms(self, tokens: int) -> float:
        """Expected time of a batch of ``tokens`` positions, as things are now."""
        return self.scale * (self.fixed_ms + self.token_ms * max(1, tokens))

    def observe(self, tokens: int, seconds: float, now: float) -> None:
        """A batch of ``tokens`` positions took ``seconds`` (finished at ``now``)."""
        expected = self.fixed_ms + self.token_ms * max(1, tokens)
        ratio = min(MAX_RATIO, max(MIN_RATIO, seconds * 1000.0 / expected))
        self.scale = math.exp((1.0 - self.alpha) * math.log(self.scale) + self.alpha * math.log(ratio))
        self.batches += 1
        self._rate = self.served_tok_s(now) + tokens / self.tau_s
        self._rate_at = now

    @property
    def ms_per_layer(self) -> float:
        return self.scale * self.step_ms / max(1, self.layers)

    def capacity_tok_s(self, sessions: int) -> float:
        n = max(1, sessions)
        return n * 1000.0 / self.predict_ms(n)

    def served_tok_s(self, now: float) -> float:
        if self._rate_at is None:
            return 0.0
        return self._rate * math.exp(-max(0.0, now - self._rate_at) / self.tau_s)


def default_batch_tokens(token_ms: float, target_ms: float = 250.0, lo: int = 64, hi: int = 2048) -> int:
    """``--max-batch-tokens`` when not configured: about what the server computes in ``target_ms``
    beyond one step (so a batch with a prefill chunk holds up decoding sessions for that long at most)."""
    if not token_ms > 0:
        return hi
    return int(min(hi, max(lo, target_ms / token_ms)))
