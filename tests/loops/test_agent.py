"""The agent loop against a real etcd and the real systemd of a sandbox host.

The agent runs in the test process and drives the host's systemd over its bus; the test writes schedule entries
into etcd the way the engine does and checks the host's systemd directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator

import pytest

from fleetpy.agent import Agent, MachineInUse, Presence, local_machine
from fleetpy.devcluster import SandboxHost
from fleetpy.model import DesiredState, MachineID, ScheduleEntry, UnitRecord
from fleetpy.registry import codec
from fleetpy.registry.store import EtcdRegistry
from fleetpy.systemd.dbus import DbusSystemd
from fleetpy.systemd.unitdir import UnitDirectory
from fleetpy.unit import UnitFile
from tests.support import systemd_at, wait_for

SLEEP = "[Service]\nExecStart=/bin/sleep {seconds}\n"


class Harness:
    def __init__(self, registry: EtcdRegistry, host: SandboxHost, units_dir: str, lease_file: str) -> None:
        self.registry = registry
        self.host = host
        self.units_dir = units_dir
        self.lease_file = lease_file
        self.machine = MachineID(f"agent-{uuid.uuid4().hex[:8]}")

    def new_agent(self) -> Agent:
        presence = Presence(self.registry, local_machine(self.machine, "", {}), ttl=5, lease_file=self.lease_file)
        return Agent(
            registry=self.registry,
            systemd=DbusSystemd(self.host.bus),
            unitdir=UnitDirectory(self.units_dir),
            presence=presence,
            interval=1.0,
        )

    @contextlib.asynccontextmanager
    async def running(self, agent: Agent) -> AsyncIterator[Agent]:
        await agent.presence.establish()
        tasks = [asyncio.create_task(agent.presence.run()), asyncio.create_task(agent.run())]
        try:
            yield agent
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await agent.systemd.close()

    async def place(self, name: str, body: str, desired: DesiredState) -> str:
        unit = UnitFile.from_text(body)
        record = UnitRecord(name, unit.hash, desired, False, ())
        view = await self.registry.get_unit(name)
        if view is None:
            await self.registry.create_unit(record, unit.text)
        else:
            await self.registry.replace_unit(record, unit.text, view.revision)
        entry = ScheduleEntry(name, self.machine, unit.hash, desired)
        await self.registry.client.put(self.registry.keys.schedule(self.machine, name), codec.encode_entry(entry))
        return unit.hash

    async def unplace(self, name: str) -> None:
        await self.registry.client.delete(self.registry.keys.schedule(self.machine, name))

    async def status(self, name: str) -> tuple[str, str, str]:
        async with systemd_at(self.host.bus) as systemd:
            status = (await systemd.statuses([name]))[name]
            return status.load, status.active, status.sub

    async def main_pid(self, name: str) -> int:
        async with systemd_at(self.host.bus) as systemd:
            return await systemd.main_pid(name)

    async def published(self, name: str) -> tuple[str, str] | None:
        for state in await self.registry.list_states(self.machine):
            if state.unit == name:
                return state.active, state.achieved.value
        return None


@pytest.fixture
def harness(registry: EtcdRegistry, host: SandboxHost, units_dir: str, tmp_path) -> Harness:
    return Harness(registry, host, units_dir, str(tmp_path / "lease"))


def unique() -> str:
    return f"ag-{uuid.uuid4().hex[:8]}.service"


async def test_the_agent_runs_stops_and_unloads_what_its_schedule_says(harness: Harness) -> None:
    name = unique()
    async with harness.running(harness.new_agent()):
        await harness.place(name, SLEEP.format(seconds=1000), DesiredState.LAUNCHED)

        async def running() -> bool:
            return await harness.status(name) == ("loaded", "active", "running")

        await wait_for(running, timeout=10, what="systemd to run the unit")
        await wait_for(
            lambda: _eq(harness.published(name), ("active", "launched")),
            timeout=5,
            what="the agent to publish the unit's state",
        )

        await harness.place(name, SLEEP.format(seconds=1000), DesiredState.LOADED)

        async def stopped() -> bool:
            return (await harness.status(name))[1] == "inactive"

        await wait_for(stopped, timeout=10, what="systemd to stop the unit")
        await wait_for(
            lambda: _eq(harness.published(name), ("inactive", "loaded")),
            timeout=5,
            what="the loaded state to be published",
        )
        assert os.path.exists(os.path.join(harness.units_dir, name))

        await harness.unplace(name)

        async def unloaded() -> bool:
            return not os.path.exists(os.path.join(harness.units_dir, name)) and (await harness.published(name)) is None

        await wait_for(unloaded, timeout=10, what="the unit to be unloaded and its state removed")
        assert (await harness.status(name))[0] == "not-found"


async def _eq(awaitable, expected) -> bool:  # type: ignore[no-untyped-def]
    return bool(await awaitable == expected)


async def test_a_new_hash_restarts_the_unit_with_the_new_body(harness: Harness) -> None:
    name = unique()
    async with harness.running(harness.new_agent()):
        await harness.place(name, SLEEP.format(seconds=1000), DesiredState.LAUNCHED)
        first = await wait_for(lambda: harness.main_pid(name), timeout=10, what="the unit to start")
        new_hash = await harness.place(name, SLEEP.format(seconds=2000), DesiredState.LAUNCHED)

        async def restarted() -> int:
            pid = await harness.main_pid(name)
            return pid if pid not in (0, first) else 0

        await wait_for(restarted, timeout=10, what="the unit to restart with its new body")
        with open(os.path.join(harness.units_dir, name)) as handle:
            assert "sleep 2000" in handle.read()
        await wait_for(lambda: _hash_published(harness, name, new_hash), timeout=5, what="the new hash in the state")
        await harness.unplace(name)


async def _hash_published(harness: Harness, name: str, expected: str) -> bool:
    return any(s.unit == name and s.hash == expected for s in await harness.registry.list_states(harness.machine))


async def test_a_restarted_agent_adopts_running_units_without_restarting_them(harness: Harness) -> None:
    name = unique()
    first = harness.new_agent()
    async with harness.running(first):
        await harness.place(name, SLEEP.format(seconds=1000), DesiredState.LAUNCHED)
        pid = await wait_for(lambda: harness.main_pid(name), timeout=10, what="the unit to start")
        lease = first.presence.lease
    # The first agent is gone without stopping anything (as after kill -9); a second one takes over.
    second = harness.new_agent()
    async with harness.running(second):
        await second.adopted.wait()
        assert second.presence.lease == lease, "the restarted agent takes its registration lease back"
        assert second.current[name].achieved == DesiredState.LAUNCHED
        for _ in range(10):
            assert await harness.main_pid(name) == pid
            await asyncio.sleep(0.2)
        assert second.reconciler.passes > 0
        await harness.unplace(name)
        await wait_for(
            lambda: _eq(harness.status(name), ("not-found", "inactive", "dead")),
            timeout=10,
            what="the unit to be unloaded",
        )


async def test_a_crash_of_the_unit_is_reported_from_systemds_signals(harness: Harness) -> None:
    name = unique()
    async with harness.running(harness.new_agent()):
        await harness.place(name, SLEEP.format(seconds=1000), DesiredState.LAUNCHED)
        await wait_for(lambda: harness.main_pid(name), timeout=10, what="the unit to start")
        await wait_for(lambda: _eq(harness.published(name), ("active", "launched")), timeout=5, what="active")
        async with systemd_at(harness.host.bus) as systemd:  # MainPID is a PID inside the host: let systemd kill
            await systemd._manager("KillUnit", "ssi", name, "main", int(signal.SIGKILL))
        await wait_for(
            lambda: _eq(harness.published(name), ("failed", "launched")), timeout=5, what="the failure to be published"
        )
        await harness.unplace(name)


async def test_a_second_daemon_with_a_machine_id_in_use_is_refused(harness: Harness, tmp_path) -> None:
    async with harness.running(harness.new_agent()):
        intruder = Presence(
            harness.registry, local_machine(harness.machine, "", {}), ttl=3, lease_file=str(tmp_path / "other-lease")
        )
        with pytest.raises(MachineInUse, match="already in use"):
            await intruder.establish()


class GatedSystemd(DbusSystemd):
    """The real systemd, but ``statuses`` waits at ``gate`` while one is set: the test decides what happens
    meanwhile."""

    def __init__(self, bus: str) -> None:
        super().__init__(bus)
        self.gate: asyncio.Event | None = None
        self.waiting = asyncio.Event()

    async def statuses(self, names):  # type: ignore[no-untyped-def]
        if self.gate is not None:
            self.waiting.set()
            await self.gate.wait()
        return await super().statuses(names)


async def test_a_unit_unloaded_while_its_state_is_being_read_is_published_as_removed(harness: Harness) -> None:
    # Found under load: the agent read self.current[name] after awaiting systemd, the reconciler had unloaded
    # the unit meanwhile, and the KeyError ended fleetpyd.
    name = unique()
    systemd = GatedSystemd(harness.host.bus)
    presence = Presence(harness.registry, local_machine(harness.machine, "", {}), ttl=5, lease_file=harness.lease_file)
    agent = Agent(
        registry=harness.registry, systemd=systemd, unitdir=UnitDirectory(harness.units_dir), presence=presence
    )
    await presence.establish()
    task = asyncio.create_task(agent.run())
    try:
        await harness.place(name, SLEEP.format(seconds=1000), DesiredState.LAUNCHED)
        await wait_for(lambda: _eq(harness.published(name), ("active", "launched")), timeout=10, what="published")
        systemd.gate = asyncio.Event()
        agent._dirty.add(name)  # a state change to publish: the report loop reads systemd and waits at the gate
        agent._report.set()
        await asyncio.wait_for(systemd.waiting.wait(), 5)
        await harness.unplace(name)

        async def unloaded() -> bool:
            return name not in agent.current

        await wait_for(unloaded, timeout=10, what="the reconciler to unload the unit")
        systemd.gate.set()
        await wait_for(lambda: _eq(harness.published(name), None), timeout=10, what="the state to be removed")
        assert not task.done(), task.exception() if task.done() else ""
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await systemd.close()
