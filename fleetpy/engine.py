"""The engine: one leader, elected through etcd, places units on machines.

Every fleetpyd runs an engine candidate (unless ``disable_engine``). A candidate campaigns by creating the leader
key on a short lease (``leader_ttl``); the others watch that key and campaign again the moment it disappears,
so a dead leader is replaced within its lease TTL. The leader key's create revision is the *fence*: every write
of the leader is a transaction that compares it, so an engine that was frozen while another took over cannot
write anything after it wakes.

The leader keeps the cluster in memory from watches (units, machines, dynamic metadata, the schedule, and
which machines report which units), runs the pure ``plan.engine_plan`` when something changed (and on a
periodic tick as a safety net), and applies the result in fenced batches. Why a unit is placed nowhere is
stored too (``P/unplaced/<unit>``, written only when it changes), so that every fleetpyd's API can show it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence

from fleetpy.errors import LeadershipLost, RegistryUnavailable
from fleetpy.loop import Reconciler
from fleetpy.metrics import Metrics
from fleetpy.model import Machine, MachineID, ScheduleEntry, merge_metadata
from fleetpy.plan import ClusterSnapshot, EngineAction, EnginePlan, Schedule, Unschedule, Update, engine_plan
from fleetpy.registry.base import EngineRegistry
from fleetpy.retry import until_success

log = logging.getLogger(__name__)

# Let a burst of changes (a batch of units arriving) gather before a pass: each pass plans the whole cluster,
# so passes over larger bursts cost less in total, for at most this much more latency.
SETTLE = 0.1
_TASK_TYPES = {Schedule: "attemptscheduleunit", Unschedule: "unscheduleunit", Update: "updateunit"}


class Engine:
    def __init__(
        self,
        *,
        registry: EngineRegistry,
        machine: MachineID,
        leader_ttl: int = 5,
        interval: float = 5.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.machine = machine
        self.leader_ttl = leader_ttl
        self.interval = interval
        self.fence: int | None = None
        self.leading = asyncio.Event()
        self.unplaced: Mapping[str, str] = {}
        self.last_plan: EnginePlan | None = None
        self._deposed = asyncio.Event()
        self._units = registry.units_prefix()
        self._machines = registry.machines_prefix()
        self._meta = registry.machine_meta_prefix()
        self._schedule = registry.all_schedule_prefix()
        self._states = registry.states_presence_prefix()
        self._reasons = registry.unplaced_prefix()

    async def run(self) -> None:
        while True:
            async for attempt in until_success(
                RegistryUnavailable, log=log, what="campaigning for engine leadership", cap=2.0
            ):
                with attempt:
                    won = await self._campaign()
            if won is not None:
                await self._lead(*won)

    async def _campaign(self) -> tuple[int, int] | None:
        """(fence, lease) if this engine now leads; otherwise ``None`` once the leader key is gone (or a while
        has passed), so that the caller campaigns again."""
        lease = await self.registry.grant_lease(self.leader_ttl)
        fence = await self.registry.campaign(self.machine, lease)
        if fence is not None:
            return fence, lease
        with contextlib.suppress(RegistryUnavailable):
            await self.registry.revoke_lease(lease)
        holder = await self.registry.leader()
        if holder is not None:
            log.debug("Engine leader is %s", holder[0])
        await self.registry.wait_for_vacancy(timeout=self.leader_ttl * 2)
        return None

    async def _lead(self, fence: int, lease: int) -> None:
        log.info("Engine leadership acquired (machine %s, fence %d)", self.machine, fence)
        self.fence = fence
        self._deposed.clear()
        self.leading.set()
        if self.metrics is not None:
            self.metrics.engine_leader_start_time.set(time.time())
        mirror = self.registry.mirror(
            [self._units, self._machines, self._meta, self._schedule, self._states, self._reasons]
        )
        self._mirror = mirror
        reconciler = Reconciler(
            "engine", self._pass, interval=self.interval, wake=mirror.changed, settle=SETTLE, metrics=self.metrics
        )
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._keep_lease(lease))
                group.create_task(mirror.run())
                group.create_task(reconciler.run())
        except* LeadershipLost as group_error:
            log.warning("Engine leadership lost: %s", group_error.exceptions[0])
        finally:
            self.fence = None
            self.leading.clear()
            with contextlib.suppress(RegistryUnavailable, asyncio.CancelledError):
                await asyncio.shield(self._resign(fence, lease))

    async def _resign(self, fence: int, lease: int) -> None:
        await self.registry.resign(fence)
        await self.registry.revoke_lease(lease)

    async def _keep_lease(self, lease: int) -> None:
        loop = asyncio.get_running_loop()
        last_ok = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.leader_ttl / 3):
                    await self._deposed.wait()
                    raise LeadershipLost("a fenced write was refused")
            try:
                if await self.registry.keepalive_lease(lease) <= 0:
                    raise LeadershipLost("the leader lease expired")
                last_ok = loop.time()
            except RegistryUnavailable as exc:
                if loop.time() - last_ok > self.leader_ttl:
                    raise LeadershipLost(f"could not refresh the leader lease for {self.leader_ttl}s: {exc}") from exc

    def snapshot(self) -> ClusterSnapshot:
        overrides: dict[str, dict[str, str]] = {}
        for tail, value in self._meta.items.items():
            machine_id, _, key = tail.partition("/")
            overrides.setdefault(machine_id, {})[key] = value
        machines: dict[MachineID, Machine] = {}
        for machine in self._machines.items.values():
            machines[machine.id] = merge_metadata(machine, overrides.get(machine.id, {}))
        schedule: dict[MachineID, dict[str, ScheduleEntry]] = {}
        for entry in self._schedule.items.values():
            schedule.setdefault(entry.machine, {})[entry.unit] = entry
        reported: dict[str, set[MachineID]] = {}
        for tail in self._states.items:
            machine_id, _, unit = tail.partition("/")
            reported.setdefault(unit, set()).add(MachineID(machine_id))
        return ClusterSnapshot(
            units=dict(self._units.items),
            machines=machines,
            schedule=schedule,
            reported={unit: frozenset(ms) for unit, ms in reported.items()},
        )

    def _count_tasks(self, actions: Sequence[EngineAction], *, failed: bool) -> None:
        """fleet's task metrics: one task per action, by fleet's type names (``updateunit`` is fleetpy's)."""
        if self.metrics is None:
            return
        for action in actions:
            kind = _TASK_TYPES[type(action)]
            self.metrics.engine_task_count.labels(kind).inc()
            if failed:
                self.metrics.engine_task_failure_count.labels(kind).inc()
            elif isinstance(action, Unschedule) and "went away" in action.reason:
                self.metrics.engine_reconcile_failure_count.labels("machine_away").inc()

    async def _pass(self) -> float | None:
        fence = self.fence
        if fence is None or not self._mirror.loaded.is_set():
            return None
        changes = self._mirror.take_changes()
        if changes == {self._states.prefix} and not self.unplaced:
            # Only unit states changed (agents loading what was placed): they matter to units that wait to be
            # placed, and there are none. During a start of 10,000 units this skips thousands of passes.
            return None
        plan = engine_plan(self.snapshot())
        self.last_plan = plan
        for unit, reason in sorted(plan.unplaced.items()):
            if self.unplaced.get(unit) != reason:
                log.info("unit %s not placed: %s", unit, reason)
                if self.metrics is not None and unit not in self.unplaced:
                    self.metrics.engine_reconcile_failure_count.labels("schedule").inc()
        self.unplaced = plan.unplaced
        # Reasons are stored for the API of every fleetpyd: written when they change, deleted once the unit
        # is placed, destroyed or no longer wanted.
        stored = self._reasons.items
        reasons = {unit: reason for unit, reason in plan.unplaced.items() if stored.get(unit) != reason}
        cleared = [unit for unit in stored if unit not in plan.unplaced]
        # Written machine by machine: an agent then finds all of this pass's work for it in one transaction, so
        # it wakes once, reads its bodies once and publishes once (10,000 units on 1,000 machines: ~1,000
        # agent passes instead of ~10,000).
        by_machine = sorted(plan.actions, key=lambda a: (a.entry.machine, a.entry.unit))
        ops = [op for action in by_machine for op in self.registry.engine_ops(action)]
        ops += self.registry.reason_ops(reasons, cleared)
        if not ops:
            return None
        try:
            revisions = await self.registry.apply_fenced(ops, fence)
        except LeadershipLost:
            log.warning("Engine: fenced write refused (fence %d): another engine leads; this pass stops here", fence)
            self._count_tasks(plan.actions, failed=True)
            self._deposed.set()
            return None
        except RegistryUnavailable:
            self._count_tasks(plan.actions, failed=True)
            raise
        self._count_tasks(plan.actions, failed=False)
        revision = revisions[-1]  # only this engine writes these keys: the newest revision is safe for all
        for action in plan.actions:
            tail = f"{action.entry.machine}/{action.entry.unit}"
            if isinstance(action, Unschedule):
                self._schedule.delete_local(tail, revision)
            else:
                self._schedule.set_local(tail, action.entry, revision)
        for unit, reason in reasons.items():
            self._reasons.set_local(unit, reason, revision)
        for unit in cleared:
            self._reasons.delete_local(unit, revision)
        verbose = len(plan.actions) <= 50
        for action in plan.actions:
            if verbose:
                log.info(
                    "EngineReconciler completed task: type=%s unit=%s machine=%s reason=%r",
                    type(action).__name__,
                    action.entry.unit,
                    action.entry.machine,
                    action.reason,
                )
        if not verbose:
            log.info("EngineReconciler completed %d tasks", len(plan.actions))
        return None
