"""Every [X-Fleet] rule on sandbox hosts with real systemd, each claim checked on the hosts' own systemd.

The cluster: h1 ``role=web,disk=ssd``, h2 ``role=web``, h3 ``role=db``. Tests clean up their units; the last one
kills a host, an earlier one adds a host.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.support import Cluster, Machine, etcd_server, running_units, systemd_at, wait_for, write_unit

LOOP = '[Service]\nExecStart=/bin/sh -c "while true; do sleep 1; done"\n'


@pytest.fixture(scope="module")
def rules_cluster(workdir: str) -> Iterator[Cluster]:
    name = uuid.uuid4().hex[:8]
    with etcd_server(os.path.join(workdir, f"etcd-{name}")) as etcd:
        cluster = Cluster(
            os.path.join(workdir, f"r-{name}"),
            etcd,
            machines=3,
            agent_ttl=5,
            metadata=("role=web,disk=ssd", "role=web", "role=db"),
        )
        try:
            yield cluster
        finally:
            cluster.stop()


def by_name(cluster: Cluster, name: str) -> Machine:
    return next(m for m in cluster.machines if m.name == name)


async def running_on(cluster: Cluster, names: list[str]) -> dict[str, list[str]]:
    """unit → the names of the hosts whose own systemd runs it."""
    result: dict[str, list[str]] = {n: [] for n in names}
    for machine in cluster.machines:
        try:
            async with systemd_at(machine.bus) as systemd:
                for unit in await running_units(systemd, names):
                    result[unit].append(machine.name)
        except Exception:
            continue  # a host that was killed has no bus any more
    return {n: sorted(hosts) for n, hosts in result.items()}


async def wait_running(cluster: Cluster, expected: dict[str, list[str]], timeout: float = 60) -> None:
    async def probe() -> bool:
        return await running_on(cluster, list(expected)) == expected

    try:
        await wait_for(probe, timeout=timeout, interval=0.3, what=f"units running as {expected}")
    except AssertionError:
        raise AssertionError(f"running: {await running_on(cluster, list(expected))}, expected {expected}") from None


def fields(cluster: Cluster, *names: str) -> dict[str, list[str]]:
    """list-unit-files --fields unit,<names> as unit → cells."""
    out = cluster.ctl("list-unit-files", "--no-legend", "--full", "--fields", ",".join(("unit", *names))).out
    rows = [re.split(r"\t+", line) for line in out.splitlines()]
    return {row[0]: row[1:] for row in rows}


async def destroy(cluster: Cluster, names: list[str]) -> None:
    cluster.ctl("destroy", *names, check=True)
    await wait_running(cluster, {n: [] for n in names})


async def test_mutually_conflicting_units_spread_one_per_machine_and_the_surplus_waits_with_a_reason(
    rules_cluster: Cluster, tmp_path
) -> None:
    cluster = rules_cluster
    write_unit(str(tmp_path), "spread@.service", LOOP + "\n[X-Fleet]\nConflicts=spread@*.service\n")
    names = [f"spread@{i}.service" for i in range(1, 5)]
    cluster.ctl("start", "--no-block", *[str(tmp_path / n) for n in names], check=True)

    async def three_running() -> dict[str, list[str]]:
        now = await running_on(cluster, names)
        return now if sum(len(h) for h in now.values()) == 3 else {}

    now = await wait_for(three_running, timeout=60, interval=0.3, what="three instances to run")
    assert all(len(hosts) <= 1 for hosts in now.values()), now
    assert sorted(h for hosts in now.values() for h in hosts) == ["h1", "h2", "h3"], "one per machine"
    (surplus,) = [n for n, hosts in now.items() if not hosts]

    async def reason() -> str:
        cells = fields(cluster, "target", "reason")[surplus]
        return cells[1] if cells[0] == "-" and cells[1] != "-" else ""

    text = await wait_for(reason, timeout=30, what=f"a reason for {surplus}")
    assert text.startswith(
        "no machine can run it: Conflicts ruled out 3 of 3 machines (found conflict with locally-scheduled Unit(spread@"
    ), text
    for placed in set(names) - {surplus}:
        assert fields(cluster, "reason")[placed] == ["-"]

    # A machine frees up: the surplus unit takes it and loses its reason.
    freed = next(n for n, hosts in now.items() if hosts)
    cluster.ctl("destroy", freed, check=True)
    expected = {**{n: now[n] for n in names if n not in (freed, surplus)}, surplus: now[freed], freed: []}
    await wait_running(cluster, expected)
    assert fields(cluster, "reason")[surplus] == ["-"]
    await destroy(cluster, [n for n in names if n != freed])


async def test_machine_id_pins_a_unit_by_full_or_short_id(rules_cluster: Cluster, tmp_path) -> None:
    cluster = rules_cluster
    h2, h3 = by_name(cluster, "h2"), by_name(cluster, "h3")
    write_unit(str(tmp_path), "pin@.service", LOOP + "\n[X-Fleet]\nMachineID=%i\n")
    write_unit(str(tmp_path), "full.service", LOOP + f"\n[X-Fleet]\nMachineID={h3.id}\n")
    short = f"pin@{h2.id[:8]}.service"
    cluster.ctl("start", "--no-block", str(tmp_path / short), str(tmp_path / "full.service"), check=True)
    await wait_running(cluster, {short: ["h2"], "full.service": ["h3"]})

    # Pinned to a machine the cluster does not have: plan says why before anything is submitted.
    path = write_unit(str(tmp_path), "nowhere.service", LOOP + "\n[X-Fleet]\nMachineID=deadbeef\n")
    planned = cluster.ctl("plan", path, check=True).out
    assert planned.splitlines()[0] == (
        "nowhere.service: would run nowhere: no machine can run it: MachineID ruled out 3 of 3 machines "
        '(agent ID does not match required "deadbeef")'
    )
    assert "nowhere.service" not in cluster.ctl("list-unit-files").out, "plan submitted nothing"
    await destroy(cluster, [short, "full.service"])


async def test_a_replaced_unit_moves_and_keeps_its_own_requirements(rules_cluster: Cluster, tmp_path) -> None:
    cluster = rules_cluster
    old = write_unit(str(tmp_path), "old.service", LOOP + "\n[X-Fleet]\nMachineMetadata=role=web\n")
    cluster.ctl("start", "--no-block", old, check=True)

    async def placed() -> list[str]:
        return (await running_on(cluster, ["old.service"]))["old.service"]

    (first,) = await wait_for(placed, timeout=60, what="old.service to run")
    assert first in ("h1", "h2")
    other = "h2" if first == "h1" else "h1"
    # Two units pinned to the other web machine make it busier than old.service's machine.
    fillers = []
    for i in (1, 2):
        text = LOOP + f"\n[X-Fleet]\nMachineID={by_name(cluster, other).id}\n"
        fillers.append(write_unit(str(tmp_path), f"filler-{i}.service", text))
    cluster.ctl("start", "--no-block", *fillers, check=True)
    await wait_running(cluster, {"old.service": [first], "filler-1.service": [other], "filler-2.service": [other]})

    new = write_unit(
        str(tmp_path), "new.service", LOOP + "\n[X-Fleet]\nMachineMetadata=role=web\nReplaces=old.service\n"
    )
    cluster.ctl("start", "--no-block", new, check=True)
    # new.service takes the least loaded web machine, old.service's; old.service moves, and only to a machine
    # that has role=web (the busier h-web, not the empty role=db h3).
    await wait_running(cluster, {"new.service": [first], "old.service": [other]})
    await destroy(cluster, ["new.service", "old.service", "filler-1.service", "filler-2.service"])


async def test_metadata_set_at_run_time_moves_the_units_it_concerns(rules_cluster: Cluster, tmp_path) -> None:
    cluster = rules_cluster
    h2, h3 = by_name(cluster, "h2"), by_name(cluster, "h3")
    path = write_unit(str(tmp_path), "gold.service", LOOP + "\n[X-Fleet]\nMachineMetadata=tier=gold\n")
    cluster.ctl("start", "--no-block", path, check=True)

    async def reason() -> str:
        return fields(cluster, "reason")["gold.service"][0].removeprefix("-")

    assert (await wait_for(reason, timeout=30, what="a reason")).startswith(
        "no machine can run it: MachineMetadata ruled out 3 of 3 machines"
    )
    assert cluster.ctl("set-metadata", h3.id, "tier=gold", check=True).out == f"{h3.id[:8]}...\trole=db,tier=gold\n"
    await wait_running(cluster, {"gold.service": ["h3"]})
    assert fields(cluster, "reason")["gold.service"] == ["-"]

    cluster.ctl("set-metadata", h3.id[:8], "--remove", "tier", check=True)
    cluster.ctl("set-metadata", h2.id, "tier=gold", check=True)
    await wait_running(cluster, {"gold.service": ["h2"]})
    await destroy(cluster, ["gold.service"])


async def test_a_global_unit_runs_on_every_matching_machine_and_on_one_that_joins_later(
    rules_cluster: Cluster, tmp_path
) -> None:
    cluster = rules_cluster
    path = write_unit(str(tmp_path), "web-agent.service", LOOP + "\n[X-Fleet]\nGlobal=true\nMachineMetadata=role=web\n")
    result = cluster.ctl("start", path, check=True)
    assert "Triggered global unit web-agent.service start" in result.out
    await wait_running(cluster, {"web-agent.service": ["h1", "h2"]})
    assert fields(cluster, "target")["web-agent.service"] == ["global"]

    await cluster.add_host(4, metadata="role=web")
    await wait_running(cluster, {"web-agent.service": ["h1", "h2", "h4"]})
    await cluster.add_host(5, metadata="role=db")
    await wait_running(cluster, {"web-agent.service": ["h1", "h2", "h4"]})
    await destroy(cluster, ["web-agent.service"])


async def test_a_machine_of_pair_moves_together_when_its_machine_dies(rules_cluster: Cluster, tmp_path) -> None:
    cluster = rules_cluster
    db = write_unit(str(tmp_path), "db.service", LOOP + "\n[X-Fleet]\nMachineMetadata=role=web\n")
    app = write_unit(str(tmp_path), "app.service", LOOP + "\n[X-Fleet]\nMachineOf=db.service\n")
    cluster.ctl("start", "--no-block", db, app, check=True)

    async def together() -> str:
        now = await running_on(cluster, ["db.service", "app.service"])
        hosts = now["db.service"]
        return hosts[0] if len(hosts) == 1 and now["app.service"] == hosts else ""

    first = await wait_for(together, timeout=60, what="db.service and app.service to run together")
    machine = by_name(cluster, first)
    cluster.kill_host(machine)
    killed_at = time.monotonic()
    cluster.machines.remove(machine)

    second = await wait_for(together, timeout=cluster.agent_ttl + 30, what="the pair to run together elsewhere")
    assert second != first
    assert "role=web" in cluster.ctl("list-machines", "--no-legend", "--full").out.split(by_name(cluster, second).id)[1]
    print(f"MachineOf pair moved {first} → {second} in {time.monotonic() - killed_at:.1f}s")
    await destroy(cluster, ["db.service", "app.service"])
