"""The one reconcile runner both loops use (engine and agent).

A pass runs at start, whenever something says "look again" (a watch or a signal sets the wake event; events
carry no data), and on a periodic tick as a safety net. Passes never overlap; a burst of wake-ups while a pass
runs gives one more pass, not many. A pass returns how soon it wants to run again (``None``: at the next
tick). ``TransientError`` means retry with back-off; anything else is a bug and ends the loop (and with it the
daemon), because a loop kept alive around a broken invariant does more harm than a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from fleetpy.errors import TransientError
from fleetpy.metrics import Metrics

log = logging.getLogger(__name__)

Pass = Callable[[], Awaitable[float | None]]


class Reconciler:
    def __init__(
        self,
        name: str,
        reconcile: Pass,
        *,
        interval: float,
        wake: asyncio.Event | None = None,
        settle: float = 0.01,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self._reconcile = reconcile
        self.interval = interval
        self.wake_event = wake if wake is not None else asyncio.Event()
        self.settle = settle
        self.metrics = metrics
        self.passes = 0
        self.last_duration = 0.0

    def wake(self) -> None:
        self.wake_event.set()

    async def run(self) -> None:
        delay: float = 0.0
        failures = 0
        while True:
            if delay > 0:
                # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow a cancellation that races
                # with the event being set, and the loop would then never end.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.wake_event.wait()
            if self.settle:
                await asyncio.sleep(self.settle)  # let a burst of watch events land in one pass
            self.wake_event.clear()
            started = time.monotonic()
            try:
                again = await self._reconcile()
            except TransientError as exc:
                if self.metrics is not None:
                    self.metrics.reconciled(self.name, time.monotonic() - started, failed=True)
                failures += 1
                delay = min(5.0, 0.2 * 2 ** min(failures, 5))
                level = logging.WARNING if failures in (1, 5) or failures % 50 == 0 else logging.DEBUG
                log.log(level, "%s: pass failed (%s); retrying in %.1fs", self.name, exc, delay)
                continue
            failures = 0
            self.passes += 1
            self.last_duration = time.monotonic() - started
            if self.metrics is not None:
                self.metrics.reconciled(self.name, self.last_duration, failed=False)
            if self.last_duration > self.interval:
                log.warning(
                    "%s: pass took %.2fs, longer than its interval %.2fs", self.name, self.last_duration, self.interval
                )
            delay = self.interval if again is None else again
