"""Equivariant encryption on the client side: the ``Generator`` for pipeline generations whose
prompts and answers the swarm must not see.

The user asks for a base model (``builtin:smollm2-135m``); the client holds the key, tokenizes
locally, and the swarm only ever sees the encrypted variant ``ee:<variant id>`` and encrypted token
ids. ``EncryptedGenerator`` wraps a ``PipelineGenerator``: the encryption lives in a tokenizer
adapter (``EETokenizer``): ids are encrypted when text is encoded and decrypted before they are
decoded; the EOS ids the client stops on are the encrypted ones (the variant's config carries them
too, see docs/EE.md for what that reveals).

Which base model a served variant is of: the key file records it (``crypto.ee_keyfile``, written by
``swarmlm model encrypt``). A request may name the base model or the ``ee:`` variant itself; with no
model at all, ``default_base`` picks a fully served variant the key file knows. A variant the key
file does not record is refused with a message saying to give ``--model BASE``: plaintext ids are
never sent to an encrypted variant.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import trio

from swarmlm.crypto.ee_codec import EEClientCodec
from swarmlm.crypto.ee_keyfile import recorded_variants
from swarmlm.models.registry import resolve
from swarmlm.models.tokenizer import Tokenizer
from swarmlm.node.generation import BadRequest, GenerationRequest, ModelCard, UnknownModel
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
        self._served: set[str] = set()  # model ids the swarm served at the last look

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
        for vid, base in self.recorded().items():
            if base == base_model and ee_model_id(vid) in self._served:
                return ee_model_id(vid)
        codec, _ = self._codecs[base_model]
        return ee_model_id(codec.variant_id)

    def recorded(self) -> dict[str, str]:
        """variant id -> base model, from the key file (``swarmlm model encrypt`` records them)."""
        return recorded_variants(self.key_path)

    def base_of(self, model: str) -> str:
        """The base model of ``model`` (itself unless it is an ``ee:`` variant)."""
        if not model.startswith(EE_PREFIX):
            return model
        base = self.recorded().get(model[len(EE_PREFIX):])
        if base is None:
            raise BadRequest(f"{model} is not a variant your key file {self.key_path} records (made with "
                             "another key, or encrypted elsewhere): give the base model, e.g. --model "
                             "builtin:smollm2-135m")
        return base

    def default_base(self, cards: list[ModelCard]) -> str:
        """The base model of the first fully served variant the key file records."""
        recorded = self.recorded()
        served = [c.id for c in cards if c.id.startswith(EE_PREFIX) and c.coverage >= 1.0]
        for mid in served:
            if mid[len(EE_PREFIX):] in recorded:
                return recorded[mid[len(EE_PREFIX):]]
        if served:
            raise UnknownModel(f"the swarm serves encrypted variants ({', '.join(served)}), but your key file "
                               f"{self.key_path} records none of them: give --model BASE (the base model)")
        raise UnknownModel("no node serves an encrypted variant yet: make one with `swarmlm model encrypt BASE "
                           f"--key {self.key_path} --out DIR` and serve it with `swarmlm node run --model DIR`")

    async def list_models(self) -> list[ModelCard]:
        cards = await self.pipeline.list_models()
        self._served = {c.id for c in cards}
        return cards

    def plan(self, model: str, need_tokens: int, prefer: tuple[str, ...] = ()) -> Any:
        return self.pipeline.plan(self.variant_model(model) if model in self._codecs else model, need_tokens, prefer)

    @asynccontextmanager
    async def generate(self, request: GenerationRequest) -> AsyncIterator[Any]:
        base = self.base_of(request.model)
        await self.list_models()
        codec, tok = await self._codec(base)
        variant = request.model if request.model.startswith(EE_PREFIX) else self.variant_model(base)
        self.pipeline.n_layers(variant)  # UnknownModel naming the variant when no node serves it
        self.pipeline.tokenizers[variant] = tok
        enc_request = GenerationRequest(model=variant, prompt=request.prompt, messages=request.messages,
                                        params=request.params, mode=request.mode, consensus_k=request.consensus_k)
        async with self.pipeline.generate(enc_request) as gen:
            yield gen
        gen.summary.model = base
