"""fleetpy's operations on etcd: keys from ``fleetpy.keys``, values from ``codec``, over the ``ops.Client``.

``EtcdRegistry`` implements every protocol of ``registry.base``; each consumer (agent, engine, API) depends
only on the protocol that lists what it uses.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from fleetpy.errors import Conflict, InvalidUnit, LeadershipLost
from fleetpy.keys import Keys
from fleetpy.metrics import Metrics
from fleetpy.model import Machine, MachineID, ScheduleEntry, UnitRecord, UnitState, UnitView, merge_metadata
from fleetpy.plan import EngineAction, Unschedule
from fleetpy.registry import codec
from fleetpy.registry.mirror import Mirror, Prefix
from fleetpy.registry.ops import KV, MAX_TXN_BYTES, MAX_TXN_OPS, Client, Compare, Delete, Leases, Op, Put, Range
from fleetpy.registry.watched import WatchedStore
from fleetpy.relay import RelayRequest, decode_request, encode_request
from fleetpy.watchplan import WatchError

log = logging.getLogger(__name__)
IN_FLIGHT = 8  # transactions a batch write keeps in flight


P = ParamSpec("P")
R = TypeVar("R")


def _measured(
    kind: str,
) -> Callable[
    [Callable[Concatenate[EtcdRegistry, P], Coroutine[Any, Any, R]]],
    Callable[Concatenate[EtcdRegistry, P], Coroutine[Any, Any, R]],
]:
    """Count a unit operation in fleet's registry metrics (``get``, ``set``, ``get_all``)."""

    def wrap(
        method: Callable[Concatenate[EtcdRegistry, P], Coroutine[Any, Any, R]],
    ) -> Callable[Concatenate[EtcdRegistry, P], Coroutine[Any, Any, R]]:
        async def measured(self: EtcdRegistry, /, *args: P.args, **kwargs: P.kwargs) -> R:
            if self.metrics is None:
                return await method(self, *args, **kwargs)
            with self.metrics.registry_operation(kind):
                return await method(self, *args, **kwargs)

        measured.__name__, measured.__doc__ = method.__name__, method.__doc__
        return measured

    return wrap


def _decode_machine(_tail: str, raw: bytes) -> Machine:
    return codec.decode_machine(raw)


