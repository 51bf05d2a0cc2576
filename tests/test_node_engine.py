"""``AsyncClient`` is the one place a request's way through the swarm is chosen."""

from __future__ import annotations

import pytest

from swarmlm.node.client.consensus import ConsensusGenerator
from swarmlm.node.client.encrypted import EncryptedGenerator
from swarmlm.node.client.engine import AsyncClient
from swarmlm.node.client.pipeline import PipelineGenerator
from swarmlm.node.generation import BadRequest, GenerationRequest


class _Host:  # what a client reads of its host before it generates: its peer id and config
    peer_id = "12D3KooWtest"
    config = None


class _State:  # a state service the client's trust view installs itself on
    sync = None


def client(**kw) -> AsyncClient:
    return AsyncClient(host=_Host(), state=_State(), **kw)


def req(mode: str = "pipeline", model: str = "builtin:tiny") -> GenerationRequest:
    return GenerationRequest(model=model, prompt="hi", mode=mode)


def test_pipeline_and_consensus_without_a_key():
    c = client()
    assert isinstance(c.generator_for(req()), PipelineGenerator)
    assert isinstance(c.generator_for(req("consensus")), ConsensusGenerator)
    with pytest.raises(BadRequest, match="unknown mode"):
        c.generator_for(req("gossip"))


def test_an_ee_key_encrypts_pipelines_and_refuses_consensus(tmp_path):
    c = client(ee_key=tmp_path / "my.key")
    assert isinstance(c.generator_for(req()), EncryptedGenerator)
    for model in ("builtin:tiny", "ee:abc"):
        with pytest.raises(BadRequest, match="cannot keep a prompt private"):
            c.generator_for(req("consensus", model))
