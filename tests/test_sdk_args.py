"""The SDK's sampling arguments take OpenAI's names and refuse what they do not know: ``max_tokens``
(it was silently ignored), ``stop`` as one string (it was split into characters: "Paris" stopped at "P"),
``n`` other than 1 refused with a reason, a typo refused with the accepted names. Bootstrap addresses
are checked before any network is touched."""

from __future__ import annotations

import pytest

from swarmlm.models.sampling import SamplingParams
from swarmlm.node.client.sampling_args import sampling_params
from swarmlm.node.client.sdk import Client, ClientError
from swarmlm.node.generation import BadRequest


def test_openai_names_are_understood():
    p = sampling_params({"max_tokens": 7, "stop": "Paris", "temperature": 0.5, "seed": 3, "n": 1})
    assert (p.max_new_tokens, p.stop, p.temperature, p.seed) == (7, ["Paris"], 0.5, 3)
    assert sampling_params({"max_completion_tokens": 9}).max_new_tokens == 9
    assert sampling_params({"max_new_tokens": 5, "max_tokens": 5}).max_new_tokens == 5
    assert sampling_params({"stop": [".", "\n"]}).stop == [".", "\n"]
    assert sampling_params({}).max_new_tokens == SamplingParams().max_new_tokens
    assert SamplingParams.from_dict({"stop": "Paris"}).stop == ["Paris"]  # one string is one stop string


@pytest.mark.parametrize("kwargs, match", [
    ({"max_token": 5}, r"unknown argument max_token; accepted: max_tokens"),
    ({"n": 2}, r"n=2: the swarm returns one answer per request"),
    ({"max_tokens": 5, "max_new_tokens": 6}, r"max_tokens and max_new_tokens disagree"),
    ({"stop": ["a", "b", "c", "d", "e"]}, r"at most 4"),
    ({"stop": ""}, r"non-empty string"),
    ({"temperature": -1}, r"temperature must be >= 0"),
])
def test_bad_arguments_are_refused_with_a_reason(kwargs, match):
    with pytest.raises(BadRequest, match=match):
        sampling_params(kwargs)


@pytest.mark.parametrize("addr", ["/ip4/127.0.0.1/tcp/4001", "127.0.0.1:4001"])
def test_a_bootstrap_address_without_its_peer_id_is_refused_at_once(addr):
    with pytest.raises(ClientError, match="needs the form /ip4/HOST/tcp/PORT/p2p/PEER_ID"):
        Client(addr)


def test_no_bootstrap_at_all_names_the_environment_variable(monkeypatch):
    monkeypatch.delenv("SWARMLM_BOOTSTRAP", raising=False)
    with pytest.raises(ClientError, match="SWARMLM_BOOTSTRAP"):
        Client()
