"""Equivariant encryption on the client side: the ``Generator`` for pipeline generations whose
prompts and answers the swarm must not see.

The user asks for a base model (``builtin:smollm2-135m``); the client holds the key, tokenizes
locally, and the swarm only ever sees the encrypted variant ``ee:<variant id>`` and encrypted token
ids. ``EncryptedGenerator`` wraps a ``PipelineGenerator``: the encryption lives in a tokenizer
adapter (``EETokenizer``): ids are encrypted when text is encoded and decrypted before they are
decoded; the EOS ids the client stops on are the encrypted ones (the variant's config carries them
too, see docs/EE.md for what that reveals). A request naming an ``ee:`` model directly passes through.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import trio

from swarmlm.crypto.ee_codec import EEClientCodec
from swarmlm.models.registry import resolve
from swarmlm.models.tokenizer import Tokenizer
from swarmlm.node.generation import GenerationRequest, ModelCard
from swarmlm.node.wire import EE_PREFIX, ee_model_id


class EETokenizer:
    """A base-model tokenizer whose ids are the encrypted ones."""

    def __init__(self, base: Tokenizer, codec: EEClientCodec) -> None:
        self.base = base
        self.codec = codec
        self.eos_token_ids = [int(i) for i in codec.encrypt_ids(list(base.eos_token_ids))]

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [int(i) for i in self.codec.encrypt_ids(self.base.encode(text, add_special_tokens))]

    def encode_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        return [int(i) for i in self.codec.encrypt_ids(self.base.encode_chat(messages, add_generation_prompt))]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.base.decode([int(i) for i in self.codec.decrypt_ids(list(ids))], skip_special_tokens)


class EncryptedGenerator:
    """Pipeline generations with equivariant encryption for the base models it has a key for."""

    def __init__(self, pipeline: Any, key_path: str | Path) -> None:
        self.pipeline = pipeline
        self.key_path = Path(key_path)
        self._codecs: dict[str, tuple[EEClientCodec, EETokenizer]] = {}

    async def _codec(self, base_model: str) -> tuple[EEClientCodec, EETokenizer]:
        """(codec, EE tokenizer) for a base model spec; resolves the base locally (config + tokenizer)."""
        if base_model not in self._codecs:
            base_dir = await trio.to_thread.run_sync(resolve, base_model)
            cfg = json.loads((base_dir / "config.json").read_text())
            codec = EEClientCodec.from_key_file(self.key_path, cfg)  # refuses a key file others can read
            tok = await trio.to_thread.run_sync(Tokenizer.from_dir, base_dir)
            self._codecs[base_model] = (codec, EETokenizer(tok, codec))
        return self._codecs[base_model]

    def variant_model(self, base_model: str) -> str:
        """The id under which the swarm serves our encrypted variant of ``base_model`` (known once a
        generation of it started)."""
        codec, _ = self._codecs[base_model]
        return ee_model_id(codec.variant_id)

    async def list_models(self) -> list[ModelCard]:
        return await self.pipeline.list_models()

    def plan(self, model: str, need_tokens: int, prefer: tuple[str, ...] = ()) -> Any:
        return self.pipeline.plan(self.variant_model(model) if model in self._codecs else model, need_tokens, prefer)

    @asynccontextmanager
    async def generate(self, request: GenerationRequest) -> AsyncIterator[Any]:
        if request.model.startswith(EE_PREFIX):
            async with self.pipeline.generate(request) as gen:
                yield gen
            return
        codec, tok = await self._codec(request.model)
        variant = ee_model_id(codec.variant_id)
        self.pipeline.n_layers(variant)  # UnknownModel naming the variant when no node serves it
        self.pipeline.tokenizers[variant] = tok
        enc_request = GenerationRequest(model=variant, prompt=request.prompt, messages=request.messages,
                                        params=request.params, mode=request.mode, consensus_k=request.consensus_k)
        async with self.pipeline.generate(enc_request) as gen:
            yield gen
        gen.summary.model = request.model
