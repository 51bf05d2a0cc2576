"""swarmlm: a decentralized peer-to-peer swarm node for LLM inference.

The repository root is this package; its folders install as ``swarmlm.node``,
``swarmlm.net``, ``swarmlm.models``, ``swarmlm.consensus``, ``swarmlm.crypto``,
``swarmlm.testnet`` and ``swarmlm.bench``.
"""

from __future__ import annotations

__version__ = "0.1.0"
AGENT_VERSION = f"swarmlm/{__version__}"

__all__ = ["__version__", "AGENT_VERSION", "Client"]


def __getattr__(name: str):  # lazy: importing swarmlm must not import torch or libp2p
    if name == "Client":
        from swarmlm.node.sdk import Client

        return Client
    raise AttributeError(f"module 'swarmlm' has no attribute {name!r}")
