"""Our py-libp2p 0.8.1 replacements and patches, in one place.

Everything that stands in for a py-libp2p component (a subclass overriding its methods) or assigns
into py-libp2p modules, classes, objects or their private attributes lives in this package, and
so does the one function that builds a py-libp2p host from them. Wire protocols are unchanged:
stock peers interoperate.

Modules (import them directly; this package imports nothing):

- ``build``: ``build_libp2p_host``, the py-libp2p host a ``SwarmHost`` runs (Noise only, Yamux,
  the fast path below unless turned off);
- ``fastnoise``: ``FastNoiseTransport`` / ``FastNoiseSession``, batched Noise reads and writes;
- ``fastyamux``: ``FastYamux`` / ``FastYamuxStream``, event-driven Yamux flow control;
- ``multiselect``: pipelined multistream-select (connections and streams) and ``open_lazy_stream``;
- ``patches``: ``install_fast_muxer`` (the fast path's installer) and every other assignment into
  py-libp2p (identify's agent version, the auto-connector, per-peer connection trimming, advertised
  addresses, DCUtR's relay close), plus the private upstream API ``net/nat.py`` and ``net/host.py``
  call;
- ``upstream``: the registry of the py-libp2p objects all of these replace or rely on, with a hash
  of their 0.8.1 source; ``tests/test_net_libp2p_patches.py`` fails loudly when an upgrade changes one.
"""
