"""`--ee-key` alone: the key file records which base model each variant made with it is of (`swarmlm model
encrypt` writes it), so a client picks the served variant and its base model by itself, or fails with one
line; a client without the key is refused an encrypted variant instead of sending it plaintext ids."""

from __future__ import annotations

import os

import pytest

from swarmlm.crypto.ee import EEKey, EEKeyError
from swarmlm.crypto.ee_keyfile import record_variant, recorded_variants
from swarmlm.node.client.encrypted import EncryptedGenerator
from swarmlm.node.client.engine import AsyncClient
from swarmlm.node.generation import BadRequest, GenerationRequest, ModelCard, UnknownModel


def test_variants_are_recorded_in_the_private_key_file(tmp_path):
    key = EEKey.generate()
    path = key.save(tmp_path / "k")
    assert recorded_variants(path) == {}
    record_variant(path, "ee1-aaa", "builtin:tiny")
    record_variant(path, "ee1-bbb", "/models/my dir")
    record_variant(path, "ee1-aaa", "builtin:tiny")  # idempotent
    assert recorded_variants(path) == {"ee1-aaa": "builtin:tiny", "ee1-bbb": "/models/my dir"}
    assert EEKey.load(path) == key and os.stat(path).st_mode & 0o777 == 0o600
    path.write_text(path.read_text() + "garbage line\n")
    with pytest.raises(EEKeyError):
        EEKey.load(path)


class _Pipeline:
    def __init__(self, cards):
        self.cards = cards
        self.options = None

    async def list_models(self):
        return self.cards


def cards(*ids: str) -> list[ModelCard]:
    return [ModelCard(i, 6, 1.0, 3) for i in ids]


async def test_the_default_model_with_a_key_is_the_base_of_a_served_recorded_variant(tmp_path):
    path = EEKey.generate().save(tmp_path / "k")
    ee = EncryptedGenerator(_Pipeline(cards("builtin:tiny", "ee:ee1-aaa")), path)
    with pytest.raises(UnknownModel, match="records none of them: give --model BASE"):
        ee.default_base(await ee.list_models())
    record_variant(path, "ee1-aaa", "builtin:tiny")
    assert ee.default_base(await ee.list_models()) == "builtin:tiny"
    assert ee.base_of("ee:ee1-aaa") == "builtin:tiny" and ee.base_of("builtin:tiny") == "builtin:tiny"
    with pytest.raises(BadRequest, match="not a variant your key file"):
        ee.base_of("ee:ee1-zzz")
    with pytest.raises(UnknownModel, match="no node serves an encrypted variant"):
        EncryptedGenerator(_Pipeline(cards("builtin:tiny")), path).default_base(cards("builtin:tiny"))


async def test_without_a_key_an_encrypted_variant_is_refused_and_never_the_default():
    client = AsyncClient.__new__(AsyncClient)
    client.pipeline, client.encrypted, client.consensus = _Pipeline(cards("ee:ee1-aaa", "builtin:tiny")), None, None
    assert await client.default_model() == "builtin:tiny"
    with pytest.raises(BadRequest, match="encrypted variant: only a client holding its key"):
        client.generator_for(GenerationRequest(model="ee:ee1-aaa", prompt="hi"))
    client.pipeline = _Pipeline(cards("ee:ee1-aaa"))
    with pytest.raises(UnknownModel, match="only encrypted variants"):
        await client.default_model()
