"""Equivariant encryption through the swarm: 3 nodes serve the encrypted variant of builtin:tiny
(layers split), a client with the key gets exactly the plaintext model's greedy tokens, while the
nodes only see the variant id and encrypted ids; a wrong key is refused with a clear error."""

from __future__ import annotations

import pytest

from swarmlm.crypto.ee import EEKey
from swarmlm.crypto.ee_checkpoint import encrypt_checkpoint
from swarmlm.crypto.ee_keyfile import record_variant
from swarmlm.models.generate import generate, load_chain
from swarmlm.models.registry import resolve
from swarmlm.models.sampling import SamplingParams
from swarmlm.models.tokenizer import Tokenizer
from swarmlm.node.client.encrypted import EncryptedGenerator
from swarmlm.node.generation import GenerationRequest, UnknownModel

from helpers import running_nodes, swarm_client

MODEL = "builtin:tiny"


async def test_ee_variant_over_three_shards_matches_plaintext(tmp_path):
    key = EEKey.generate().save(tmp_path / "ee.key")
    res = encrypt_checkpoint(MODEL, key, tmp_path / "tiny-ee")
    tok = Tokenizer.from_dir(resolve(MODEL))
    params = SamplingParams(max_new_tokens=12)
    msgs = [{"role": "user", "content": "secret question"}]
    want = generate(load_chain(MODEL, 1), tok.encode_chat(msgs), params, tok)
    specs = [["--model", str(res.out_dir), "--layers", r] for r in ("0:2", "2:4", "4:6")]
    async with running_nodes(tmp_path, specs) as nodes:
        served = {n.shard.model_id for n in nodes}
        assert served == {f"ee:{res.variant_id}"}  # the swarm knows the variant id, not the base model
        async with swarm_client(nodes[0]) as client:
            ee = EncryptedGenerator(client, key)
            async with ee.generate(GenerationRequest(model=MODEL, messages=msgs, params=params)) as gen:
                text = "".join([c.text async for c in gen])
            plain_ids = [int(i) for i in ee._codecs[MODEL][0].decrypt_ids(gen.token_ids)]
            assert plain_ids == want.token_ids
            assert text == want.text
            assert gen.token_ids != want.token_ids  # what crossed the network were encrypted ids

            # the key file records the base model: asking the variant itself (or nothing) works alike
            record_variant(key, res.variant_id, MODEL)
            assert ee.default_base(await ee.list_models()) == MODEL
            async with ee.generate(GenerationRequest(model=f"ee:{res.variant_id}", messages=msgs, params=params)) as gen:
                assert "".join([c.text async for c in gen]) == want.text

            other = EEKey.generate().save(tmp_path / "other.key")
            with pytest.raises(UnknownModel, match="ee:"):
                async with EncryptedGenerator(client, other).generate(GenerationRequest(model=MODEL, messages=msgs)):
                    pass
