"""Who may add a new owner to a node's swarm state, and which owners go first when room runs out.

New identities are free, so a new owner (a peer id the node holds no document of) costs its
*sender* -- the neighbour that handed the envelope over, grouped by the IP prefix of its
connection (``group_of``, set by the libp2p service) -- a token of a rate-limited bucket
(``Limits.new_owner_rate`` / ``new_owner_burst`` per group). A neighbour introducing itself, an
owner the node already holds the other document of, an envelope replayed from our own file
(no sender) and a *protected* owner (``protected``: the node's standing says it is established)
pass without a token. Of ``max_owners`` documents, ``reserved_owners`` can only hold protected
owners, so a flood of new identities can never push out established peers; when the table is
full, a protected newcomer evicts the unprotected owner that has gone longest without a
heartbeat. Pure policy: the sync engine asks, nothing here touches documents.
"""

from __future__ import annotations

from typing import Callable

from swarmlm.net.limits import RateTable
from swarmlm.net.state.rights import doc_owner, records_key
from swarmlm.net.state.wire import Limits


class Admission:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.rates = RateTable(limits.new_owner_rate, limits.new_owner_burst, max_keys=1 << 14)
        self.protected: Callable[[str], bool] = lambda owner: False
        self.group_of: Callable[[str], str] = lambda peer: peer

    def check(self, sender: str | None, key: str, held: set[str] | dict, count: int, now: float) -> str | None:
        """None if the document ``key`` may be added now, else the rejection reason
        (``"too_many_owners"``: no room for an unprotected owner; ``"admission"``: the sender's
        group is over its rate). ``held``: the document keys the node holds; ``count``: how many."""
        owner = doc_owner(key)
        protected = self.protected(owner)
        lim = self.limits
        if count >= lim.max_owners or (not protected and count >= lim.max_owners - lim.reserved_owners):
            return "too_many_owners"
        if protected or sender is None or owner == sender:
            return None
        if owner in held or records_key(owner) in held:  # the other document of a known owner
            return None
        if not self.rates.try_take(self.group_of(sender), 1.0, now):
            return "admission"
        return None
