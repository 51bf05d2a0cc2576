"""Build a Node from its config: which services it runs follows from the config."""

from __future__ import annotations

from swarmlm import AGENT_VERSION
from swarmlm.net.state_service import StateService
from swarmlm.node.config import NodeConfig
from swarmlm.node.daemon import Node


def build_node(config: NodeConfig) -> Node:
    node = Node(config)

    def local_fields() -> dict:
        nearest = sorted((p for p in node.host.peers.all() if p.connected and p.rtt_ms is not None),
                         key=lambda p: p.rtt_ms)[:16]
        fields = {"addrs": node.host.addrs[:8], "agent": AGENT_VERSION, "reach": node.reachability,
                  "rtt": {p.peer_id: round(p.rtt_ms, 1) for p in nearest}}
        for svc in node.services:
            if hasattr(svc, "hosted_fields"):
                fields.update(svc.hosted_fields())
        return fields

    node.state = StateService(node.host, node.data_dir, heartbeat_s=config.heartbeat_s, local_fields=local_fields,
                              ttl_s=config.state_ttl_s)
    node.add_service(node.state)
    node.host.reachability_listeners.append(lambda _verdict: node.on_hosting_changed())  # publish at once
    if config.model:
        from swarmlm.node.shard_service import ShardService

        node.add_service(ShardService(config.model, layers=config.layers, max_layers=config.max_layers,
                                      dtype=config.dtype, max_cache_tokens=config.max_cache_tokens,
                                      max_sessions=config.max_sessions, fault=config.fault,
                                      rebalance_s=config.rebalance_s))
        from swarmlm.node.consensus_service import ConsensusOptions, ConsensusService

        node.add_service(ConsensusService(ConsensusOptions(
            profile=config.consensus_sampling, judge=config.consensus_judge,
            calibration=config.consensus_calibration)))
    from swarmlm.node.generator import NodeGenerator

    node.generator = NodeGenerator(node)  # pipeline via the SwarmClient, consensus via a coordinator
    if config.http:
        from swarmlm.node.http_service import HttpService

        node.add_service(HttpService(config.http, config.http_token or None))
    return node