class EtcdRegistry(Leases):
    """fleetpy's operations on etcd. Implements every protocol of ``registry.base``."""

    def __init__(self, client: Client, keys: Keys, metrics: Metrics | None = None) -> None:
        self.client = client
        self.keys = keys
        self.metrics = metrics
        self._bodies: dict[str, str] = {}

    # ---------------------------------------------------------------- machines

    async def register_machine(self, machine: Machine, lease: int) -> None:
        await self.client.put(self.keys.machine(machine.id), codec.encode_machine(machine), lease)

    async def machine_lease(self, machine: MachineID) -> int | None:
        """The lease the machine's key hangs on, ``None`` if the machine is not registered."""
        kv = await self.client.get(self.keys.machine(machine))
        return kv.lease if kv is not None else None

    async def deregister_machine(self, machine: MachineID) -> None:
        await self.client.txn((), [Delete(self.keys.machine(machine)), Delete(self.keys.state(machine), prefix=True)])

    async def list_machines(self) -> list[Machine]:
        result = await self.client.read(
            Range(self.keys.machines, prefix=True), Range(self.keys.machine_meta_all, prefix=True)
        )
        overrides = self._overrides(result.ranges[1])
        machines = []
        for kv in result.ranges[0]:
            try:
                machine = codec.decode_machine(kv.value)
            except ValueError as exc:
                log.warning("ignoring %s: %s", kv.key, exc)
                continue
            machines.append(merge_metadata(machine, overrides.get(machine.id, {})))
        return sorted(machines, key=lambda m: m.id)

    def _overrides(self, kvs: Iterable[KV]) -> dict[str, dict[str, str]]:
        result: dict[str, dict[str, str]] = {}
        for kv in kvs:
            machine, key = Keys.split_pair(kv.key, self.keys.machine_meta_all)
            result.setdefault(machine, {})[key] = kv.value.decode()
        return result

    async def set_machine_metadata(self, changes: Sequence[tuple[MachineID, str, str]]) -> None:
        """Write dynamic metadata overrides (``""`` hides a configured key)."""
        ops: list[Op] = [Put(self.keys.machine_meta(m, k), v.encode()) for m, k, v in changes]
        for start in range(0, len(ops), MAX_TXN_OPS):
            await self.client.txn((), ops[start : start + MAX_TXN_OPS])

    # ---------------------------------------------------------------- units

    @_measured("get")
    async def get_body(self, unit_hash: str) -> str | None:
        """A unit body by hash (immutable: cached forever once read)."""
        body = self._bodies.get(unit_hash)
        if body is None:
            kv = await self.client.get(self.keys.body(unit_hash))
            if kv is None:
                return None
            body = kv.value.decode()
            self._bodies[unit_hash] = body
        return body

    async def get_bodies(self, hashes: Iterable[str]) -> dict[str, str]:
        """Bodies by hash, those not cached read in as few transactions as etcd allows."""
        wanted = [h for h in dict.fromkeys(hashes) if h not in self._bodies]
        for start in range(0, len(wanted), MAX_TXN_OPS):
            chunk = wanted[start : start + MAX_TXN_OPS]
            result = await self.client.read(*(Range(self.keys.body(h)) for h in chunk))
            for unit_hash, found in zip(chunk, result.ranges, strict=True):
                if found:
                    self._bodies[unit_hash] = found[0].value.decode()
        return {h: self._bodies[h] for h in hashes if h in self._bodies}

    @_measured("get")
    async def get_unit(self, name: str) -> UnitView | None:
        result = await self.client.read(
            Range(self.keys.unit(name)), Range(self.keys.placed(name), prefix=True), Range(self.keys.unplaced(name))
        )
        if not result.ranges[0]:
            return None
        kv = result.ranges[0][0]
        record = codec.decode_unit(name, kv.value)
        reason = result.ranges[2][0].value.decode(errors="replace") if result.ranges[2] else ""
        machines = [MachineID(Keys.tail(p.key, self.keys.placed(name))) for p in result.ranges[1]]
        placements: dict[MachineID, ScheduleEntry] = {}
        states: dict[MachineID, UnitState] = {}
        if machines:
            extra = await self.client.read(
                *[Range(self.keys.schedule(m, name)) for m in machines],
                *[Range(self.keys.state(m, name)) for m in machines],
            )
            for machine, found in zip(machines, extra.ranges[: len(machines)], strict=True):
                if found:
                    placements[machine] = codec.decode_entry(machine, name, found[0].value)
            for machine, found in zip(machines, extra.ranges[len(machines) :], strict=True):
                if found:
                    states[machine] = codec.decode_state(machine, name, found[0].value)
        return UnitView(record, placements, states, kv.mod_revision, reason)

    @_measured("get_all")
    async def list_units(self) -> list[UnitView]:
        result = await self.client.read(
            Range(self.keys.units, prefix=True),
            Range(self.keys.schedule_all, prefix=True),
            Range(self.keys.states_all, prefix=True),
            Range(self.keys.unplaced_all, prefix=True),
        )
        reasons = {
            Keys.tail(kv.key, self.keys.unplaced_all): kv.value.decode(errors="replace") for kv in result.ranges[3]
        }
        placements: dict[str, dict[MachineID, ScheduleEntry]] = {}
        for kv in result.ranges[1]:
            machine, unit = self.keys.schedule_key_parts(kv.key)
            try:
                placements.setdefault(unit, {})[machine] = codec.decode_entry(machine, unit, kv.value)
            except ValueError as exc:
                log.warning("ignoring %s: %s", kv.key, exc)
        states: dict[str, dict[MachineID, UnitState]] = {}
        for state in self._decode_states(result.ranges[2]):
            states.setdefault(state.unit, {})[state.machine] = state
        views = []
        for kv in result.ranges[0]:
            name = Keys.tail(kv.key, self.keys.units)
            try:
                record = codec.decode_unit(name, kv.value)
            except ValueError as exc:
                log.warning("ignoring %s: %s", kv.key, exc)
                continue
            views.append(
                UnitView(record, placements.get(name, {}), states.get(name, {}), kv.mod_revision, reasons.get(name, ""))
            )
        return sorted(views, key=lambda v: v.record.name)

    @_measured("set")
    async def create_unit(self, record: UnitRecord, body: str) -> bool:
        """Create the unit and its body; ``False`` (nothing written) if a unit of that name exists."""
        key = self.keys.unit(record.name)
        result = await self.client.txn(
            [Compare(key, "create", "==", 0)],
            [Put(self.keys.body(record.hash), body.encode()), Put(key, codec.encode_unit(record))],
        )
        return result.succeeded

    async def unit_records(self) -> dict[str, tuple[UnitRecord, int]]:
        """Every unit record with its mod revision (for compare-and-swap), without placements or states."""
        _, kvs = await self.client.get_prefix(self.keys.units)
        result = {}
        for kv in kvs:
            name = Keys.tail(kv.key, self.keys.units)
            try:
                result[name] = (codec.decode_unit(name, kv.value), kv.mod_revision)
            except ValueError as exc:
                log.warning("ignoring %s: %s", kv.key, exc)
        return result

    async def write_units(self, items: Sequence[tuple[UnitRecord, str, int]]) -> int:
        """Create or overwrite many units in as few transactions as etcd allows; return how many transactions.

        Each item is (record, body, revision): the unit's mod revision when it was read, 0 if it must not exist
        yet; an empty body means the body is already stored. ``InvalidUnit`` (nothing written) if a unit and its
        body are too large for one etcd request. ``Conflict`` if any unit changed meanwhile (the transactions
        before it have been applied).
        """
        per_txn = MAX_TXN_OPS // 2  # a unit needs its record and, at most, one body
        txns: list[tuple[list[Compare], dict[str, Put], list[Put]]] = []  # compares, bodies by key, records
        size = 0
        for record, body, revision in items:
            key = self.keys.unit(record.name)
            put = Put(key, codec.encode_unit(record))
            stored = Put(self.keys.body(record.hash), body.encode())
            cost = 2 * len(key) + len(put.value) + (len(stored.key) + len(stored.value) if body else 0)
            if cost > MAX_TXN_BYTES:
                raise InvalidUnit(f"unit {record.name} is too large to store ({cost} bytes, at most {MAX_TXN_BYTES})")
            if not txns or len(txns[-1][0]) == per_txn or size + cost > MAX_TXN_BYTES:
                txns.append(([], {}, []))
                size = 0
            compares, bodies, records = txns[-1]
            compares.append(Compare(key, "mod", "==", revision) if revision else Compare(key, "create", "==", 0))
            if body:
                bodies.setdefault(stored.key, stored)
            records.append(put)
            size += cost
        # A few transactions in flight at once: etcd commits them together (fewer round trips and fsyncs).
        for start in range(0, len(txns), IN_FLIGHT):
            results = await asyncio.gather(
                *(self.client.txn(c, [*b.values(), *r]) for c, b, r in txns[start : start + IN_FLIGHT])
            )
            if not all(r.succeeded for r in results):
                raise Conflict("units changed while the batch was being written; the parts before were written")
        return len(txns)

    @_measured("set")
    async def replace_unit(self, record: UnitRecord, body: str, revision: int) -> None:
        """Overwrite the unit if it is still at ``revision``; ``Conflict`` otherwise."""
        key = self.keys.unit(record.name)
        result = await self.client.txn(
            [Compare(key, "mod", "==", revision)],
            [Put(self.keys.body(record.hash), body.encode()), Put(key, codec.encode_unit(record))],
        )
        if not result.succeeded:
            raise Conflict(f"unit {record.name} changed while it was being replaced")

    @_measured("set")
    async def set_desired(self, record: UnitRecord, revision: int) -> None:
        key = self.keys.unit(record.name)
        result = await self.client.txn([Compare(key, "mod", "==", revision)], [Put(key, codec.encode_unit(record))])
        if not result.succeeded:
            raise Conflict(f"unit {record.name} changed while its desired state was being set")

    @_measured("set")
    async def destroy_unit(self, name: str) -> bool:
        """Delete the unit record; the engine unschedules it. ``False`` if there was no such unit."""
        key = self.keys.unit(name)
        result = await self.client.txn([Compare(key, "create", ">", 0)], [Delete(key)])
        return result.succeeded

    async def list_watch_errors(self) -> list[WatchError]:
        return await WatchedStore(self.client, self.keys).list_errors()

    # ---------------------------------------------------------------- unit states

    def _decode_states(self, kvs: Iterable[KV]) -> list[UnitState]:
        states = []
        for kv in kvs:
            machine, unit = Keys.split_pair(kv.key, self.keys.states_all)
            try:
                states.append(codec.decode_state(MachineID(machine), unit, kv.value))
            except ValueError as exc:
                log.warning("ignoring %s: %s", kv.key, exc)
        return states

    async def list_states(self, machine: MachineID | None = None) -> list[UnitState]:
        prefix = self.keys.state(machine) if machine else self.keys.states_all
        _, kvs = await self.client.get_prefix(prefix)
        return sorted(self._decode_states(kvs), key=lambda s: (s.unit, s.machine))

    async def publish_states(
        self, machine: MachineID, lease: int, states: Sequence[UnitState], removed: Sequence[str]
    ) -> None:
        ops: list[Op] = [Put(self.keys.state(machine, s.unit), codec.encode_state(s), lease) for s in states]
        ops += [Delete(self.keys.state(machine, unit)) for unit in removed]
        for start in range(0, len(ops), MAX_TXN_OPS):
            await self.client.txn((), ops[start : start + MAX_TXN_OPS])

    # ---------------------------------------------------------------- engine

    async def campaign(self, machine: MachineID, lease: int) -> int | None:
        """Become leader if nobody is; return the leader key's create revision (the fence) on success."""
        key = self.keys.leader
        result = await self.client.txn([Compare(key, "create", "==", 0)], [Put(key, machine.encode(), lease)])
        return result.revision if result.succeeded else None

    async def leader(self) -> tuple[MachineID, int] | None:
        kv = await self.client.get(self.keys.leader)
        return (MachineID(kv.value.decode()), kv.create_revision) if kv is not None else None

    async def wait_for_vacancy(self, timeout: float) -> None:
        """Return once no engine leads (the leader key is gone), or after ``timeout`` seconds."""
        key = self.keys.leader
        kv = await self.client.get(key)
        if kv is None:
            return
        try:
            async with asyncio.timeout(timeout):
                async for event in self.client.watch(key, kv.mod_revision + 1):
                    if event.key == key and event.deleted:
                        return
        except TimeoutError:
            return

    async def resign(self, fence: int) -> None:
        await self.client.txn([Compare(self.keys.leader, "create", "==", fence)], [Delete(self.keys.leader)])

    def engine_ops(self, action: EngineAction) -> list[Op]:
        entry = action.entry
        if isinstance(action, Unschedule):
            return [
                Delete(self.keys.schedule(entry.machine, entry.unit)),
                Delete(self.keys.placed(entry.unit, entry.machine)),
            ]
        return [
            Put(self.keys.schedule(entry.machine, entry.unit), codec.encode_entry(entry)),
            Put(self.keys.placed(entry.unit, entry.machine), b""),
        ]

    def reason_ops(self, reasons: Mapping[str, str], cleared: Iterable[str]) -> list[Op]:
        """Write why units are not placed (``P/unplaced/<unit>``), and delete the reasons of ``cleared``."""
        ops: list[Op] = [Put(self.keys.unplaced(unit), reason.encode()) for unit, reason in sorted(reasons.items())]
        return ops + [Delete(self.keys.unplaced(unit)) for unit in sorted(cleared)]

    async def apply_fenced(self, ops: Sequence[Op], fence: int) -> list[int]:
        """Write ``ops`` in as few transactions as etcd allows, each fenced on the leader key; return the
        revision of each transaction. ``LeadershipLost`` if the fence no longer holds."""
        revisions = []
        fence_compare = Compare(self.keys.leader, "create", "==", fence)
        for start in range(0, len(ops), MAX_TXN_OPS):
            result = await self.client.txn([fence_compare], ops[start : start + MAX_TXN_OPS])
            if not result.succeeded:
                raise LeadershipLost("the engine leader key changed: another engine leads now")
            revisions.append(result.revision)
        return revisions

    # ---------------------------------------------------------------- status and journal relay

    async def open_request(self, machine: MachineID, request: RelayRequest) -> tuple[str, int]:
        request_id = uuid.uuid4().hex
        revision = await self.client.put(self.keys.request(machine, request_id), encode_request(request), request.lease)
        return request_id, revision

    async def replies(self, request_id: str, start_revision: int) -> AsyncIterator[tuple[str, bytes]]:
        prefix = self.keys.replies(request_id)
        async for event in self.client.watch(prefix, start_revision):
            if not event.deleted:
                yield event.key[len(prefix) :], event.value

    def requests_prefix(self, machine: MachineID) -> Prefix[RelayRequest]:
        return Prefix(self.keys.request(machine), lambda _tail, raw: decode_request(raw))

    async def put_reply(self, request_id: str, tail: str, data: bytes, lease: int) -> None:
        await self.client.put(self.keys.replies(request_id, tail), data, lease)

    # ---------------------------------------------------------------- mirrors

    def schedule_prefix(self, machine: MachineID) -> Prefix[ScheduleEntry]:
        return Prefix(self.keys.schedule(machine), lambda unit, raw: codec.decode_entry(machine, unit, raw))

    def units_prefix(self) -> Prefix[UnitRecord]:
        return Prefix(self.keys.units, codec.decode_unit)

    def machines_prefix(self) -> Prefix[Machine]:
        return Prefix(self.keys.machines, _decode_machine)

    def machine_meta_prefix(self) -> Prefix[str]:
        return Prefix(self.keys.machine_meta_all, lambda _tail, raw: raw.decode())

    def all_schedule_prefix(self) -> Prefix[ScheduleEntry]:
        def decode(tail: str, raw: bytes) -> ScheduleEntry:
            machine, _, unit = tail.partition("/")
            return codec.decode_entry(MachineID(machine), unit, raw)

        return Prefix(self.keys.schedule_all, decode)

    def unplaced_prefix(self) -> Prefix[str]:
        return Prefix(self.keys.unplaced_all, lambda _tail, raw: raw.decode(errors="replace"))

    def states_presence_prefix(self) -> Prefix[None]:
        return Prefix(self.keys.states_all, lambda _tail, _raw: None)

    def mirror(self, prefixes: Sequence[Prefix[Any]]) -> Mirror:
        return Mirror(self.client, prefixes)
