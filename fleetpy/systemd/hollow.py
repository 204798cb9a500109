"""An in-memory systemd for hollow machines: a SIMULATION for scale benchmarks, never proof that the agent works.

``HollowSystemd`` implements the agent's ``Systemd`` protocol without D-Bus or processes: linked unit files
become ``loaded`` at the next reload, a start job finishes after a configurable delay (``active``/``running``),
a stop at once (``inactive``/``dead``); every state change calls the ``on_change`` callbacks as systemd's
``PropertiesChanged`` signals would. Hollow machines run fleetpy's real agent code and real etcd traffic
against it, hundreds of them in one process (``fleetpyd dev --hollow N``), so that the engine, etcd and the
agents' etcd traffic can be measured at 1,000 machines. Correctness tests use real systemd.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence

from fleetpy.errors import SystemdError
from fleetpy.systemd.base import UnitOrigin, UnitStatus

NOT_FOUND = UnitStatus("not-found", "inactive", "dead")


class HollowSystemd:
    def __init__(self, *, start_delay: float = 0.0) -> None:
        self.start_delay = start_delay
        self._linked: set[str] = set()  # unit names linked into the (simulated) runtime unit path
        self._paths: dict[str, str] = {}  # unit name → the file it was linked from (its FragmentPath)
        self._loaded: set[str] = set()  # names the manager has read (after a reload)
        self._active: dict[str, tuple[str, str]] = {}
        self._callbacks: list[Callable[[str], None]] = []
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.calls = 0

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def on_change(self, callback: Callable[[str], None]) -> None:
        self._callbacks.append(callback)

    def _changed(self, name: str) -> None:
        for callback in self._callbacks:
            callback(name)

    async def link(self, paths: Sequence[str]) -> None:
        self.calls += 1
        self._linked.update(os.path.basename(p) for p in paths)
        self._paths.update((os.path.basename(p), p) for p in paths)

    async def enable(self, paths: Sequence[str]) -> None:
        self.calls += 1

    async def disable(self, names: Sequence[str]) -> None:
        self.calls += 1
        self._linked.difference_update(names)

    async def reload(self) -> None:
        self.calls += 1
        self._loaded = set(self._linked) | {n for n in self._loaded if n in self._active}

    async def start(self, name: str) -> None:
        self.calls += 1
        if name not in self._loaded:
            raise SystemdError("org.freedesktop.systemd1.NoSuchUnit", f"Unit {name} not found.")
        self._active[name] = ("activating", "start")
        self._changed(name)
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        if self.start_delay > 0:
            self._timers[name] = asyncio.get_running_loop().call_later(self.start_delay, self._started, name)
        else:
            self._started(name)

    def _started(self, name: str) -> None:
        self._timers.pop(name, None)
        if self._active.get(name, ("", ""))[0] == "activating":
            self._active[name] = ("active", "running")
            self._changed(name)

    async def stop(self, name: str) -> None:
        self.calls += 1
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        if self._active.pop(name, None) is not None:
            self._changed(name)

    async def reset_failed(self, name: str) -> None:
        self.calls += 1

    async def origin(self, name: str) -> UnitOrigin:
        self.calls += 1
        if name not in self._loaded and name not in self._active:
            return UnitOrigin("not-found", "")
        return UnitOrigin("loaded", self._paths.get(name, ""))

    async def statuses(self, names: Sequence[str]) -> Mapping[str, UnitStatus]:
        self.calls += 1
        result = {}
        for name in names:
            if name not in self._loaded and name not in self._active:
                result[name] = NOT_FOUND
                continue
            active, sub = self._active.get(name, ("inactive", "dead"))
            result[name] = UnitStatus("loaded", active, sub)
        return result

    @property
    def running(self) -> frozenset[str]:
        return frozenset(n for n, (active, _) in self._active.items() if active == "active")
