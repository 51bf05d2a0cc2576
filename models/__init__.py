"""swarmlm.models: what every node computes with. Pure torch; no sockets, never imports node/net.

Modules (import them directly; this package imports nothing heavy):

- ``registry``: ``resolve(spec) -> Path`` for ``builtin:tiny``, ``builtin:smollm2-135m`` or a checkpoint
  directory; ``cache_dir()`` (``$SWARMLM_CACHE_DIR`` or ``~/.cache/swarmlm``); ``list_models()``,
  ``model_info(spec, dtype, shards)``, ``shard_bytes(cfg, start, end, dtype)``.
- ``shard``: ``load_shard(model_dir, start, end, dtype="fp32") -> Shard``; ``Shard.forward(x, session,
  positions)``, ``Shard.forward_batch([(session, x, positions), ...])``, ``Shard.cache_layout()``,
  ``Shard.new_session(max_length)``.
- ``kvcache``: ``CacheLayout``, ``Session`` (``length``, ``truncate``), ``KVCacheManager(layout,
  budget_tokens, idle_timeout_s)`` with ``open/get/close/expire_idle/used_tokens/free_tokens``.
- ``config``: ``ModelConfig.from_dir / from_dict`` (strict; Llama, Mistral, Qwen2, SmolLM2).
- ``loading``: safetensors reading of one shard's tensors; ``parse_dtype``.
- ``tokenizer``: ``Tokenizer.from_dir`` (encode/decode/apply_chat_template/encode_chat/eos_token_ids),
  ``IncrementalDecoder`` for streaming.
- ``sampling``: ``SamplingParams``, ``Sampler`` (seeded, deterministic).
- ``generate``: ``generate`` / ``generate_stream`` over a list of shards, ``load_chain``.
- ``partition``: ``split_layers(n, k)``, the even split of a model's layers into shards.
- ``tiny``, ``convert``: building the two builtins.
- ``errors``: ``ModelError`` and subclasses (``CacheBudgetExceeded``, ``SessionError``,
  ``CheckpointError``, ``UnsupportedModelError``, ``UnknownModelError``), all ``SwarmError``.
"""
