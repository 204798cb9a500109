"""The watched directories' keys in etcd: the cluster as a watcher sees it, its actions as transactions, and
the errors it reports.

Each action of ``watchplan`` is one transaction that compares the unit's revision with the one the plan saw
(or its creation revision with 0), so two watchers, or a watcher and ``fleetpyctl``, never overwrite each
other: the loser's transaction changes nothing and its next pass looks again. A unit's marker is put only by
the transaction that creates the unit, so its mod revision is the unit's create revision for as long as that
unit lives, whoever destroys it later and however. The owner key and the errors are written on the watcher's
own lease, so they disappear with a watcher that is gone; claims are permanent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fleetpy.keys import Keys
from fleetpy.registry import codec
from fleetpy.registry.ops import MAX_TXN_OPS, Client, Compare, Delete, Leases, Op, Put, Range
from fleetpy.watchplan import (
    Claim,
    ClusterUnit,
    Create,
    Destroy,
    PutClaim,
    Replace,
    WatchAction,
    WatchError,
    WatchSnapshot,
)

log = logging.getLogger(__name__)


class WatchedStore(Leases):
    def __init__(self, client: Client, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    async def register_owner(self, owner: str, lease: int, machine: str, directory: str) -> None:
        """Say that ``owner``'s watcher runs, for as long as ``lease`` lives."""
        await self.client.put(self.keys.watched_owner(owner), codec.encode_owner(machine, directory), lease)

    async def snapshot(self) -> WatchSnapshot:
        """Units, markers and live claims, read at one revision."""
        keys = self.keys
        result = await self.client.read(
            Range(keys.units, prefix=True),
            Range(keys.watched_units, prefix=True, keys_only=True),
            Range(keys.watched_claims, prefix=True),
            Range(keys.watched_owners, prefix=True, keys_only=True),
        )
        markers = {Keys.tail(kv.key, keys.watched_units): kv.mod_revision for kv in result.ranges[1]}
        units = {}
        for kv in result.ranges[0]:
            name = Keys.tail(kv.key, keys.units)
            try:
                record = codec.decode_unit(name, kv.value)
            except ValueError as exc:
                log.warning("ignoring %s: %s", kv.key, exc)
                continue
            units[name] = ClusterUnit(record.hash, kv.mod_revision, kv.create_revision)
        claims: dict[str, dict[str, Claim]] = {}
        for kv in result.ranges[2]:
            unit, owner = Keys.split_pair(kv.key, keys.watched_claims)
            try:
                claims.setdefault(unit, {})[owner] = codec.decode_claim(owner, kv.value)
            except ValueError as exc:
                log.warning("ignoring %s: %s", kv.key, exc)
        live = frozenset(Keys.tail(kv.key, keys.watched_owners) for kv in result.ranges[3])
        return WatchSnapshot(units=units, markers=markers, claims=claims, live=live)

    async def apply(self, action: WatchAction, owner: str) -> bool:
        """Perform one action; ``False`` (nothing written) if the unit changed since the snapshot."""
        keys = self.keys
        if isinstance(action, Create | Replace):
            wanted = action.wanted
            record = wanted.record
            claim = Claim(owner, record.hash, wanted.file)
            ops: list[Op] = [
                Put(keys.body(record.hash), wanted.unit.text.encode()),
                Put(keys.unit(record.name), codec.encode_unit(record)),
                Put(keys.watched_claim(record.name, owner), codec.encode_claim(claim)),
            ]
            if isinstance(action, Create):
                compare = Compare(keys.unit(record.name), "create", "==", 0)
                ops.append(Put(keys.watched_unit(record.name), b""))  # at the unit's create revision
            else:  # the marker keeps the revision of the unit's creation
                compare = Compare(keys.unit(record.name), "mod", "==", action.revision)
            return (await self.client.txn([compare], ops)).succeeded
        if isinstance(action, PutClaim):
            unit_key = keys.unit(action.unit)
            put = Put(keys.watched_claim(action.unit, owner), codec.encode_claim(action.claim))
            return (await self.client.txn([Compare(unit_key, "mod", "==", action.revision)], [put])).succeeded
        if isinstance(action, Destroy):
            ops = [
                Delete(keys.unit(action.unit)),
                Delete(keys.watched_unit(action.unit)),
                Delete(keys.watched_claim(action.unit), prefix=True),
            ]
            compare = Compare(keys.unit(action.unit), "mod", "==", action.revision)
            return (await self.client.txn([compare], ops)).succeeded
        if action.forget:
            ops = [Delete(keys.watched_unit(action.unit)), Delete(keys.watched_claim(action.unit), prefix=True)]
        else:
            ops = [Delete(keys.watched_claim(action.unit, owner))]
        await self.client.txn((), ops)
        return True

    async def publish_errors(self, owner: str, lease: int, errors: Sequence[WatchError]) -> None:
        """Make ``errors`` the owner's errors (on its lease): put them, delete the owner's others."""
        prefix = self.keys.watched_error(owner)
        _, existing = await self.client.get_prefix(prefix, keys_only=True)
        current = {self.keys.watched_error(owner, e.file) for e in errors}
        ops: list[Op] = [Delete(kv.key) for kv in existing if kv.key not in current]
        ops += [Put(self.keys.watched_error(owner, e.file), codec.encode_watch_error(e), lease) for e in errors]
        for start in range(0, len(ops), MAX_TXN_OPS):
            await self.client.txn((), ops[start : start + MAX_TXN_OPS])

    async def list_errors(self) -> list[WatchError]:
        """Every watcher's errors, sorted by directory, file and owner."""
        _, kvs = await self.client.get_prefix(self.keys.watched_errors)
        errors = []
        for kv in kvs:
            try:
                errors.append(codec.decode_watch_error(kv.value))
            except ValueError as exc:
                log.warning("ignoring %s: %s", kv.key, exc)
        return sorted(errors, key=lambda e: (e.directory, e.file, e.owner))
