"""The sampling keyword arguments of the SDK (``Client.chat`` / ``Client.generate``), OpenAI's names included.

``sampling_params(kwargs)`` accepts ``max_tokens`` / ``max_completion_tokens`` (OpenAI) or
``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop`` (a string or a list of
strings, as in OpenAI: ``stop="Paris"`` stops at the word, not at its letters) and ``n`` (only 1).
Anything else is refused with a ``BadRequest`` naming the accepted names: a typo must not be ignored.
"""

from __future__ import annotations

from typing import Any

from swarmlm.models.sampling import SamplingError, SamplingParams
from swarmlm.node.generation import BadRequest

ACCEPTED = ("max_tokens", "max_completion_tokens", "max_new_tokens", "temperature", "top_p", "top_k", "seed",
            "stop", "n")
MAX_STOP = 4  # as the HTTP API (and OpenAI)


def stop_list(stop: Any) -> list[str]:
    """``stop`` as a list: a string is one stop string; None is none."""
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest(f"stop must be a non-empty string or a list of them, got {stop!r}")
    if len(stop) > MAX_STOP:
        raise BadRequest(f"stop takes at most {MAX_STOP} strings, got {len(stop)}")
    return list(stop)


def sampling_params(kwargs: dict[str, Any]) -> SamplingParams:
    """``SamplingParams`` from SDK keyword arguments; BadRequest for unknown or conflicting ones."""
    unknown = sorted(set(kwargs) - set(ACCEPTED))
    if unknown:
        raise BadRequest(f"unknown argument{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"accepted: {', '.join(ACCEPTED)}")
    n = kwargs.get("n", 1)
    if n != 1:
        raise BadRequest(f"n={n!r}: the swarm returns one answer per request (n=1); "
                         "for several candidate answers use mode='consensus' with k")
    given = {k: kwargs[k] for k in ("max_tokens", "max_completion_tokens", "max_new_tokens")
             if kwargs.get(k) is not None}
    if len(set(given.values())) > 1:
        raise BadRequest(f"{' and '.join(given)} disagree ({', '.join(map(str, given.values()))}): give one")
    out: dict[str, Any] = {k: kwargs[k] for k in ("temperature", "top_p", "top_k", "seed") if kwargs.get(k) is not None}
    if given:
        out["max_new_tokens"] = next(iter(given.values()))
    out["stop"] = stop_list(kwargs.get("stop"))
    try:
        return SamplingParams.from_dict(out)
    except SamplingError as exc:
        raise BadRequest(str(exc)) from None
