"""Build a Node from its config: which services it runs follows from the config.

- ``--model``: a ``ShardService`` (serve a layer range, or the whole model) and a
  ``ConsensusService`` (answer, judge and coordinate consensus rounds when the whole model is here);
- always: an ``AsyncClient`` (pipeline and consensus generations through the swarm; with
  ``--ee-key`` it encrypts prompts first);
- ``--http``: the ``HttpService`` (OpenAI-compatible API, health page, metrics) in front of that client.
"""

from __future__ import annotations

from swarmlm.node.client.engine import AsyncClient
from swarmlm.node.client.options import ClientOptions
from swarmlm.node.config import NodeConfig
from swarmlm.node.daemon import Node
from swarmlm.node.front.http_service import HttpService
from swarmlm.node.server.consensus import ConsensusOptions, ConsensusService
from swarmlm.node.server.shard import ShardService


def build_node(config: NodeConfig) -> Node:
    node = Node(config)
    if config.model:
        node.shard = ShardService(config.model, layers=config.layers, max_layers=config.max_layers,
                                  dtype=config.dtype, max_cache_tokens=config.max_cache_tokens,
                                  max_sessions=config.max_sessions, peer_max_sessions=config.peer_max_sessions,
                                  fault=config.fault,
                                  rebalance_s=config.rebalance_s, max_batch_tokens=config.max_batch_tokens,
                                  prefill_chunk=config.prefill_chunk)
        node.consensus = ConsensusService(ConsensusOptions(
            profile=config.consensus_sampling, judge=config.consensus_judge,
            calibration=config.consensus_calibration))
    # pipeline generations through the swarm; consensus rounds run here when we can coordinate them
    node.client = AsyncClient(node.host, node.state, ClientOptions(witness_s=config.witness_s), ee_key=config.ee_key or None,
                              local_consensus=node.consensus)
    if config.http:
        node.http = HttpService(config.http, config.http_token or None, tuple(config.http_allow_hosts),
                                tuple(config.http_allow_origins))
    for svc in node.services:
        svc.register(node)
    return node
