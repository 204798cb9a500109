"""The etcd adapter against a real etcd: records, compare-and-swap, leases, fencing, mirrors and watch resume."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from fleetpy.devcluster import EtcdServer
from fleetpy.errors import Conflict, InvalidUnit, LeadershipLost, RegistryUnavailable
from fleetpy.keys import Keys
from fleetpy.model import DesiredState, Machine, MachineID, ScheduleEntry, UnitRecord, UnitState
from fleetpy.plan import Schedule, Unschedule
from fleetpy.registry.etcd import EtcdClient, parse_endpoints
from fleetpy.registry.ops import MAX_TXN_BYTES, MAX_TXN_OPS, Compacted
from fleetpy.registry.store import EtcdRegistry
from fleetpy.unit import UnitFile
from tests.support import etcd_server, wait_for

BODY = "[Service]\nExecStart=/bin/sleep 100\n"


def record(name: str, desired: DesiredState = DesiredState.INACTIVE, body: str = BODY) -> UnitRecord:
    unit = UnitFile.from_text(body)
    return UnitRecord(name, unit.hash, desired, unit.is_global, unit.xfleet)


@pytest.mark.parametrize(
    ("endpoints", "targets"),
    [
        pytest.param(["http://127.0.0.1:2379"], [("127.0.0.1:2379", False)], id="one endpoint becomes host:port"),
        pytest.param(["127.0.0.1:1", "https://a:2"], [("127.0.0.1:1", False), ("a:2", True)], id="one each"),
        pytest.param(["http://etcd"], [("etcd:2379", False)], id="the port defaults to 2379"),
        pytest.param(["https://[::1]:5/"], [("[::1]:5", True)], id="IPv6 in brackets, https means TLS"),
    ],
)
def test_endpoints_become_grpc_targets(endpoints: list[str], targets: list[tuple[str, bool]]) -> None:
    assert [(e.target, e.secure) for e in parse_endpoints(endpoints)] == targets


def test_a_malformed_endpoint_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid etcd endpoint"):
        parse_endpoints(["http://a:b:c"])


async def test_a_unit_is_created_once_with_its_body(registry: EtcdRegistry) -> None:
    assert await registry.create_unit(record("a.service"), BODY)
    assert not await registry.create_unit(record("a.service", DesiredState.LAUNCHED), BODY)
    view = await registry.get_unit("a.service")
    assert view is not None
    assert view.record == record("a.service")
    assert view.current == DesiredState.INACTIVE
    assert view.machine is None
    assert await registry.get_body(view.record.hash) == BODY
    assert await registry.get_unit("missing.service") is None


async def test_updates_are_compare_and_swap_on_the_units_revision(registry: EtcdRegistry) -> None:
    await registry.create_unit(record("cas.service"), BODY)
    view = await registry.get_unit("cas.service")
    assert view is not None
    await registry.set_desired(record("cas.service", DesiredState.LAUNCHED), view.revision)
    with pytest.raises(Conflict):
        await registry.set_desired(record("cas.service", DesiredState.LOADED), view.revision)
    other = "[Service]\nExecStart=/bin/sleep 5\n"
    newer = await registry.get_unit("cas.service")
    assert newer is not None
    await registry.replace_unit(record("cas.service", body=other), other, newer.revision)
    replaced = await registry.get_unit("cas.service")
    assert replaced is not None
    assert replaced.record.hash == UnitFile.from_text(other).hash
    assert replaced.record.desired == DesiredState.INACTIVE


async def test_destroy_removes_the_record_and_reports_a_missing_unit(registry: EtcdRegistry) -> None:
    await registry.create_unit(record("gone.service"), BODY)
    assert await registry.destroy_unit("gone.service")
    assert not await registry.destroy_unit("gone.service")
    assert await registry.list_units() == []


async def test_machines_live_on_their_lease_with_dynamic_metadata_merged(registry: EtcdRegistry) -> None:
    lease = await registry.grant_lease(5)
    await registry.register_machine(Machine(MachineID("m1"), "10.0.0.1", {"region": "eu", "disk": "ssd"}), lease)
    await registry.set_machine_metadata([(MachineID("m1"), "region", "us"), (MachineID("m1"), "disk", "")])
    (machine,) = await registry.list_machines()
    assert machine.metadata == {"region": "us"}
    assert await registry.machine_lease(MachineID("m1")) == lease
    assert await registry.keepalive_lease(lease) > 0
    await registry.revoke_lease(lease)
    assert await registry.list_machines() == []
    assert await registry.keepalive_lease(lease) == 0
    assert await registry.machine_lease(MachineID("m1")) is None


async def test_unit_states_vanish_with_the_machine_lease(registry: EtcdRegistry) -> None:
    lease = await registry.grant_lease(5)
    state = UnitState("s.service", MachineID("m1"), "loaded", "active", "running", "h", DesiredState.LAUNCHED)
    other = UnitState("t.service", MachineID("m1"), "loaded", "inactive", "dead", "h", DesiredState.LOADED)
    await registry.publish_states(MachineID("m1"), lease, [state, other], [])
    assert await registry.list_states() == [state, other]
    await registry.publish_states(MachineID("m1"), lease, [], ["t.service"])
    assert await registry.list_states(MachineID("m1")) == [state]
    await registry.revoke_lease(lease)
    assert await registry.list_states() == []


async def test_placements_and_states_make_the_current_state(registry: EtcdRegistry) -> None:
    rec = record("cur.service", DesiredState.LAUNCHED)
    await registry.create_unit(rec, BODY)
    lease = await registry.grant_lease(5)
    fence = await registry.campaign(MachineID("m1"), lease)
    assert fence is not None
    entry = ScheduleEntry("cur.service", MachineID("m1"), rec.hash, DesiredState.LAUNCHED)
    await registry.apply_fenced(registry.engine_ops(Schedule(entry, "test")), fence)
    view = await registry.get_unit("cur.service")
    assert view is not None
    assert view.machine == "m1"
    assert view.current == DesiredState.INACTIVE, "no state reported yet"
    state = UnitState("cur.service", MachineID("m1"), "loaded", "active", "running", rec.hash, DesiredState.LAUNCHED)
    await registry.publish_states(MachineID("m1"), lease, [state], [])
    view = await registry.get_unit("cur.service")
    assert view is not None
    assert view.current == DesiredState.LAUNCHED
    (listed,) = await registry.list_units()
    assert listed.current == DesiredState.LAUNCHED
    assert listed.machine == "m1"
    await registry.apply_fenced(registry.engine_ops(Unschedule(entry, "test")), fence)
    view = await registry.get_unit("cur.service")
    assert view is not None
    assert view.machine is None
    assert view.current == DesiredState.INACTIVE


async def test_one_campaign_wins_and_a_deposed_leader_cannot_write(registry: EtcdRegistry) -> None:
    first_lease = await registry.grant_lease(5)
    second_lease = await registry.grant_lease(5)
    fence = await registry.campaign(MachineID("a"), first_lease)
    assert fence is not None
    assert await registry.campaign(MachineID("b"), second_lease) is None
    assert await registry.leader() == ("a", fence)

    await registry.revoke_lease(first_lease)  # the leader dies: its key goes with its lease
    new_fence = await registry.campaign(MachineID("b"), second_lease)
    assert new_fence is not None
    assert new_fence != fence
    entry = ScheduleEntry("x.service", MachineID("b"), "h", DesiredState.LAUNCHED)
    with pytest.raises(LeadershipLost):
        await registry.apply_fenced(registry.engine_ops(Schedule(entry, "stale")), fence)
    assert await registry.list_units() == []
    _, kvs = await registry.client.get_prefix(registry.keys.schedule_all)
    assert kvs == [], "the stale leader's write must not land"
    await registry.apply_fenced(registry.engine_ops(Schedule(entry, "fresh")), new_fence)
    _, kvs = await registry.client.get_prefix(registry.keys.schedule_all)
    assert [kv.key for kv in kvs] == [registry.keys.schedule("b", "x.service")]


async def test_large_batches_are_split_at_etcds_transaction_limit(registry: EtcdRegistry) -> None:
    lease = await registry.grant_lease(5)
    fence = await registry.campaign(MachineID("m"), lease)
    assert fence is not None
    ops = [
        op
        for i in range(200)
        for op in registry.engine_ops(
            Schedule(ScheduleEntry(f"u{i}.service", MachineID("m"), "h", DesiredState.LAUNCHED), "")
        )
    ]
    before = await registry.client.status()
    revisions = await registry.apply_fenced(ops, fence)
    assert len(revisions) == 4  # 400 operations, 128 per transaction
    assert revisions[-1] - before == 4
    _, kvs = await registry.client.get_prefix(registry.keys.schedule_all)
    assert len(kvs) == 200


def sized_body(index: int, size: int) -> str:
    """A unit file of about ``size`` bytes, its own for each ``index`` (lines stay under fleet's 2,048 bytes)."""
    line = f"Environment=X={'x' * 1000}\n"
    return f"[Service]\nExecStart=/bin/sleep {index}\n" + line * (size // len(line))


@pytest.mark.parametrize(
    ("count", "size", "transactions"),
    [
        pytest.param(200, 100, 4, id="200 small units: 64 records and bodies per transaction"),
        pytest.param(64, 100, 1, id="64 units fill one transaction of 128 operations"),
        pytest.param(10, 300_000, 3, id="10 units of 300 KB: 4 per transaction, under etcd's request size"),
    ],
)
async def test_write_units_splits_at_etcds_limits_and_counts_its_transactions(
    registry: EtcdRegistry, count: int, size: int, transactions: int
) -> None:
    assert (MAX_TXN_OPS, MAX_TXN_BYTES // 300_000) == (128, 4)  # what the transaction counts rest on
    bodies = [sized_body(i, size) for i in range(count)]
    items = [(record(f"u{i}.service", body=body), body, 0) for i, body in enumerate(bodies)]
    assert await registry.write_units(items) == transactions
    _, kvs = await registry.client.get_prefix(registry.keys.units)
    assert len(kvs) == count
    assert len({kv.mod_revision for kv in kvs}) == transactions  # one revision per transaction
    assert {h: await registry.get_body(h) for h in {r.hash for r, _, _ in items}} == {
        r.hash: body for r, body, _ in items
    }


async def test_write_units_refuses_a_unit_too_large_for_one_request_before_writing_any(
    registry: EtcdRegistry,
) -> None:
    small = sized_body(0, 100)
    large = sized_body(1, MAX_TXN_BYTES + 2000)
    items = [(record("small.service", body=small), small, 0), (record("large.service", body=large), large, 0)]
    with pytest.raises(InvalidUnit, match=r"^unit large\.service is too large to store "):
        await registry.write_units(items)
    _, kvs = await registry.client.get_prefix(registry.keys.prefix + "/")
    assert kvs == []


async def test_a_mirror_follows_puts_and_deletes(registry: EtcdRegistry) -> None:
    prefix = registry.schedule_prefix(MachineID("m"))
    mirror = registry.mirror([prefix])
    key = registry.keys.schedule("m", "early.service")
    await registry.client.put(key, b'{"hash":"h","desired":"launched"}')
    task = asyncio.create_task(mirror.run())
    try:
        await asyncio.wait_for(mirror.loaded.wait(), 5)
        assert set(prefix.items) == {"early.service"}
        await registry.client.put(registry.keys.schedule("m", "late.service"), b'{"hash":"h","desired":"loaded"}')
        await registry.client.put(registry.keys.schedule("other", "elsewhere.service"), b'{"hash":"h","desired":"x"}')
        await registry.client.delete(key)

        async def caught_up() -> bool:
            return set(prefix.items) == {"late.service"}

        await wait_for(caught_up, timeout=5, what="the mirror to follow the watch")
        assert prefix.items["late.service"].desired == DesiredState.LOADED
    finally:
        task.cancel()


async def test_a_value_that_is_not_fleetpys_is_skipped_not_fatal(registry: EtcdRegistry) -> None:
    prefix = registry.units_prefix()
    await registry.client.put(registry.keys.unit("bad.service"), b"not json")
    await registry.create_unit(record("good.service"), BODY)
    await registry.mirror([prefix]).load()
    assert set(prefix.items) == {"good.service"}


async def test_a_watch_from_a_compacted_revision_says_so(registry: EtcdRegistry) -> None:
    key = registry.keys.unit("c.service")
    first = await registry.client.put(key, b"1")
    latest = await registry.client.put(key, b"2")
    compact = registry.client._member().compact  # the test needs etcd to compact; fleetpy never does
    await compact(latest)
    with pytest.raises(Compacted):
        async for _event in registry.client.watch(key, first):
            pass


async def test_a_watch_resumed_from_a_revision_delivers_what_was_written_since(registry: EtcdRegistry) -> None:
    # What a mirror relies on after its stream broke: a watch from the revision after the last one it saw gets
    # every change made meanwhile, in order, deletes included, and nothing from before.
    prefix = registry.keys.units
    seen = await registry.client.put(registry.keys.unit("seen.service"), b"0")
    missed = [
        await registry.client.put(registry.keys.unit("a.service"), b"1"),
        await registry.client.put(registry.keys.unit("b.service"), b"2"),
        await registry.client.put(registry.keys.unit("a.service"), b"3"),
    ]
    deleted = await registry.client.delete(registry.keys.unit("b.service"))
    events = []
    async for event in registry.client.watch(prefix, seen + 1):
        events.append((Keys.tail(event.key, prefix), event.deleted, event.value, event.revision))
        if len(events) == 4:
            break
    assert events == [
        ("a.service", False, b"1", missed[0]),
        ("b.service", False, b"2", missed[1]),
        ("a.service", False, b"3", missed[2]),
        ("b.service", True, b"", deleted),
    ]


@pytest.fixture
def own_etcd(workdir: str):  # type: ignore[no-untyped-def]
    with etcd_server(os.path.join(workdir, f"etcd-{uuid.uuid4().hex[:6]}")) as server:
        yield server


async def test_a_mirror_resumes_after_etcd_restarts_and_misses_nothing(own_etcd: EtcdServer) -> None:
    client = EtcdClient([own_etcd.endpoint], timeout=2)
    registry = EtcdRegistry(client, Keys("/resume"))
    prefix = registry.units_prefix()
    mirror = registry.mirror([prefix])
    task = asyncio.create_task(mirror.run())
    try:
        await asyncio.wait_for(mirror.loaded.wait(), 5)
        await registry.create_unit(record("before.service"), BODY)
        own_etcd.stop()
        with pytest.raises(RegistryUnavailable):
            await registry.create_unit(record("during.service"), BODY)
        own_etcd.start()
        await registry.create_unit(record("after.service"), BODY)

        async def caught_up() -> bool:
            return set(prefix.items) == {"before.service", "after.service"}

        await wait_for(caught_up, timeout=15, what="the mirror to resume its watch")
    finally:
        task.cancel()
        await client.close()
