"""A working cluster end to end: fleetpyctl against three sandbox hosts, checked through each host's own systemd.

Every assertion about a unit running (or not) asks the systemd of the host itself over its bus, never fleetpy.
"""

from __future__ import annotations

import asyncio
import os

from fleetpy.keys import Keys
from tests.support import HELLO, Cluster, main_pid, unit_status, wait_for, write_unit

LOOP = '[Unit]\nDescription={desc}\n\n[Service]\nExecStart=/bin/sh -c "while true; do sleep 1; done"\n'


async def placed_machine(cluster: Cluster, name: str) -> str:
    async def probe() -> str:
        for line in cluster.ctl("list-unit-files", "--full", "--no-legend", "--fields", "unit,target").out.splitlines():
            unit, target = line.split("\t", 1)
            target = target.strip()
            if unit.strip() == name and target not in ("-", "global"):
                return target.split("/")[0]
        return ""

    return await wait_for(probe, timeout=30, what=f"{name} to be placed")


async def test_start_runs_the_unit_in_the_hosts_systemd_then_stop_and_destroy(cluster: Cluster, tmp_path) -> None:
    path = write_unit(str(tmp_path), "e2e-a.service", LOOP.format(desc="end to end"))
    started = cluster.ctl("start", path, check=True)
    assert "Unit e2e-a.service inactive" in started.out
    assert "Unit e2e-a.service launched on " in started.out

    machine = cluster.machine(await placed_machine(cluster, "e2e-a.service"))
    assert await unit_status(machine.bus, "e2e-a.service") == ("loaded", "active", "running")
    assert os.path.exists(os.path.join(machine.units_dir, "e2e-a.service"))
    others = [m for m in cluster.machines if m.id != machine.id]
    for other in others:
        assert (await unit_status(other.bus, "e2e-a.service"))[1] == "inactive"

    stopped = cluster.ctl("stop", "e2e-a.service", check=True)
    assert "Unit e2e-a.service loaded on" in stopped.out
    assert "Successfully stopped units [e2e-a.service]." in stopped.err
    assert (await unit_status(machine.bus, "e2e-a.service"))[1:] == ("inactive", "dead")
    assert os.path.exists(os.path.join(machine.units_dir, "e2e-a.service")), "stop keeps the unit loaded"

    destroyed = cluster.ctl("destroy", "e2e-a.service", check=True)
    assert destroyed.out == "Destroyed e2e-a.service\n"

    async def file_gone() -> bool:
        return not os.path.exists(os.path.join(machine.units_dir, "e2e-a.service"))

    await wait_for(file_gone, timeout=15, what="the unit file to leave the host's unit directory")
    assert "e2e-a.service" not in cluster.ctl("list-unit-files").out


async def test_list_unit_files_shows_fleets_hash_for_hello_service(cluster: Cluster, tmp_path) -> None:
    path = write_unit(str(tmp_path), "hello.service", HELLO)
    cluster.ctl("submit", path, check=True)
    listing = cluster.ctl("list-unit-files", check=True).out
    assert listing.splitlines()[0] == "UNIT\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET"
    assert "hello.service\te55c0ae\tinactive\tinactive\t-" in listing
    assert cluster.ctl("cat", "hello.service", check=True).out == HELLO  # HELLO is already canonical
    cluster.ctl("destroy", "hello.service", check=True)


async def _etcd_contents(cluster: Cluster) -> list[tuple[str, int]]:
    """Every key of the cluster with the revision that last wrote it, but for what hosts keep writing by themselves
    (their machine records and unit states, on their leases)."""
    keys = Keys(cluster.prefix)
    live = (keys.machines, keys.states_all)
    client = cluster.registry_client()
    try:
        _, kvs = await client.get_prefix(f"{cluster.prefix}/")
        return sorted((kv.key, kv.mod_revision) for kv in kvs if not kv.key.startswith(live))
    finally:
        await client.close()


async def test_submitting_a_malformed_file_names_the_problem_and_writes_nothing(cluster: Cluster, tmp_path) -> None:
    before = await _etcd_contents(cluster)
    cases = [
        ("bad-line.service", "[Service]\nExecStart=/bin/true\nnonsense upon stilts\n", "nonsense upon stilts"),
        ("foo.servICE", "[Service]\nExecStart=/bin/true\n", 'invalid unit type: "servICE"'),
        ("long-line.service", "[Service]\nExecStart=/bin/echo " + "x" * 2048 + "\n", "line too long (max 2048 bytes)"),
    ]
    for name, text, problem in cases:
        result = cluster.ctl("submit", write_unit(str(tmp_path), name, text))
        assert result.code == 1, (name, result)
        assert problem in result.err, (name, result.err)
        assert result.out == ""
    assert await _etcd_contents(cluster) == before


async def test_killing_a_host_moves_its_unit_and_the_machine_leaves(cluster: Cluster, tmp_path) -> None:
    path = write_unit(str(tmp_path), "e2e-move.service", LOOP.format(desc="moves"))
    cluster.ctl("start", path, check=True)
    first = cluster.machine(await placed_machine(cluster, "e2e-move.service"))
    assert (await unit_status(first.bus, "e2e-move.service"))[1] == "active"

    cluster.kill_host(first)
    survivors = [m for m in cluster.machines if m.id != first.id]

    async def running_elsewhere() -> str:
        for machine in survivors:
            if (await unit_status(machine.bus, "e2e-move.service"))[1:] == ("active", "running"):
                return machine.id
        return ""

    await wait_for(
        running_elsewhere, timeout=cluster.agent_ttl + 5, interval=0.2, what="the unit to run on another host"
    )

    async def machine_gone() -> bool:
        return first.id[:8] not in cluster.ctl("list-machines", check=True).out

    await wait_for(machine_gone, timeout=5, what="the dead machine to leave list-machines")
    cluster.machines.remove(first)
    cluster.ctl("destroy", "e2e-move.service", check=True)


async def test_restarting_fleetpyd_adopts_running_units_without_restarting_them(cluster: Cluster, tmp_path) -> None:
    path = write_unit(str(tmp_path), "e2e-adopt.service", LOOP.format(desc="adopted"))
    cluster.ctl("start", path, check=True)
    machine = cluster.machine(await placed_machine(cluster, "e2e-adopt.service"))
    pid_before = await main_pid(machine.bus, "e2e-adopt.service")
    assert pid_before > 0
    daemon = machine.fleetpyd_pid()
    assert daemon > 0

    os.kill(daemon, 9)

    async def restarted() -> int:
        pid = machine.fleetpyd_pid()
        return pid if pid not in (0, daemon) else 0

    new_daemon = await wait_for(restarted, timeout=15, what="the host's init to restart fleetpyd")
    log = os.path.join(machine.dir, "fleetpyd.log")

    async def adopted() -> bool:
        with open(log) as handle:
            return "adopted e2e-adopt.service" in handle.read()

    await wait_for(adopted, timeout=15, what="the restarted agent to adopt the unit")
    # Watch the unit for a few seconds while the new agent reconciles: its main process must never change.
    for _ in range(10):
        assert await main_pid(machine.bus, "e2e-adopt.service") == pid_before
        await asyncio.sleep(0.3)
    result = cluster.ctl("start", "e2e-adopt.service", check=True)
    assert result.out == "", "an already launched unit is skipped silently"
    assert (await unit_status(machine.bus, "e2e-adopt.service"))[1:] == ("active", "running")
    assert machine.fleetpyd_pid() == new_daemon
    cluster.ctl("destroy", "e2e-adopt.service", check=True)
