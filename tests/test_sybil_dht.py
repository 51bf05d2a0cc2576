"""Sybil floods of the DHT record store over real libp2p (PUT_VALUE from an attacker host holding
many free identities, each record validly signed by its owner): a node stores at most a few
records per owner and a bounded number in total, and an established owner still finds room
(the reserved keys); an honest record stays retrievable (docs/RELIABILITY.md, "Trust model")."""

from __future__ import annotations

import trio

from swarmlm.crypto.identity import Identity
from swarmlm.net.dht_records import SignedRecord, SignedRecordValidator, record_key
from swarmlm.testnet.sybil import light_host


async def test_record_floods_are_bounded_per_owner_and_in_total_and_keep_room_for_the_established():
    victim, attacker, honest = light_host(), light_host(), light_host()
    victim.validator = SignedRecordValidator(max_names_per_owner=2, max_keys=24, reserved=8)
    victim.validator.protected = lambda owner: owner == honest.peer_id  # what node/trust.py sets
    attacker.validator = SignedRecordValidator(max_names_per_owner=1000, max_keys=1 << 20)  # stores its own
    async with victim.running(), attacker.running(), honest.running():
        await attacker.connect(victim.addrs[0])
        await honest.connect(victim.addrs[0])
        sybils = [Identity.generate() for _ in range(16)]
        with trio.fail_after(60):
            for ident in sybils:
                for name in ("a", "b", "c"):  # one name over the per-owner quota
                    raw = SignedRecord.make(ident, name, b"x" * 512, 1)
                    await attacker._dht.put_value(record_key(ident.peer_id, name), raw)
        v = victim.validator
        assert v.rejected > 0
        assert v.stored == v.max_keys - v.reserved  # the flood filled the unreserved room, no more
        per_owner = {}
        for key in v._keys:
            per_owner[key.split("/")[2]] = per_owner.get(key.split("/")[2], 0) + 1
        assert per_owner and max(per_owner.values()) <= 2
        with trio.fail_after(30):
            await honest.put_record("hosting", b"layers 0-6")
        assert record_key(honest.peer_id, "hosting") in v._keys  # stored in the reserved room
        assert await attacker.get_record(honest.peer_id, "hosting") == b"layers 0-6"
