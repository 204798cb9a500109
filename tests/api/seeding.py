"""Writing what the engine and the agents would write, straight into etcd through the registry.

The API and fleetpyctl tests run without agents and without an engine, so nothing is ever placed or reported
by itself. These helpers put machines, placements and unit states where the real components put them (same
registry methods, same fenced transactions), so that tests can look at placed units.
"""

from __future__ import annotations

from collections.abc import Mapping

from fleetpy.model import DesiredState, Machine, MachineID, ScheduleEntry, UnitState
from fleetpy.plan import Schedule, Unschedule
from fleetpy.registry.store import EtcdRegistry

TTL = 60  # longer than any test; keys live under the test's own prefix anyway
ENGINE = MachineID("test-engine")


async def add_machine(
    registry: EtcdRegistry, machine_id: str, public_ip: str = "", metadata: Mapping[str, str] | None = None
) -> int:
    """Register a machine on a lease of its own, as its agent does; the lease."""
    lease = await registry.grant_lease(TTL)
    await registry.register_machine(Machine(MachineID(machine_id), public_ip, dict(metadata or {})), lease)
    return lease


async def _fence(registry: EtcdRegistry) -> int:
    leader = await registry.leader()
    if leader is not None:
        return leader[1]
    fence = await registry.campaign(ENGINE, await registry.grant_lease(TTL))
    assert fence is not None, "another engine leads under this test's prefix"
    return fence


async def place(registry: EtcdRegistry, unit: str, machine_id: str) -> None:
    """Schedule ``unit`` (as it is now) on the machine, as the engine leader does."""
    view = await registry.get_unit(unit)
    assert view is not None, f"{unit} does not exist"
    entry = ScheduleEntry(unit, MachineID(machine_id), view.record.hash, view.record.desired)
    await registry.apply_fenced(registry.engine_ops(Schedule(entry, "placed by the test")), await _fence(registry))


async def unplace(registry: EtcdRegistry, unit: str, machine_id: str) -> None:
    """Remove the unit's placement on the machine, as the engine leader does."""
    view = await registry.get_unit(unit)
    assert view is not None, f"{unit} does not exist"
    entry = view.placements[MachineID(machine_id)]
    await registry.apply_fenced(registry.engine_ops(Unschedule(entry, "unplaced by the test")), await _fence(registry))


async def report(
    registry: EtcdRegistry,
    machine_id: str,
    unit: str,
    *,
    achieved: DesiredState = DesiredState.LAUNCHED,
    load: str = "loaded",
    active: str = "active",
    sub: str = "running",
    unit_hash: str | None = None,
) -> UnitState:
    """Publish a unit state as the machine's agent does (on the machine's lease); the state."""
    lease = await registry.machine_lease(MachineID(machine_id))
    if lease is None:
        lease = await registry.grant_lease(TTL)
    if unit_hash is None:
        view = await registry.get_unit(unit)
        assert view is not None, f"{unit} does not exist: give its hash"
        unit_hash = view.record.hash
    state = UnitState(unit, MachineID(machine_id), load, active, sub, unit_hash, achieved)
    await registry.publish_states(MachineID(machine_id), lease, [state], [])
    return state


async def explain(registry: EtcdRegistry, unit: str, reason: str) -> None:
    """Store why ``unit`` is not placed, as the engine leader does."""
    await registry.apply_fenced(registry.reason_ops({unit: reason}, []), await _fence(registry))
