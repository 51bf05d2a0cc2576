"""The checkpoint's tokenizer and chat template (runtime needs only ``tokenizers`` + ``jinja2``).

- ``Tokenizer.from_dir(model_dir)``: loads ``tokenizer.json``; the chat template comes from
  ``chat_template.jinja`` or ``tokenizer_config.json["chat_template"]`` (string, or a list of named
  templates: "default" is used); special tokens (bos/eos) from ``tokenizer_config.json``.
- ``encode(text, add_special_tokens=False) -> list[int]``, ``decode(ids, skip_special_tokens=True)``.
- ``apply_chat_template(messages, add_generation_prompt=True) -> str`` rendered with a sandboxed
  jinja2 environment as transformers does; ``encode_chat(messages) -> list[int]``.
- ``eos_token_ids``: the ids that end generation (config.json, generation_config.json, the template's
  eos token).
- ``IncrementalDecoder(tokenizer)``: ``push(token_id) -> str`` returns the new text for streaming,
  holding back incomplete UTF-8 / merged pieces until they are complete; ``flush()``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as TK

from swarmlm.models.errors import CheckpointError


def _load_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON: {exc}") from None


def _token_str(tok: Any) -> str | None:
    if isinstance(tok, dict):
        return tok.get("content")
    return tok


class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus the checkpoint's chat template and end-of-sequence ids."""

    def __init__(self, tk: Any, chat_template: str | None, special: dict[str, str | None],
                 eos_token_ids: list[int]) -> None:
        self.tk = tk
        self.chat_template = chat_template
        self.bos_token = special.get("bos_token")
        self.eos_token = special.get("eos_token")
        self.special = special
        self.eos_token_ids = eos_token_ids
        self._template = None

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "Tokenizer":
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        try:
            tk = TK.from_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot load tokenizer: {exc}") from None
        tcfg = _load_json(model_dir / "tokenizer_config.json")
        template = None
        jinja_file = model_dir / "chat_template.jinja"
        if jinja_file.exists():
            template = jinja_file.read_text()
        elif "chat_template" in tcfg:
            ct = tcfg["chat_template"]
            if isinstance(ct, list):
                named = {t.get("name"): t.get("template") for t in ct}
                ct = named.get("default") or next(iter(named.values()), None)
            template = ct
        else:
            ctj = _load_json(model_dir / "chat_template.json")
            template = ctj.get("chat_template")
        special = {k: _token_str(tcfg.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
        eos: list[int] = []

        def add(x: Any) -> None:
            for i in x if isinstance(x, list) else [x]:
                if isinstance(i, int) and i not in eos:
                    eos.append(i)

        add(_load_json(model_dir / "config.json").get("eos_token_id"))
        add(_load_json(model_dir / "generation_config.json").get("eos_token_id"))
        if special["eos_token"]:
            add(tk.token_to_id(special["eos_token"]))
        return cls(tk, template, special, eos)

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.tk.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tk.token_to_id(token)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True,
                            **extra: Any) -> str:
        if not self.chat_template:
            raise CheckpointError("this checkpoint has no chat template")
        if self._template is None:
            def raise_exception(message: str) -> None:
                raise TemplateError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
            env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
                x, indent=indent, ensure_ascii=ensure_ascii)
            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            self._template = env.from_string(self.chat_template)
        ctx = {k: v for k, v in self.special.items() if v is not None}
        ctx.update(extra)
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt, **ctx)

    def encode_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        # the rendered template already holds its special tokens (bos etc.): add none
        return self.encode(self.apply_chat_template(messages, add_generation_prompt), add_special_tokens=False)


class IncrementalDecoder:
    """Streaming detokenization: feed token ids, get the newly completed text."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        prefix = self.tok.decode(self.ids[self.prefix_offset:self.read_offset], self.skip)
        full = self.tok.decode(self.ids[self.prefix_offset:], self.skip)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            new = full[len(prefix):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return new
        return ""

    def flush(self) -> str:
        """Whatever is still held back (e.g. an incomplete character at the end)."""
        prefix = self.tok.decode(self.ids[self.prefix_offset:self.read_offset], self.skip)
        full = self.tok.decode(self.ids[self.prefix_offset:], self.skip)
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix):]
