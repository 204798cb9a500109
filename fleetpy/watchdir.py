"""The watched directory: unit files dropped into a directory become units of the cluster (``--watch-dir``).

A loop like the engine's and the agent's (``loop.Reconciler``): a pass at start (which reconciles the
directory against the cluster), whenever the directory changes (``watchfiles``; events only say "look again")
and on a periodic tick, which also notices cluster-side changes such as a ``fleetpyctl destroy``. A pass reads
every file, asks ``watchplan`` what the directory describes and what to change, applies that action by action
(each a compare-and-swap transaction) and publishes the files it could not apply, with the reason, under the
watcher's lease (``GET /fleet/v1/watch-errors``, ``fleetpyctl list-watch-errors``).

The watcher is an *owner*: a machine (or host) and a directory. Its owner key and its errors hang on its own
lease, kept alive here, so a watcher that dies stops counting against other directories after its TTL; its
claims stay, so that it reconciles what its directory held when it starts again. A directory that does not exist (or is
unmounted) holds every unit as it is: an empty listing is never taken to mean "destroy everything".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import stat
import time

import watchfiles

from fleetpy.errors import TransientError
from fleetpy.loop import Reconciler
from fleetpy.registry.watched import WatchedStore
from fleetpy.watchplan import (
    MAX_FILE,
    SETTLE,
    DirectoryFile,
    DirectoryUnits,
    FileKind,
    WatchError,
    classify,
    read_directory,
    watch_plan,
)

log = logging.getLogger(__name__)

DIRECTORY = "."  # the "file" an error about the directory itself is reported against


def owner_id(machine: str, directory: str) -> str:
    """A watcher's name in etcd keys: the machine and a digest of the directory's absolute path."""
    digest = hashlib.sha1(os.path.abspath(directory).encode()).hexdigest()[:8]
    return f"{machine[:12]}-{digest}"


def read_files(directory: str) -> dict[str, DirectoryFile] | None:
    """Every regular file (symlinks followed) that is not ignored, ``None`` if the directory is missing."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return None
    files = {}
    for name in names:
        if classify(name) == FileKind.IGNORED:
            continue
        path = os.path.join(directory, name)
        try:
            status = os.stat(path)
            if not stat.S_ISREG(status.st_mode):
                continue  # a directory, a pipe, a dangling link: not a unit file
            with open(path, "rb") as handle:
                content = handle.read(MAX_FILE + 1)
        except FileNotFoundError:
            continue  # removed meanwhile
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc)
            continue
        files[name] = DirectoryFile(content, status.st_mtime)
    return files


class Watcher:
    def __init__(
        self,
        store: WatchedStore,
        directory: str,
        *,
        machine: str,
        ttl: int,
        interval: float = 10.0,
        settle: float = SETTLE,
    ) -> None:
        self.store = store
        self.directory = os.path.abspath(directory)
        self.machine = machine
        self.owner = owner_id(machine, self.directory)
        self.ttl = ttl
        self.settle = settle
        self.lease = 0
        self.reconciler = Reconciler(f"watch {self.directory}", self._pass, interval=interval)
        self._published: tuple[int, dict[str, str]] | None = None

    async def run(self) -> None:
        log.info("watching %s for unit files (owner %s)", self.directory, self.owner)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._keep_lease())
            group.create_task(self._watch_files())
            group.create_task(self.reconciler.run())

    async def close(self) -> None:
        """Give up the lease: the owner key and the errors go at once (claims and units stay)."""
        if self.lease:
            with contextlib.suppress(TransientError):
                await self.store.revoke_lease(self.lease)
            self.lease = 0

    async def _ensure_lease(self) -> int:
        if not self.lease:
            lease = await self.store.grant_lease(self.ttl)
            await self.store.register_owner(self.owner, lease, self.machine, self.directory)
            self.lease = lease
        return self.lease

    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            if not self.lease:
                continue
            try:
                if await self.store.keepalive_lease(self.lease) <= 0:
                    log.warning("watch %s: lease expired; registering again", self.directory)
                    self.lease = 0
                    self.reconciler.wake()
            except TransientError as exc:
                log.debug("watch %s: lease keep-alive failed: %s", self.directory, exc)

    async def _watch_files(self) -> None:
        while True:
            if os.path.isdir(self.directory):  # noqa: ASYNC240 - one stat, then inotify takes over
                try:
                    async for _changes in watchfiles.awatch(
                        self.directory, watch_filter=None, recursive=False, debounce=400, step=50
                    ):
                        self.reconciler.wake()
                except (FileNotFoundError, RuntimeError) as exc:  # the directory went away under the watch
                    log.warning("watch %s: %s", self.directory, exc)
            self.reconciler.wake()
            await asyncio.sleep(self.reconciler.interval)

    async def _pass(self) -> float | None:
        files = await asyncio.to_thread(read_files, self.directory)
        lease = await self._ensure_lease()
        if files is None:
            missing = f"directory {self.directory} does not exist; every unit stays as it is"
            await self._publish(lease, {DIRECTORY: missing})
            return None
        directory = read_directory(files, now=time.time(), settle=self.settle)
        snapshot = await self.store.snapshot()
        plan = watch_plan(self.owner, directory, snapshot)
        raced = False
        for action in plan.actions:
            if await self.store.apply(action, self.owner):
                kind = type(action).__name__.lower()
                log.info("watch %s: %s %s: %s", self.directory, kind, action.unit, action.reason)
            else:
                raced = True
        await self._publish(lease, {**directory.errors, **plan.conflicts})
        if raced:
            return 0.2  # someone else wrote meanwhile: look again soon
        return self.settle if _pending(directory) else None

    async def _publish(self, lease: int, errors: dict[str, str]) -> None:
        if self._published == (lease, errors):
            return
        previous = self._published[1] if self._published else {}
        for file, message in sorted(errors.items()):
            if previous.get(file) != message:
                log.warning("watch %s: %s not applied: %s", self.directory, file, message)
        for file in sorted(set(previous) - set(errors)):
            log.info("watch %s: %s is fine again", self.directory, file)
        records = [
            WatchError(self.owner, self.machine, self.directory, file, message)
            for file, message in sorted(errors.items())
        ]
        await self.store.publish_errors(self.owner, lease, records)
        self._published = (lease, errors)


def _pending(directory: DirectoryUnits) -> bool:
    """Files held without an error are still being written: look again once they have settled."""
    return bool(directory.held - set(directory.errors))
