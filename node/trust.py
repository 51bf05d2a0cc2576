"""The node's trust view: standing and convictions from its swarm state, and the hooks that use them.

``TrustView`` computes, from the signed records in the swarm state (``swarmlm.consensus.standing``
and ``swarmlm.consensus.verdicts``, both pure), every peer's standing as this node sees it -- its
anchors are itself, its bootstrap peers and the peers its operator trusts (``--trust``) -- and
caches it for ``refresh_s``. ``install`` makes the lower layers use it without importing it:

* the swarm state admits established owners into reserved room and keeps them longer
  (``admission.protected``), and ranks model announcements by their hosts' standing (``weigh``);
* the RPC server reserves buffer space and decode time for established peers (``trusted``), and
  the DHT record validator reserved storage (``protected``).

The route planner asks ``convicted()``: the peers that verdicts weighted by standing convict.
There is one view per state service (``TrustView.of``), shared by the node and its client.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable

from swarmlm.consensus.standing import DEFAULT_PARAMS, ROUND_KIND, WITNESS_KIND, StandingParams, standing_map
from swarmlm.consensus.verdicts import DEFAULT_CONVICTION, VERDICT_KIND, ConvictionParams, convicted

log = logging.getLogger("swarmlm.trust")


def anchors_from(bootstrap: Iterable[str]) -> set[str]:
    """The peer ids named by ``/p2p/<id>`` in bootstrap multiaddrs."""
    out = set()
    for addr in bootstrap:
        base, _, pid = str(addr).rpartition("/p2p/")
        if base and pid and "/" not in pid:
            out.add(pid)
    return out


class TrustView:
    def __init__(self, state_service: Any, me: str, anchors: Iterable[str] = (), *,
                 params: StandingParams = DEFAULT_PARAMS, conviction: ConvictionParams = DEFAULT_CONVICTION,
                 refresh_s: float = 2.0) -> None:
        self.state_service = state_service
        self.me = me
        self.anchors = set(anchors) | {me}
        self.params = params
        self.conviction = conviction
        self.refresh_s = refresh_s
        self._map: dict[str, float] = {}
        self._convicted: set[str] = set()
        self._at = -1e18

    @classmethod
    def of(cls, host: Any, state_service: Any, trusted: Iterable[str] = ()) -> "TrustView":
        """The view installed on ``state_service`` (created and installed on first use)."""
        view = getattr(state_service, "trust", None)
        if view is None:
            boot = getattr(getattr(host, "config", None), "bootstrap", None) or []
            view = cls(state_service, host.peer_id, anchors_from(boot) | set(trusted))
            view.install(host)
        else:
            view.anchors |= set(trusted)
        return view

    def install(self, host: Any) -> None:
        self.state_service.trust = self
        sync = getattr(self.state_service, "sync", None)
        if sync is not None:
            sync.admission.protected = self.is_established
            sync.state.weigh = self.standing
        rpc = getattr(host, "rpc_server", None)
        if rpc is not None:
            rpc.trusted = self.is_established
        validator = getattr(host, "validator", None)  # DHT records: reserved room for established owners
        if validator is not None:
            validator.protected = self.is_established

    # -- views ------------------------------------------------------------------------------
    def refresh(self, now: float | None = None, force: bool = False) -> None:
        mono = time.monotonic()
        if not force and mono - self._at < self.refresh_s:
            return
        self._at = mono
        now = time.time() if now is None else now
        state = self.state_service.state
        try:
            records = state.records(kind=WITNESS_KIND) + state.records(kind=ROUND_KIND)
            self._map = standing_map(records, now, self.anchors, self.params)
            self._convicted = convicted(state.records(kind=VERDICT_KIND), self._map, now, self.me, self.conviction)
        except Exception:  # a bug here must not take the node down: keep the last view
            log.exception("computing standing failed; keeping the previous view")

    def standing_map(self) -> dict[str, float]:
        self.refresh()
        return self._map

    def standing(self, peer: str) -> float:
        return self.standing_map().get(peer, 0.0)

    def is_established(self, peer: str) -> bool:
        return self.standing(peer) >= self.params.established

    def convicted(self) -> set[str]:
        """Peers verdicts with standing convict (routing avoids them swarm-wide)."""
        self.refresh()
        return self._convicted
