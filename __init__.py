"""swarmlm: a decentralized peer-to-peer swarm node for LLM inference.

The repository root is this package; its folders install as ``swarmlm.node``,
``swarmlm.net``, ``swarmlm.models``, ``swarmlm.consensus``, ``swarmlm.crypto``,
``swarmlm.testnet`` and ``swarmlm.bench``.
"""

from __future__ import annotations

from swarmlm.version import AGENT_VERSION, __version__

__all__ = ["__version__", "AGENT_VERSION", "AsyncClient", "Client"]


def __getattr__(name: str):
    """``swarmlm.Client`` (the SDK for plain code) and ``swarmlm.AsyncClient`` (for trio code)."""
    if name == "Client":
        from swarmlm.node.client.sdk import Client  # lazy: importing swarmlm must not import torch or libp2p

        return Client
    if name == "AsyncClient":
        from swarmlm.node.client.engine import AsyncClient  # lazy: importing swarmlm must not import torch or libp2p

        return AsyncClient
    raise AttributeError(f"module 'swarmlm' has no attribute {name!r}")
