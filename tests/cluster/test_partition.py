"""A host cut off from etcd: its fleetpyd is frozen with SIGSTOP, so it neither renews its machine lease nor
acts, while the units its systemd runs keep running (as they would behind a broken link). After the agent TTL
the engine places its units elsewhere; while the host is away they run twice, which no one can prevent. When
the host comes back (SIGCONT) it must stop its stale copies at once: no unit stays active on two machines for
longer than one agent pass after the heal, none is lost, and none moves back (no flapping). Every claim about
units is checked on the hosts' own systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

from fleetpy.client import Client
from fleetpy.config import Settings
from fleetpy.model import DesiredState
from fleetpy.unit import UnitFile
from tests.support import Cluster, Machine, systemds, wait_for, where_running

UNITS = 30
SLEEPER = UnitFile.from_text("[Service]\nExecStart=/bin/sleep infinity\n")
AGENT_PASS = Settings().agent_reconcile_interval  # the bound on how long a stale copy may outlive the heal


async def running_on(cluster: Cluster, names: list[str]) -> dict[str, list[str]]:
    """unit → the names of the machines whose systemd runs it."""
    async with systemds(cluster) as buses:
        return await where_running(buses, names)


async def test_a_host_cut_off_from_etcd_loses_its_units_and_stops_its_stale_copies_when_it_returns(
    cluster: Cluster, figure
) -> None:
    names = [f"part-{i:02d}.service" for i in range(UNITS)]
    client = Client(cluster.endpoint, timeout=30)
    frozen_pid = 0
    victim: Machine | None = None
    try:
        for name in names:
            await client.create_unit(name, SLEEPER.options, DesiredState.LAUNCHED)

        async def all_running_once() -> dict[str, list[str]]:
            seen = await running_on(cluster, names)
            return seen if sorted(seen) == names and all(len(m) == 1 for m in seen.values()) else {}

        before = await wait_for(all_running_once, timeout=120, interval=0.5, what="every unit running once")
        # The victim: a machine with units that does not lead the engine (the engine's failover is tested
        # elsewhere; here only the machine leaves).
        leader = await cluster.leader()
        loads = {m.name: sum(1 for hosts in before.values() if m.name in hosts) for m in cluster.machines}
        victim = max((m for m in cluster.machines if m.id != leader), key=lambda m: loads[m.name])
        stranded = sorted(unit for unit, hosts in before.items() if hosts == [victim.name])
        assert stranded, f"the victim runs no unit: {loads}"

        victim.hold_fleetpyd()
        frozen_pid = victim.fleetpyd_pid()
        assert frozen_pid > 0
        os.kill(frozen_pid, signal.SIGSTOP)
        cut = time.monotonic()

        async def moved() -> dict[str, list[str]]:
            seen = await running_on(cluster, stranded)
            elsewhere = {u: [m for m in seen.get(u, []) if m != victim.name] for u in stranded}
            return elsewhere if all(len(m) == 1 for m in elsewhere.values()) else {}

        elsewhere = await wait_for(
            moved, timeout=cluster.agent_ttl + 60, interval=0.25, what="the cut-off host's units to run elsewhere"
        )
        figure("units of the cut-off host", len(stranded))
        figure("its units running elsewhere after the cut (s)", time.monotonic() - cut)
        still_there = await running_on(cluster, stranded)
        assert all(victim.name in still_there.get(u, []) for u in stranded), "the cut-off host's copies kept running"

        # The heal: sample every host's systemd from the moment the host comes back.
        os.kill(frozen_pid, signal.SIGCONT)
        healed = time.monotonic()
        frozen_pid = 0
        last_double = healed
        samples = 0
        while time.monotonic() - healed < AGENT_PASS * 2 + 5:
            seen = await running_on(cluster, names)
            samples += 1
            if any(len(m) > 1 for m in seen.values()):
                last_double = time.monotonic()
            await asyncio.sleep(0.1)
        lasted = last_double - healed
        figure("samples after the heal", samples)
        figure("longest a unit stayed active on two machines after the heal (s)", lasted)
        assert lasted <= AGENT_PASS, f"stale copies ran for {lasted:.1f}s after the heal\n{cluster.host_logs()}"

        after = await all_running_once()
        lost = [u for u in names if u not in after]
        figure("units lost", len(lost))
        assert after, f"not every unit runs exactly once after the heal: {await running_on(cluster, names)}"
        moved_back = sorted(u for u in stranded if after[u] != elsewhere[u])
        figure("units that moved back to the returned host", len(moved_back))
        assert moved_back == [], "units moved back to the machine that returned"

        async def rejoined() -> bool:
            return any(m.id == victim.id for m in await client.machines())

        await wait_for(rejoined, timeout=30, what="the returned host to register again")
        units = {u.name: u for u in await client.units()}
        assert all(units[n].desired == "launched" for n in names), "every unit is still wanted launched"
    finally:
        if frozen_pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen_pid, signal.SIGCONT)
        if victim is not None:
            victim.release_fleetpyd()
        for name in names:
            with contextlib.suppress(Exception):
                await client.destroy(name)
        await client.close()
