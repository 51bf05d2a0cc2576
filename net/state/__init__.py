"""The swarm state: a signed, replicated CRDT and its sync engine, without I/O (sans-I/O, like h11).

Nothing in this package opens a socket, sleeps or reads a clock: callers pass ``now`` and get back
the bytes to send (docs/STATE.md). The one exception is ``store``, which reads and writes the
state file in the data dir (file I/O only). The libp2p side that carries the engine's messages is
``swarmlm.net.state_service``, outside this package; the in-memory transport for tests and
``swarmlm bench crdt`` is ``swarmlm.testnet.memnet``.

Modules (import them directly; this package imports nothing):

- ``schema``: typed views (``PeerEntry``, ``HostedRange``, ``ModelInfo``, ``Record``), their
  validation (``parse_*``, ``InvalidUpdate``, ``StateError``) and signed records (``make_record``);
- ``rights``: who may write a document: ``records_key``, ``doc_owner``, ``client_id_for``,
  ``check_author``;
- ``doc``: ``OwnerDoc``, one owner's pycrdt document with its checked updates and write methods;
- ``swarm``: ``SwarmState``, read-only views over every owner's documents (peers, registry, records);
- ``wire``: ``Limits``, decoded envelopes (``Entry``), per-document logs (``Replica``), codecs;
- ``sync``: ``StateSync``, the protocol engine; ``ingest`` (receiving envelopes) and ``own`` (our
  own documents across restarts) are its mixins;
- ``store``: ``StateStore``, the state file (atomic, checksummed, corrupt files moved aside).
"""
