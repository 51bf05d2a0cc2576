"""builtin:smollm2-135m end to end: 3 shards generate exactly the whole model's tokens, and say Paris.

Slow: the first run converts the GGUF into the cache (~40-60 s); later runs load in about a second.
"""

from __future__ import annotations

import pytest

from swarmlm.models.generate import generate, load_chain
from swarmlm.models.registry import SMOLLM2, resolve
from swarmlm.models.sampling import SamplingParams
from swarmlm.models.tokenizer import Tokenizer



pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir():
    return resolve(SMOLLM2, progress=False)


def test_checkpoint_layout(model_dir):
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    tok = Tokenizer.from_dir(model_dir)
    assert tok.chat_template and tok.eos_token_ids == [2]


def test_three_shards_greedy_equal_whole_model_and_answer_paris(model_dir):
    tok = Tokenizer.from_dir(model_dir)
    ids = tok.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    params = SamplingParams(max_new_tokens=24)
    whole = load_chain(SMOLLM2, 1)
    ref = generate(whole, ids, params, tok)
    assert "Paris" in ref.text, ref.text
    chain = load_chain(SMOLLM2, 3)
    assert [(s.start, s.end) for s in chain] == [(0, 10), (10, 20), (20, 30)]
    assert chain[-1].lm_head is not None and chain[-1].embed is None  # tied head read from embed_tokens
    out = generate(chain, ids, params, tok)
    assert out.token_ids == ref.token_ids and out.text == ref.text
