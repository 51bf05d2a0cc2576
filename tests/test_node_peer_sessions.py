"""How many sessions one peer may hold on a server: all but an eighth of ``max_sessions`` by default,
``peer_max_sessions`` (config key, ``--peer-max-sessions``) when the operator sets it, e.g. for a
gateway it trusts; a value over ``max_sessions`` is a config error."""

from __future__ import annotations

import pytest

from swarmlm.node.config import ConfigError, NodeConfig
from swarmlm.node.front.cli import build_parser
from swarmlm.node.front.cli_node import load_config
from swarmlm.node.server.shard import ShardService


def test_default_keeps_an_eighth_for_other_peers_and_the_option_overrides_it():
    assert ShardService("builtin:tiny", max_sessions=64).peer_session_cap() == 56
    assert ShardService("builtin:tiny", max_sessions=8).peer_session_cap() == 7
    assert ShardService("builtin:tiny", max_sessions=64, peer_max_sessions=64).peer_session_cap() == 64
    assert ShardService("builtin:tiny", max_sessions=64, peer_max_sessions=4).peer_session_cap() == 4


def test_config_and_flag(tmp_path):
    ns = build_parser().parse_args(["node", "run", "--data-dir", str(tmp_path), "--peer-max-sessions", "64"])
    assert load_config(ns).peer_max_sessions == 64
    with pytest.raises(ConfigError, match="peer_max_sessions"):
        NodeConfig(max_sessions=8, peer_max_sessions=9).validate()
    with pytest.raises(ConfigError, match="peer_max_sessions"):
        NodeConfig(peer_max_sessions=-1).validate()
