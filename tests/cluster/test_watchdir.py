"""A watched directory on a sandbox cluster (``fleetpyd dev --watch-dir``): files become units that really run,
checked through the systemd of the host that runs them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from fleetpy.devcluster import EtcdServer
from fleetpy.keys import Keys
from tests.support import Cluster, Machine, main_pid, unit_status, wait_for, write_unit

LOOP = '[Unit]\nDescription={desc}\n\n[Service]\nExecStart=/bin/sh -c "while true; do sleep 1; done # {desc}"\n'


@pytest.fixture(scope="module")
def watched(workdir: str) -> Iterator[tuple[Cluster, str]]:
    name = uuid.uuid4().hex[:8]
    directory = os.path.join(workdir, f"watch-{name}")
    os.makedirs(directory)
    etcd = EtcdServer(os.path.join(workdir, f"etcd-{name}"))
    etcd.start()
    cluster = None
    try:
        cluster = Cluster(
            os.path.join(workdir, f"c-{name}"), etcd, machines=3, agent_ttl=5, extra=("--watch-dir", directory)
        )
        yield cluster, directory
    finally:
        if cluster is not None:
            cluster.stop()
        etcd.kill()


def save(directory: str, name: str, text: str) -> None:
    """Save as careful editors do: write a temporary file next to it, then rename it into place."""
    temporary = os.path.join(directory, f".{name}.swp")
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, os.path.join(directory, name))


async def running_on(cluster: Cluster, name: str, timeout: float = 30) -> Machine:
    """The machine whose own systemd runs ``name``."""

    async def probe() -> Machine | None:
        for machine in cluster.machines:
            if await unit_status(machine.bus, name) == ("loaded", "active", "running"):
                return machine
        return None

    return await wait_for(probe, timeout=timeout, interval=0.2, what=f"{name} to run on some host")


def unit_file(machine: Machine, name: str) -> str:
    with open(os.path.join(machine.units_dir, name)) as handle:
        return handle.read()


async def cluster_keys(cluster: Cluster) -> list[tuple[str, int]]:
    client = cluster.registry_client()
    try:
        _, kvs = await client.get_prefix(Keys(cluster.prefix).units)
        return [(kv.key, kv.mod_revision) for kv in kvs]
    finally:
        await client.close()


def watch_errors(cluster: Cluster) -> dict[str, str]:
    """file → error line, as ``fleetpyctl list-watch-errors`` prints them."""
    result = cluster.ctl("list-watch-errors", "--no-legend", check=True)
    return {line.split("\t", 1)[0].strip(): line for line in result.out.splitlines()}


async def test_a_dropped_file_runs_an_edit_replaces_it_and_removing_it_destroys_it(
    watched: tuple[Cluster, str],
) -> None:
    cluster, directory = watched
    save(directory, "w-hello.service", LOOP.format(desc="first"))
    first = await running_on(cluster, "w-hello.service")
    assert "# first" in unit_file(first, "w-hello.service")
    pid = await main_pid(first.bus, "w-hello.service")
    assert "w-hello.service" in cluster.ctl("list-unit-files", check=True).out

    save(directory, "w-hello.service", LOOP.format(desc="second"))

    async def replaced() -> Machine | None:
        machine = await running_on(cluster, "w-hello.service")
        if (
            "# second" in unit_file(machine, "w-hello.service")
            and await main_pid(machine.bus, "w-hello.service") != pid
        ):
            return machine
        return None

    second = await wait_for(replaced, timeout=30, interval=0.3, what="the edited unit to run its new content")
    if second.id != first.id:
        assert (await unit_status(first.bus, "w-hello.service"))[1] == "inactive"

    os.unlink(os.path.join(directory, "w-hello.service"))

    async def removed() -> bool:
        return (await unit_status(second.bus, "w-hello.service"))[1] == "inactive" and not os.path.exists(
            os.path.join(second.units_dir, "w-hello.service")
        )

    await wait_for(removed, timeout=30, interval=0.3, what="the unit to stop and leave its host")
    assert "w-hello.service" not in cluster.ctl("list-unit-files", check=True).out


async def test_an_invalid_file_is_reported_and_changes_nothing(watched: tuple[Cluster, str]) -> None:
    cluster, directory = watched
    save(directory, "w-keep.service", LOOP.format(desc="kept"))
    machine = await running_on(cluster, "w-keep.service")
    pid = await main_pid(machine.bus, "w-keep.service")
    before = await cluster_keys(cluster)

    save(directory, "w-bad.service", "[Service]\nExecStart=/bin/true\nnonsense upon stilts\n")
    save(directory, "w-keep.service", "[Unit]\nDescription=broken [\n[Service\n")

    async def reported() -> dict[str, str]:
        errors = watch_errors(cluster)
        return errors if {"w-bad.service", "w-keep.service"} <= set(errors) else {}

    errors = await wait_for(reported, timeout=30, interval=0.3, what="fleetpyctl to list both invalid files")
    assert "nonsense upon stilts" in errors["w-bad.service"]
    assert directory in errors["w-bad.service"]
    assert await cluster_keys(cluster) == before, "an invalid file changed the cluster"
    assert await main_pid(machine.bus, "w-keep.service") == pid, "the unit of a broken file was restarted"

    save(directory, "w-keep.service", LOOP.format(desc="kept"))  # fixed: the same content as before
    os.unlink(os.path.join(directory, "w-bad.service"))

    async def fixed() -> bool:
        return not watch_errors(cluster)

    await wait_for(fixed, timeout=30, interval=0.3, what="the errors to go once the files are fixed")
    assert await main_pid(machine.bus, "w-keep.service") == pid
    os.unlink(os.path.join(directory, "w-keep.service"))


async def test_a_unit_submitted_with_fleetpyctl_survives_the_directory(watched: tuple[Cluster, str], tmp_path) -> None:
    cluster, directory = watched
    cluster.ctl("start", write_unit(str(tmp_path), "w-hand.service", LOOP.format(desc="by hand")), check=True)
    machine = await running_on(cluster, "w-hand.service")
    pid = await main_pid(machine.bus, "w-hand.service")

    save(directory, "w-hand.service", LOOP.format(desc="from the directory"))

    async def conflict() -> str:
        return watch_errors(cluster).get("w-hand.service", "")

    message = await wait_for(conflict, timeout=30, interval=0.3, what="the name clash to be reported")
    assert "was not created by a watched directory" in message
    os.unlink(os.path.join(directory, "w-hand.service"))

    async def settled() -> bool:
        return "w-hand.service" not in watch_errors(cluster)

    await wait_for(settled, timeout=30, interval=0.3, what="the report to go with the file")
    assert "# by hand" in unit_file(machine, "w-hand.service")
    assert await unit_status(machine.bus, "w-hand.service") == ("loaded", "active", "running")
    assert await main_pid(machine.bus, "w-hand.service") == pid
    assert "w-hand.service" in cluster.ctl("list-unit-files", check=True).out
    cluster.ctl("destroy", "w-hand.service", check=True)
