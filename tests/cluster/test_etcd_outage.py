"""etcd goes away for 20 s: nothing that runs is stopped, and afterwards the cluster carries on by itself."""

from __future__ import annotations

import asyncio
import json
import time

from tests.cluster.test_end_to_end import LOOP, placed_machine
from tests.support import Cluster, main_pid, unit_status, wait_for, write_unit

OUTAGE = 20.0


async def test_units_keep_running_through_an_etcd_outage_and_the_cluster_recovers(cluster: Cluster, tmp_path) -> None:
    names = [f"outage-{i}.service" for i in range(3)]
    paths = [write_unit(str(tmp_path), n, LOOP.format(desc=n)) for n in names]
    cluster.ctl("start", *paths, check=True)
    where = {n: cluster.machine(await placed_machine(cluster, n)) for n in names}
    pids = {n: await main_pid(where[n].bus, n) for n in names}
    assert all(pids.values())

    cluster.etcd.stop()
    stopped_at = time.monotonic()
    try:
        while time.monotonic() - stopped_at < OUTAGE:
            for name in names:
                assert await main_pid(where[name].bus, name) == pids[name], f"{name} was restarted during the outage"
                assert (await unit_status(where[name].bus, name))[1] == "active"
            await asyncio.sleep(1)
    finally:
        cluster.etcd.start()

    for name in names:
        assert await main_pid(where[name].bus, name) == pids[name]

    async def machines_back() -> bool:
        result = cluster.ctl("list-machines", "--no-legend")
        return result.code == 0 and len(result.out.splitlines()) == len(cluster.machines)

    await wait_for(machines_back, timeout=30, what="every machine to be registered again")

    # New work is accepted and runs, with no manual step.
    path = write_unit(str(tmp_path), "outage-after.service", LOOP.format(desc="after the outage"))
    cluster.ctl("start", "--block-attempts", "15", path, check=True)
    machine = cluster.machine(await placed_machine(cluster, "outage-after.service"))
    assert (await unit_status(machine.bus, "outage-after.service"))[1] == "active"
    for name in names:
        assert await main_pid(where[name].bus, name) == pids[name], f"{name} was restarted after the outage"

    # The units from before are still launched where they ran, and their machines published their states again.
    async def converged() -> bool:
        files = json.loads(cluster.ctl("list-unit-files", "-o", "json", check=True).out)
        states = json.loads(cluster.ctl("list-units", "-o", "json", check=True).out)
        placed = {f["unit"]: (f["state"], f["target"]) for f in files}
        running = {(s["unit"], s["machine"]) for s in states if (s["active"], s["sub"]) == ("active", "running")}
        return all(placed.get(n) == ("launched", where[n].id) and (n, where[n].id) in running for n in names)

    await wait_for(converged, timeout=15, what="the units from before the outage to be launched and reported again")
    cluster.ctl("destroy", *names, "outage-after.service", check=True)
