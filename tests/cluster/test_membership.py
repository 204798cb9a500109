"""Machines that come and go: units leave a dead machine within agent TTL + engine interval; a machine that comes
back gets none of the units that moved away and stops its stale copies at once; a new machine receives the
global units and takes new placements by load. Checked on the hosts' own systemd.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.support import Cluster, Machine, etcd_server, running_units, systemd_at, wait_for, write_unit

AGENT_TTL = 5
ENGINE_INTERVAL = 5.0  # fleetpyd's default engine_reconcile_interval
LOOP = '[Service]\nExecStart=/bin/sh -c "while true; do sleep 1; done"\n'


@pytest.fixture(scope="module")
def membership_cluster(workdir: str) -> Iterator[Cluster]:
    name = uuid.uuid4().hex[:8]
    with etcd_server(os.path.join(workdir, f"etcd-{name}")) as etcd:
        cluster = Cluster(os.path.join(workdir, f"m-{name}"), etcd, machines=3, agent_ttl=AGENT_TTL)
        try:
            yield cluster
        finally:
            cluster.stop()


async def running_on(cluster: Cluster, names: list[str], hosts: list[Machine] | None = None) -> dict[str, list[str]]:
    """unit → names of the hosts whose systemd runs it (only units that run somewhere)."""
    result: dict[str, list[str]] = {}
    for machine in hosts if hosts is not None else cluster.machines:
        async with systemd_at(machine.bus) as systemd:
            for unit in await running_units(systemd, names):
                result.setdefault(unit, []).append(machine.name)
    return result


async def start_spread(cluster: Cluster, tmp_path, names: list[str]) -> dict[str, list[str]]:
    paths = [write_unit(str(tmp_path), n, LOOP) for n in names]
    cluster.ctl("start", "--no-block", *paths, check=True)

    async def all_running() -> dict[str, list[str]]:
        now = await running_on(cluster, names)
        return now if sorted(now) == sorted(names) and all(len(h) == 1 for h in now.values()) else {}

    return await wait_for(all_running, timeout=60, interval=0.3, what=f"{names} to run")


async def destroy(cluster: Cluster, names: list[str]) -> None:
    cluster.ctl("destroy", *names, check=True)

    async def gone() -> bool:
        return not await running_on(cluster, names)

    await wait_for(gone, timeout=60, interval=0.3, what=f"{names} to stop")


def busiest_follower(cluster: Cluster, placed: dict[str, list[str]], leader: str) -> Machine:
    """The machine running the most of ``placed`` that does not lead the engine."""
    candidates = [m for m in cluster.machines if m.id != leader]
    return max(candidates, key=lambda m: (sum(h == [m.name] for h in placed.values()), m.name))


async def test_units_leave_a_dead_machine_within_agent_ttl_and_engine_interval(
    membership_cluster: Cluster, tmp_path
) -> None:
    cluster = membership_cluster
    names = [f"mv-{i}.service" for i in range(1, 7)]
    placed = await start_spread(cluster, tmp_path, names)
    dead = busiest_follower(cluster, placed, await cluster.leader())
    moving = sorted(n for n, hosts in placed.items() if hosts == [dead.name])
    assert moving

    cluster.kill_host(dead)
    killed_at = time.monotonic()
    cluster.machines.remove(dead)

    async def moved() -> dict[str, list[str]]:
        now = await running_on(cluster, names)
        return now if all(len(now.get(n, [])) == 1 for n in names) else {}

    budget = AGENT_TTL + ENGINE_INTERVAL
    now = await wait_for(moved, timeout=budget + 20, interval=0.2, what="the dead machine's units to run elsewhere")
    elapsed = time.monotonic() - killed_at
    print(f"{len(moving)} units of the dead machine ran elsewhere {elapsed:.1f}s after it died")
    assert elapsed <= budget, f"took {elapsed:.1f}s, more than agent TTL + engine interval ({budget}s)"
    assert all(now[n] == placed[n] for n in names if n not in moving), "units of live machines did not move"


async def test_a_machine_that_comes_back_gets_nothing_back_and_stops_its_stale_copies(
    membership_cluster: Cluster,
) -> None:
    cluster = membership_cluster
    names = [f"mv-{i}.service" for i in range(1, 7)]
    placed = await running_on(cluster, names)
    away = busiest_follower(cluster, placed, await cluster.leader())
    moving = sorted(n for n, hosts in placed.items() if hosts == [away.name])
    assert moving
    others = [m for m in cluster.machines if m.id != away.id]

    pid = away.fleetpyd_pid()
    assert pid > 0
    os.kill(pid, signal.SIGSTOP)  # its systemd keeps running its units: only the agent is gone
    try:

        async def moved_away() -> bool:
            now = await running_on(cluster, moving, others)
            return sorted(now) == moving

        await wait_for(moved_away, timeout=AGENT_TTL + 30, interval=0.2, what="the units to run elsewhere")
        stale = await running_on(cluster, moving, [away])
        assert sorted(stale) == moving, "the frozen machine's systemd still runs its (now stale) copies"
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed_at = time.monotonic()

    async def stale_stopped() -> bool:
        return not await running_on(cluster, moving, [away])

    await wait_for(stale_stopped, timeout=10, interval=0.1, what="the machine to stop its stale copies")
    print(f"stale copies stopped {time.monotonic() - resumed_at:.1f}s after the machine came back")
    assert time.monotonic() - resumed_at <= 5

    async def back() -> bool:
        return away.id[:8] in cluster.ctl("list-machines").out

    await wait_for(back, timeout=30, what="the machine to register again")
    # Two engine intervals: nothing moves back, nothing runs twice.
    settled = await running_on(cluster, names)
    deadline = time.monotonic() + 2 * ENGINE_INTERVAL
    while time.monotonic() < deadline:
        assert await running_on(cluster, names) == settled
        await asyncio.sleep(0.5)
    assert all(away.name not in settled[n] for n in moving)


async def test_a_new_machine_receives_global_units_and_new_units_by_load(membership_cluster: Cluster, tmp_path) -> None:
    cluster = membership_cluster
    path = write_unit(str(tmp_path), "everywhere.service", LOOP + "\n[X-Fleet]\nGlobal=true\n")
    cluster.ctl("start", path, check=True)
    live = sorted(m.name for m in cluster.machines)

    async def everywhere(hosts: list[str]) -> bool:
        return (await running_on(cluster, ["everywhere.service"])).get("everywhere.service") == hosts

    await wait_for(lambda: everywhere(live), timeout=60, interval=0.3, what="the global unit on every machine")
    new = await cluster.add_host(4)
    await wait_for(
        lambda: everywhere(sorted([*live, new.name])), timeout=60, interval=0.3, what="the global unit on h4"
    )
    # New units, started one by one, each go to the least loaded machine (ties by machine ID), loads counted
    # on the hosts' own systemd; the new machine, which runs only the global unit, is among the first.
    known = ["everywhere.service", *[f"mv-{i}.service" for i in range(1, 7)]]
    fresh = [f"fresh-{i}.service" for i in range(1, 3)]
    for name in fresh:
        loads = {m.name: 0 for m in cluster.machines}
        for hosts in (await running_on(cluster, known)).values():
            for host in hosts:
                loads[host] += 1
        expected = min(cluster.machines, key=lambda m: (loads[m.name], m.id)).name
        placed = await start_spread(cluster, tmp_path, [name])
        assert placed == {name: [expected]}, (name, loads)
        known.append(name)
    assert [new.name] in (await running_on(cluster, fresh)).values()
    await destroy(cluster, known)
