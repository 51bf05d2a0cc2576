"""Errors of the models layer; all derive from :class:`swarmlm.errors.SwarmError`.

- ``ModelError``: base of everything below.
- ``UnsupportedModelError``: a ``config.json`` we cannot run exactly (unknown ``model_type``,
  ``hidden_act``, ``rope_scaling`` type, ...). Never a silent wrong answer.
- ``CheckpointError``: a missing/corrupt/truncated safetensors file, a missing tensor, a shape mismatch.
- ``UnknownModelError``: a model spec that is neither a builtin nor a checkpoint directory.
- ``CacheBudgetExceeded``: opening a KV-cache session would exceed the node's token budget
  (the caller routes the request elsewhere).
- ``SessionError``: a misuse of a session (unknown/closed id, position gap, beyond max length).
"""

from __future__ import annotations

from swarmlm.errors import SwarmError


class ModelError(SwarmError):
    """Base of the models layer's errors."""


class UnsupportedModelError(ModelError):
    """The checkpoint's config names something this implementation does not compute exactly."""


class CheckpointError(ModelError):
    """The checkpoint files are missing, corrupt, truncated or do not match the config."""


class UnknownModelError(ModelError):
    """A model spec that resolves to nothing."""


class CacheBudgetExceeded(ModelError):
    """Opening this session would exceed the KV-cache budget (in tokens)."""

    def __init__(self, message: str, requested: int = 0, free: int = 0) -> None:
        super().__init__(message)
        self.requested = requested
        self.free = free


class SessionError(ModelError):
    """A bad use of an inference session: unknown or closed id, gap in positions, too long."""
