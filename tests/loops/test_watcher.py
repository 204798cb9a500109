"""The watched-directory loop against a real etcd and real files: ownership, start-up reconciliation, two
watchers of identical directories, errors that show and go away. (The sandbox-cluster test checks that the
units then really run: tests/cluster/test_watchdir.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from functools import partial

import pytest

from fleetpy.model import DesiredState, UnitRecord
from fleetpy.registry.store import EtcdRegistry
from fleetpy.registry.watched import WatchedStore
from fleetpy.unit import UnitFile
from fleetpy.watchdir import Watcher
from tests.support import wait_for

A = "[Service]\nExecStart=/bin/sleep 1000\n"
B = "[Service]\nExecStart=/bin/sleep 2000\n"


def put(directory: str, name: str, text: str) -> None:
    """Write as an editor that saves safely does: a temporary file, then a rename into place."""
    temporary = os.path.join(directory, f".{name}.tmp")
    with open(temporary, "w") as handle:
        handle.write(text)
    os.utime(temporary, (0, 0))  # long settled: applied at the next pass
    os.replace(temporary, os.path.join(directory, name))


@contextlib.asynccontextmanager
async def watching(
    registry: EtcdRegistry, directory: str, machine: str, interval: float = 0.5
) -> AsyncIterator[Watcher]:
    store = WatchedStore(registry.client, registry.keys)
    watcher = Watcher(store, directory, machine=machine, ttl=5, interval=interval)
    task = asyncio.create_task(watcher.run())
    try:
        yield watcher
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await watcher.close()


async def hashes(registry: EtcdRegistry) -> dict[str, tuple[str, str]]:
    return {v.record.name: (v.record.hash, v.record.desired.value) for v in await registry.list_units()}


async def test_two_watchers_of_identical_directories_agree_and_spare_units_made_by_hand(
    registry: EtcdRegistry, tmp_path
) -> None:
    hand = UnitFile.from_text(B)
    assert await registry.create_unit(UnitRecord("hand.service", hand.hash, DesiredState.LOADED), hand.text)
    first, second = str(tmp_path / "one"), str(tmp_path / "two")
    for directory in (first, second):
        os.makedirs(directory)
        put(directory, "a.service", A)
        put(directory, "hand.service", A)  # the same name as the unit made by hand: reported, never applied

    async with watching(registry, first, "m1"), watching(registry, second, "m2"):

        async def created() -> bool:
            return "a.service" in await hashes(registry)

        await wait_for(created, timeout=20, what="a.service to be created")
        view = await registry.get_unit("a.service")
        assert view is not None
        assert view.record.hash == UnitFile.from_text(A).hash
        assert view.record.desired == DesiredState.LAUNCHED
        revision = view.revision

        async def both_report_hand() -> list[str]:
            errors = await registry.list_watch_errors()
            return sorted(e.machine for e in errors if e.file == "hand.service")

        assert await wait_for(both_report_hand, timeout=20, what="both watchers to report hand.service") == [
            "m1",
            "m2",
        ]
        await asyncio.sleep(1.5)  # three more passes each: nothing may be written again
        view = await registry.get_unit("a.service")
        assert view is not None
        assert view.revision == revision, "the second watcher rewrote the unit"
        assert (await hashes(registry))["hand.service"] == (hand.hash, "loaded")

        # The change reaches one directory: the other still wants the unit as it is, so nothing changes yet.
        put(first, "a.service", B)

        async def conflict() -> bool:
            return any(e.file == "a.service" and e.machine == "m1" for e in await registry.list_watch_errors())

        await wait_for(conflict, timeout=20, what="the first watcher to report that the directories disagree")
        assert (await hashes(registry))["a.service"][0] == UnitFile.from_text(A).hash
        put(second, "a.service", B)

        async def changed() -> bool:
            return (await hashes(registry))["a.service"][0] == UnitFile.from_text(B).hash

        await wait_for(changed, timeout=20, what="the unit to change once both directories agree")

        # Removed from one directory, the unit stays; removed from both, it is destroyed.
        os.unlink(os.path.join(first, "a.service"))
        await asyncio.sleep(1.5)
        assert "a.service" in await hashes(registry)
        os.unlink(os.path.join(second, "a.service"))

        async def destroyed() -> bool:
            return "a.service" not in await hashes(registry)

        await wait_for(destroyed, timeout=20, what="the unit to be destroyed once no directory has it")
        for directory in (first, second):
            os.unlink(os.path.join(directory, "hand.service"))
        await asyncio.sleep(1.5)
        assert (await hashes(registry))["hand.service"] == (hand.hash, "loaded"), "a unit made by hand was touched"

        async def no_errors() -> bool:
            return not await registry.list_watch_errors()

        await wait_for(no_errors, timeout=20, what="the errors to go once their files are gone")


async def test_start_up_reconciles_the_directory_against_the_cluster(registry: EtcdRegistry, tmp_path) -> None:
    directory = str(tmp_path)
    put(directory, "keep.service", A)
    put(directory, "gone.service", A)
    async with watching(registry, directory, "m1"):

        async def both() -> bool:
            return {"keep.service", "gone.service"} <= set(await hashes(registry))

        await wait_for(both, timeout=20, what="both units to be created")

    # While no watcher runs: one file changes, one goes, one appears. close() revoked the watcher's lease (its
    # owner key and errors); its claims and the markers stay and say which units are the directory's.
    put(directory, "keep.service", B)
    os.unlink(os.path.join(directory, "gone.service"))
    put(directory, "new.service", A)
    async with watching(registry, directory, "m1"):

        async def reconciled() -> dict[str, str]:
            units = {name: h for name, (h, _desired) in (await hashes(registry)).items()}
            expected = {"keep.service": UnitFile.from_text(B).hash, "new.service": UnitFile.from_text(A).hash}
            return units if units == expected else {}

        await wait_for(reconciled, timeout=20, what="the cluster to match the directory after a restart")


async def test_a_missing_directory_holds_every_unit(registry: EtcdRegistry, tmp_path) -> None:
    directory = str(tmp_path / "units.d")
    os.makedirs(directory)
    put(directory, "a.service", A)
    async with watching(registry, directory, "m1"):

        async def created() -> bool:
            return "a.service" in await hashes(registry)

        await wait_for(created, timeout=20, what="a.service to be created")
        os.rename(directory, str(tmp_path / "elsewhere"))  # gone at once, as an unmounted directory would be

        async def reported() -> bool:
            return any(e.file == "." for e in await registry.list_watch_errors())

        await wait_for(reported, timeout=20, what="the missing directory to be reported")
        await asyncio.sleep(1.5)
        assert "a.service" in await hashes(registry), "a missing directory destroyed its units"


async def conflict_of(registry: EtcdRegistry, file: str) -> str:
    return next((e.message for e in await registry.list_watch_errors() if e.file == file), "")


async def identity(registry: EtcdRegistry, name: str) -> tuple[int, str] | None:
    view = await registry.get_unit(name)
    return (view.revision, view.record.hash) if view is not None else None


@pytest.mark.parametrize(
    "destroy",
    [
        pytest.param("registry", id="destroyed as fleetpyctl destroy does"),
        pytest.param("etcd", id="its key deleted by another etcd client"),
    ],
)
async def test_a_unit_destroyed_and_submitted_again_by_hand_is_no_longer_the_directorys(
    registry: EtcdRegistry, tmp_path, destroy: str
) -> None:
    directory = str(tmp_path)
    put(directory, "x.service", A)
    put(directory, "y.service", A)
    hand = UnitFile.from_text(B)

    async def by_hand(name: str) -> tuple[int, str] | None:
        """Destroy the directory's unit and submit other content under its name, as fleetpyctl does."""
        if destroy == "registry":
            assert await registry.destroy_unit(name)
        else:
            await registry.client.delete(registry.keys.unit(name))
        assert await registry.create_unit(UnitRecord(name, hand.hash, DesiredState.LAUNCHED), hand.text)
        return await identity(registry, name)

    # A long tick: passes run at start, on file events and when woken here, never between the two steps by hand.
    async with watching(registry, directory, "m1", interval=300) as watcher:

        async def created() -> bool:
            return set(await hashes(registry)) == {"x.service", "y.service"}

        await wait_for(created, timeout=20, what="both units to be created from their files")
        x = await by_hand("x.service")
        watcher.reconciler.wake()  # the next pass, as the tick would run it
        message = await wait_for(partial(conflict_of, registry, "x.service"), timeout=10, what="x.service reported")
        assert "was not created by a watched directory" in message
        assert await identity(registry, "x.service") == x, "the directory overwrote a unit submitted by hand"

    # While no watcher runs, y.service is submitted again by hand and its file removed.
    y = await by_hand("y.service")
    os.unlink(os.path.join(directory, "y.service"))
    async with watching(registry, directory, "m1", interval=300):
        message = await wait_for(partial(conflict_of, registry, "x.service"), timeout=10, what="a restarted pass")
        assert "was not created by a watched directory" in message
        assert await identity(registry, "x.service") == x, "the restarted directory overwrote a unit made by hand"
        assert await identity(registry, "y.service") == y, "the restarted directory destroyed a unit made by hand"

        os.unlink(os.path.join(directory, "x.service"))

        async def released() -> bool:
            return not await conflict_of(registry, "x.service")

        await wait_for(released, timeout=10, what="the report to go with the file")
        assert await identity(registry, "x.service") == x, "removing the file destroyed a unit made by hand"


async def test_a_unit_destroyed_by_hand_and_created_again_by_its_directory_stays_the_directorys(
    registry: EtcdRegistry, tmp_path
) -> None:
    directory = str(tmp_path)
    put(directory, "x.service", A)
    async with watching(registry, directory, "m1", interval=300) as watcher:

        async def content() -> str:
            return (await hashes(registry)).get("x.service", ("", ""))[0]

        async def holds(text: str) -> bool:
            return await content() == UnitFile.from_text(text).hash

        await wait_for(partial(holds, A), timeout=20, what="x.service to be created from its file")
        assert await registry.destroy_unit("x.service")  # its marker stays behind
        watcher.reconciler.wake()
        await wait_for(partial(holds, A), timeout=10, what="the directory to create x.service again")
        put(directory, "x.service", B)
        await wait_for(partial(holds, B), timeout=10, what="an edit of its file to replace it")
        os.unlink(os.path.join(directory, "x.service"))

        async def destroyed() -> bool:
            return not await content()

        await wait_for(destroyed, timeout=10, what="removing its file to destroy it")
