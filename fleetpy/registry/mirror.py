"""Prefixes of etcd kept decoded in memory, current through watches.

A ``Mirror`` reads all its prefixes in one transaction (one revision), then follows each with a watch resumed
from the last revision it saw; a compacted revision means: read that prefix again. Loops read the mirror and
are woken by its ``changed`` event; an event never carries data into a decision (level-based reconciling).
A writer may record its own successful writes (``set_local``) so that its next pass sees them before the
watch delivers them; revisions keep the two from undoing each other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

from fleetpy.errors import RegistryUnavailable
from fleetpy.registry.ops import KV, Client, Compacted, Event, Range
from fleetpy.retry import until_success

log = logging.getLogger(__name__)
T = TypeVar("T")
_MISSING: Any = object()


class Prefix(Generic[T]):
    """One mirrored prefix: decoded values by key tail, with the mod revision each was seen at."""

    def __init__(self, prefix: str, decode: Callable[[str, bytes], T]) -> None:
        self.prefix = prefix
        self.decode = decode
        self.items: dict[str, T] = {}
        self._revisions: dict[str, int] = {}
        self._tombstones: dict[str, int] = {}
        self.revision = 0  # the newest revision this prefix is known to be current at

    def _set(self, tail: str, raw: bytes, revision: int) -> bool:
        """Apply a put; whether the decoded items changed (an echo of our own write, or a value that decodes
        the same, changes nothing)."""
        if revision < self._revisions.get(tail, 0) or revision < self._tombstones.get(tail, 0):
            return False
        self._tombstones.pop(tail, None)
        before = self.items.get(tail, _MISSING)
        try:
            value = self.decode(tail, raw)
        except ValueError as exc:
            log.warning("ignoring %s%s: %s", self.prefix, tail, exc)
            return self.items.pop(tail, _MISSING) is not _MISSING
        self.items[tail] = value
        self._revisions[tail] = revision
        return before is _MISSING or before != value

    def _delete(self, tail: str, revision: int) -> bool:
        if revision < self._revisions.get(tail, 0):
            return False
        self._revisions.pop(tail, None)
        self._tombstones[tail] = revision
        return self.items.pop(tail, _MISSING) is not _MISSING

    def load(self, kvs: Iterable[KV], revision: int) -> None:
        self.items.clear()
        self._revisions.clear()
        self._tombstones.clear()
        for kv in kvs:
            self._set(kv.key[len(self.prefix) :], kv.value, kv.mod_revision)
        self.revision = revision

    def apply(self, event: Event) -> bool:
        """Apply a watch event; whether the items changed."""
        tail = event.key[len(self.prefix) :]
        changed = self._delete(tail, event.revision) if event.deleted else self._set(tail, event.value, event.revision)
        self.revision = max(self.revision, event.revision)
        if len(self._tombstones) > 4096:
            self._tombstones = {k: r for k, r in self._tombstones.items() if r > self.revision}
        return changed

    def set_local(self, tail: str, value: T, revision: int) -> None:
        """Record our own successful write before its watch event arrives."""
        if revision < self._revisions.get(tail, 0) or revision < self._tombstones.get(tail, 0):
            return
        self._tombstones.pop(tail, None)
        self.items[tail] = value
        self._revisions[tail] = revision

    def delete_local(self, tail: str, revision: int) -> None:
        self._delete(tail, revision)


class Mirror:
    """Several prefixes kept current in memory from one consistent read and a watch per prefix."""

    def __init__(self, client: Client, prefixes: Sequence[Prefix[Any]]) -> None:
        self.client = client
        self.prefixes = list(prefixes)
        self.changed = asyncio.Event()
        self.loaded = asyncio.Event()
        self.events = 0  # watch events received: what the scale benchmark counts
        self._dirty: set[str] = set()
        self.watching = asyncio.Event()  # set once every prefix's watch has been accepted by etcd
        self._watched: set[str] = set()

    def take_changes(self) -> set[str]:
        """The prefixes that changed since the last call (all of them after a load)."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    async def load(self) -> None:
        result = await self.client.read(*(Range(p.prefix, prefix=True) for p in self.prefixes))
        for prefix, kvs in zip(self.prefixes, result.ranges, strict=True):
            prefix.load(kvs, result.revision)
            self._dirty.add(prefix.prefix)
        self.loaded.set()
        self.changed.set()

    async def run(self) -> None:
        """Load (retrying until etcd answers), then follow every prefix until cancelled."""
        names = ", ".join(p.prefix for p in self.prefixes)
        async for attempt in until_success(RegistryUnavailable, log=log, what=f"loading {names}", first=0.1, cap=2.0):
            with attempt:
                await self.load()
        async with asyncio.TaskGroup() as group:
            for prefix in self.prefixes:
                group.create_task(self._follow(prefix))

    async def _follow(self, prefix: Prefix[Any]) -> None:
        while True:
            async for attempt in until_success(
                RegistryUnavailable, log=log, what=f"watching {prefix.prefix}", first=0.1, cap=2.0
            ):
                with attempt:
                    await self._watch(prefix)

    def _created(self, prefix: Prefix[Any]) -> None:
        self._watched.add(prefix.prefix)
        if len(self._watched) == len(self.prefixes):
            self.watching.set()

    async def _watch(self, prefix: Prefix[Any]) -> None:
        """Follow the prefix from the revision after the last one seen, until the watch breaks
        (``RegistryUnavailable``); after a compaction, read the prefix again and return."""
        try:
            async for event in self.client.watch(prefix.prefix, prefix.revision + 1, lambda: self._created(prefix)):
                self.events += 1
                if prefix.apply(event):
                    self._dirty.add(prefix.prefix)
                    self.changed.set()  # only real changes wake the loop: not echoes, not equal values
        except Compacted:
            log.info("watch on %s was compacted: reading it again", prefix.prefix)
            revision, kvs = await self.client.get_prefix(prefix.prefix)
            prefix.load(kvs, revision)
            self._dirty.add(prefix.prefix)
            self.changed.set()
