"""The engine loop against a real etcd: leader election, placement, reaction to machines that go away, fencing.

Machines are registered straight into etcd on leases the test controls (no systemd is needed to place units).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable

from fleetpy.engine import Engine
from fleetpy.model import DesiredState, Machine, MachineID, UnitRecord
from fleetpy.registry.store import EtcdRegistry
from fleetpy.unit import UnitFile
from tests.support import wait_for

BODY = "[Service]\nExecStart=/bin/sleep 100\n"


@contextlib.asynccontextmanager
async def running(engine: Engine) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(engine.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def register(registry: EtcdRegistry, *machines: str, metadata: dict[str, str] | None = None) -> dict[str, int]:
    leases = {}
    for machine in machines:
        lease = await registry.grant_lease(30)
        await registry.register_machine(Machine(MachineID(machine), "", metadata or {}), lease)
        leases[machine] = lease
    return leases


async def submit(
    registry: EtcdRegistry, name: str, desired: DesiredState = DesiredState.LAUNCHED, body: str = BODY
) -> None:
    unit = UnitFile.from_text(body)
    view = await registry.get_unit(name)
    record = UnitRecord(name, unit.hash, desired, unit.is_global, unit.xfleet)
    if view is None:
        assert await registry.create_unit(record, unit.text)
    else:
        await registry.set_desired(record, view.revision)


async def placement(registry: EtcdRegistry) -> dict[str, list[str]]:
    """unit → machines, read from the schedule in etcd."""
    _, kvs = await registry.client.get_prefix(registry.keys.schedule_all)
    result: dict[str, list[str]] = {}
    for kv in kvs:
        machine, unit = registry.keys.schedule_key_parts(kv.key)
        result.setdefault(unit, []).append(machine)
    return {unit: sorted(machines) for unit, machines in result.items()}


async def wait_placement(registry: EtcdRegistry, expected: dict[str, list[str]], timeout: float = 5) -> None:
    async def probe() -> bool:
        return await placement(registry) == expected

    try:
        await wait_for(probe, timeout=timeout, what=f"placement {expected}")
    except AssertionError:
        raise AssertionError(f"placement is {await placement(registry)}, expected {expected}") from None


async def test_units_go_to_the_least_loaded_machine_ties_by_id(registry: EtcdRegistry) -> None:
    await register(registry, "m1", "m2", "m3")
    engine = Engine(registry=registry, machine=MachineID("m1"), leader_ttl=2, interval=1)
    async with running(engine):
        expected: dict[str, list[str]] = {}
        # FLEET-SPEC §3.6: hello, hello@1, hello@2, goodbye started one after another go to machines 1, 2, 3, 1.
        for name, machine in [("hello", "m1"), ("hello@1", "m2"), ("hello@2", "m3"), ("goodbye", "m1")]:
            await submit(registry, f"{name}.service")
            expected[f"{name}.service"] = [machine]
            await wait_placement(registry, expected)
        assert engine.leading.is_set()
        assert (await registry.leader()) is not None


async def test_units_move_off_a_machine_that_goes_away_and_inactive_units_are_unplaced(
    registry: EtcdRegistry,
) -> None:
    leases = await register(registry, "a", "b")
    engine = Engine(registry=registry, machine=MachineID("a"), leader_ttl=2, interval=1)
    async with running(engine):
        await submit(registry, "x.service")
        await submit(registry, "y.service")
        await wait_placement(registry, {"x.service": ["a"], "y.service": ["b"]})
        await registry.revoke_lease(leases["a"])  # machine a is gone
        await wait_placement(registry, {"x.service": ["b"], "y.service": ["b"]})
        await submit(registry, "x.service", DesiredState.INACTIVE)
        await wait_placement(registry, {"y.service": ["b"]})
        assert await registry.destroy_unit("y.service")
        await wait_placement(registry, {})


async def test_global_units_reach_every_matching_machine_including_late_ones(registry: EtcdRegistry) -> None:
    await register(registry, "g1", metadata={"role": "web"})
    await register(registry, "g2", metadata={"role": "db"})
    engine = Engine(registry=registry, machine=MachineID("g1"), leader_ttl=2, interval=1)
    body = BODY + "\n[X-Fleet]\nGlobal=true\nMachineMetadata=role=web\n"
    async with running(engine):
        await submit(registry, "every.service", body=body)
        await wait_placement(registry, {"every.service": ["g1"]})
        await register(registry, "g3", metadata={"role": "web"})
        await wait_placement(registry, {"every.service": ["g1", "g3"]})


async def stored_reason(registry: EtcdRegistry, unit: str) -> tuple[str, int]:
    """The reason stored for ``unit`` and its mod revision (``("", 0)`` when there is none)."""
    kv = await registry.client.get(registry.keys.unplaced(unit))
    return (kv.value.decode(), kv.mod_revision) if kv is not None else ("", 0)


async def test_an_unplaceable_unit_keeps_its_reason_in_etcd_until_it_is_placed(registry: EtcdRegistry) -> None:
    await register(registry, "r1", metadata={"disk": "hdd"})
    engine = Engine(registry=registry, machine=MachineID("r1"), leader_ttl=2, interval=1)
    async with running(engine):
        await submit(registry, "ssd.service", body=BODY + "\n[X-Fleet]\nMachineMetadata=disk=ssd\n")

        async def reason() -> str:
            return engine.unplaced.get("ssd.service", "")

        text = await wait_for(reason, timeout=5, what="a reason for the unplaced unit")
        assert text == (
            "no machine can run it: MachineMetadata ruled out 1 of 1 machine (local Machine metadata insufficient)"
        )
        assert await placement(registry) == {}

        async def stored() -> tuple[str, int]:
            return await stored_reason(registry, "ssd.service")

        assert (await wait_for(stored, timeout=5, what="the reason in etcd"))[0] == text
        view = await registry.get_unit("ssd.service")
        assert view is not None
        assert view.reason == text
        assert [v.reason for v in await registry.list_units()] == [text]

        # Passes that change nothing for the unit do not write its reason again.
        _, revision = await stored()
        await submit(registry, "other.service")
        await wait_placement(registry, {"other.service": ["r1"]})
        for _ in range(2):  # two more passes, at least one of them periodic
            before = engine.last_plan

            async def another_pass(before: object = before) -> bool:
                return engine.last_plan is not before

            await wait_for(another_pass, timeout=5, what="another engine pass")
        assert await stored() == (text, revision)

        # The reason changes with the cluster, and goes once the unit is placed.
        await register(registry, "r2", metadata={"disk": "hdd"})
        await wait_for(
            lambda: _has(stored(), "ruled out 2 of 2 machines"), timeout=5, what="the reason to count 2 machines"
        )
        await register(registry, "r3", metadata={"disk": "ssd"})
        await wait_placement(registry, {"other.service": ["r1"], "ssd.service": ["r3"]})

        async def cleared() -> bool:
            return await stored() == ("", 0)

        await wait_for(cleared, timeout=5, what="the reason to be deleted once the unit is placed")


async def _has(reason: Awaitable[tuple[str, int]], text: str) -> bool:
    return text in (await reason)[0]


async def test_the_reason_of_a_destroyed_or_stopped_unit_is_deleted(registry: EtcdRegistry) -> None:
    await register(registry, "d1")
    engine = Engine(registry=registry, machine=MachineID("d1"), leader_ttl=2, interval=1)
    pinned = BODY + "\n[X-Fleet]\nMachineID=nowhere\n"
    async with running(engine):
        await submit(registry, "gone.service", body=pinned)
        await submit(registry, "stopped.service", body=pinned)

        async def both_stored() -> bool:
            return all([(await stored_reason(registry, u))[0] for u in ("gone.service", "stopped.service")])

        await wait_for(both_stored, timeout=5, what="reasons for both units")
        assert await registry.destroy_unit("gone.service")
        await submit(registry, "stopped.service", DesiredState.INACTIVE, body=pinned)

        async def none_stored() -> bool:
            _, kvs = await registry.client.get_prefix(registry.keys.unplaced_all)
            return not kvs

        await wait_for(none_stored, timeout=5, what="the reasons to be deleted")
        assert engine.unplaced == {}


async def test_a_second_engine_takes_over_when_the_leader_dies_and_the_old_one_cannot_write(
    registry: EtcdRegistry,
) -> None:
    await register(registry, "e1", "e2")
    first = Engine(registry=registry, machine=MachineID("e1"), leader_ttl=2, interval=1)
    second = Engine(registry=registry, machine=MachineID("e2"), leader_ttl=2, interval=1)
    async with running(first):
        await asyncio.wait_for(first.leading.wait(), 5)
        async with running(second):
            await submit(registry, "one.service")
            await wait_placement(registry, {"one.service": ["e1"]})
            assert not second.leading.is_set()
            old_fence = first.fence
            assert old_fence is not None
            # The leader's lease is revoked, as if it had died: its key goes, the second engine campaigns.
            holder = await registry.client.get(registry.keys.leader)
            assert holder is not None
            loop = asyncio.get_running_loop()
            lost_at = loop.time()
            await registry.revoke_lease(holder.lease)
            await asyncio.wait_for(second.leading.wait(), 5)
            assert loop.time() - lost_at < second.leader_ttl + 1
            await submit(registry, "two.service")
            await wait_placement(registry, {"one.service": ["e1"], "two.service": ["e2"]})
            assert second.fence is not None
            assert second.fence != old_fence
            assert (await registry.leader()) == ("e2", second.fence)

            async def stepped_down() -> bool:
                return not first.leading.is_set()

            await wait_for(stepped_down, timeout=5, what="the old leader to notice it lost its lease")


async def test_dynamic_metadata_moves_units_whose_requirements_it_changes(registry: EtcdRegistry) -> None:
    await register(registry, "k1", "k2", metadata={"role": "db"})
    engine = Engine(registry=registry, machine=MachineID("k1"), leader_ttl=2, interval=5)
    async with running(engine):
        await submit(registry, "web.service", body=BODY + "\n[X-Fleet]\nMachineMetadata=role=web\n")
        await submit(registry, "any.service")
        await wait_placement(registry, {"any.service": ["k1"]})
        await registry.set_machine_metadata([(MachineID("k2"), "role", "web")])
        await wait_placement(registry, {"any.service": ["k1"], "web.service": ["k2"]})
        # k2's role is removed (the empty value hides its configured role=db too), k1 becomes a web machine
        await registry.set_machine_metadata([(MachineID("k2"), "role", ""), (MachineID("k1"), "role", "web")])
        await wait_placement(registry, {"any.service": ["k1"], "web.service": ["k1"]})
