"""The properties behind the scale figures (make bench), checked without timing anything.

Hollow machines run the real agent code against an in-memory systemd simulation; etcd is real.
"""

from __future__ import annotations

import asyncio

from fleetpy.engine import Engine
from fleetpy.hollow import HollowFleet
from fleetpy.model import DesiredState, MachineID, UnitRecord
from fleetpy.registry.etcd import EtcdClient
from fleetpy.registry.store import EtcdRegistry
from fleetpy.systemd.hollow import HollowSystemd
from fleetpy.unit import UnitFile
from tests.support import wait_for


async def test_an_agent_hears_nothing_of_other_machines_schedules(
    client: EtcdClient, registry: EtcdRegistry, prefix: str, tmp_path
) -> None:
    fleet = HollowFleet(client=client, prefix=prefix, count=3, ttl=5, workdir=str(tmp_path), id_prefix="p")
    engine = Engine(registry=registry, machine=MachineID("control"), leader_ttl=2, interval=1)
    await fleet.start()
    engine_task = asyncio.create_task(engine.run())
    try:
        target, *others = sorted(fleet.machines)
        for i in range(30):
            unit = UnitFile.from_text(f"[Service]\nExecStart=/bin/sleep {i}\n\n[X-Fleet]\nMachineID={target}\n")
            record = UnitRecord(f"pinned{i}.service", unit.hash, DesiredState.LAUNCHED, False, unit.xfleet)
            assert await registry.create_unit(record, unit.text)

        async def all_running() -> bool:
            return len(fleet.machines[target].systemd.running) == 30

        await wait_for(all_running, timeout=15, what="the target machine to run its 30 units")
        assert fleet.machines[target].agent.watch_events >= 30
        for other in others:
            assert fleet.machines[other].agent.watch_events == 0
            assert fleet.machines[other].systemd.running == frozenset()
    finally:
        engine_task.cancel()
        await asyncio.gather(engine_task, return_exceptions=True)
        await fleet.stop()


async def test_hollow_systemd_follows_systemds_rules() -> None:
    changes: list[str] = []
    systemd = HollowSystemd(start_delay=0.05)
    systemd.on_change(changes.append)
    await systemd.link(["/somewhere/a.service"])
    assert (await systemd.statuses(["a.service"]))["a.service"].load == "not-found", "loaded only after a reload"
    await systemd.reload()
    await systemd.start("a.service")
    assert (await systemd.statuses(["a.service"]))["a.service"].active == "activating"

    async def running() -> bool:
        return (await systemd.statuses(["a.service"]))["a.service"].active == "active"

    await wait_for(running, timeout=2, what="the simulated start job to finish")
    await systemd.stop("a.service")
    await systemd.disable(["a.service"])
    await systemd.reload()
    assert (await systemd.statuses(["a.service"]))["a.service"].load == "not-found"
    assert changes.count("a.service") == 3  # activating, active, inactive
