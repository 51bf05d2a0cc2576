"""Build a Node from its config: which services it runs follows from the config."""

from __future__ import annotations

from swarmlm.node.config import NodeConfig
from swarmlm.node.daemon import Node


def build_node(config: NodeConfig) -> Node:
    node = Node(config)
    return node
