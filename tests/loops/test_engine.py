"""The engine loop against a real etcd: leader election, placement, reaction to machines that go away, fencing.

Machines are registered straight into etcd on leases the test controls (no systemd is needed to place units).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

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


async def test_an_unplaceable_unit_keeps_its_reason(registry: EtcdRegistry) -> None:
    await register(registry, "r1", metadata={"disk": "hdd"})
    engine = Engine(registry=registry, machine=MachineID("r1"), leader_ttl=2, interval=1)
    async with running(engine):
        await submit(registry, "ssd.service", body=BODY + "\n[X-Fleet]\nMachineMetadata=disk=ssd\n")

        async def reason() -> str:
            return engine.unplaced.get("ssd.service", "")

        text = await wait_for(reason, timeout=5, what="a reason for the unplaced unit")
        assert "MachineMetadata ruled out 1 of 1 machine" in text
        assert await placement(registry) == {}


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
