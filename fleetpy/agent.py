"""The agent: makes this machine's systemd run what the schedule places here, and reports what it runs.

* ``Presence`` keeps the machine registered: its key on a lease that a task keeps alive. A lost lease means
  registering again (and publishing every unit state again), never stopping units. A restarted daemon takes
  its own lease back from a file in its runtime directory, so a restart is invisible to the cluster; a live
  registration of the same machine ID by another daemon is refused.
* ``Agent`` mirrors only ``schedule/<this machine>/`` and reconciles it with the unit files it wrote: the pure
  ``plan.agent_plan`` gives ordered actions, executed until the first failure. When etcd cannot be reached the
  mirror keeps what it last saw, so nothing is stopped for that reason. At start the agent adopts what its
  unit directory holds: a running unit counts as launched and is not restarted.
* Unit states come from systemd's ``PropertiesChanged`` signals; changed states are published in batches on the
  machine lease, so they vanish with the machine and need no periodic refresh.
* What this machine will not run (docs/security.md): a unit whose name its ``unit_allow``/``unit_deny`` globs
  exclude, and a unit whose name the host already has from a file fleetpy did not write (systemd's
  ``FragmentPath``), which fleetpy must never shadow or replace. The agent never loads such a unit, logs why
  once, and publishes its refusals and globs in the machine record, where the engine's ``UnitPolicy`` check
  reads them: the unit is placed elsewhere, or its reason says which machines refused it. A collision is
  checked again every resync, so a refusal ends when the host's own unit goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable

from fleetpy import __version__
from fleetpy.errors import ConfigError, FleetError, InvalidUnit, RegistryUnavailable, SystemdError, SystemdUnavailable
from fleetpy.loop import Reconciler
from fleetpy.metrics import Metrics
from fleetpy.model import DesiredState, Machine, MachineID, UnitState
from fleetpy.plan import ActionKind, AgentAction, Current, Desired, agent_plan, apply_agent_action
from fleetpy.registry.base import AgentRegistry, PresenceRegistry
from fleetpy.retry import until_success
from fleetpy.systemd.base import Systemd
from fleetpy.systemd.unitdir import UnitDirectory
from fleetpy.unit import UnitFile, hash_text, policy_refusal

log = logging.getLogger(__name__)

SETTLE = 0.1  # seconds the agent lets a burst of changes gather before it acts or publishes


class MachineInUse(ConfigError):
    """Another live fleetpyd has registered this machine ID."""


class Presence:
    """This machine's registration in etcd."""

    def __init__(self, registry: PresenceRegistry, machine: Machine, *, ttl: int, lease_file: str | None) -> None:
        self.registry = registry
        self.machine = machine
        self.ttl = ttl
        self.lease_file = lease_file
        self.lease = 0
        self.registered = asyncio.Event()
        self._on_new_lease: list[Callable[[], None]] = []
        self._record_stale = False

    def on_new_lease(self, callback: Callable[[], None]) -> None:
        self._on_new_lease.append(callback)

    async def update(self, machine: Machine) -> None:
        """Publish a changed machine record (metadata, refusals) on the current lease. If etcd cannot take it
        now, the keep-alive loop writes it once etcd answers."""
        self.machine = machine
        self._record_stale = True
        if self.registered.is_set():
            with contextlib.suppress(RegistryUnavailable):
                await self.registry.register_machine(machine, self.lease)
                self._record_stale = False

    def _saved_lease(self) -> int:
        if not self.lease_file:
            return 0
        try:
            with open(self.lease_file) as handle:
                return int(handle.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _save_lease(self) -> None:
        if self.lease_file:
            os.makedirs(os.path.dirname(self.lease_file), exist_ok=True)
            with open(self.lease_file, "w") as handle:
                handle.write(f"{self.lease}\n")

    async def establish(self) -> None:
        """Register, retrying while etcd is unreachable. ``MachineInUse`` if another daemon holds the ID."""
        async for attempt in until_success(RegistryUnavailable, log=log, what=f"registering machine {self.machine.id}"):
            with attempt:
                await self._establish_once()

    async def _establish_once(self) -> None:
        saved = self._saved_lease()
        current = await self.registry.machine_lease(self.machine.id)
        if saved and current == saved and await self.registry.keepalive_lease(saved) > 0:
            self.lease = saved
            log.info("machine %s: took back registration lease %x", self.machine.id, saved)
        else:
            if current is not None and current != saved:
                await self._check_foreign(current)
            self.lease = await self.registry.grant_lease(self.ttl)
        await self.registry.register_machine(self.machine, self.lease)
        self._save_lease()
        self.registered.set()
        log.info("machine %s registered (agent TTL %ds)", self.machine.id, self.ttl)

    async def _check_foreign(self, lease: int) -> None:
        """A registration we did not make: refuse if someone keeps it alive, otherwise clear it."""
        first = await self.registry.lease_ttl(lease)
        if first > 0:
            wait = self.ttl / 3 + 1
            log.info(
                "machine %s is registered by lease %x: checking whether it is alive (%.0fs)",
                self.machine.id,
                lease,
                wait,
            )
            await asyncio.sleep(wait)
            second = await self.registry.lease_ttl(lease)
            if second > first - wait + 1.5:
                raise MachineInUse(
                    f"machine ID {self.machine.id} is already in use by a running fleetpyd (its registration is "
                    "being kept alive); give this host its own ID with machine_id or --machine-id"
                )
            with contextlib.suppress(RegistryUnavailable):
                await self.registry.revoke_lease(lease)
            log.info("machine %s: cleared a stale registration (lease %x)", self.machine.id, lease)

    async def run(self) -> None:
        """Keep the lease alive at a third of its TTL; register again if it was lost."""
        failing_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.ttl / 3 if failing_since is None else 0.5)
            try:
                remaining = await self.registry.keepalive_lease(self.lease)
                if remaining <= 0:
                    log.warning("machine %s: registration lease expired; registering again", self.machine.id)
                    self.registered.clear()
                    self.lease = await self.registry.grant_lease(self.ttl)
                    await self.registry.register_machine(self.machine, self.lease)
                    self._save_lease()
                    self.registered.set()
                    for callback in self._on_new_lease:
                        callback()
                elif self._record_stale:
                    await self.registry.register_machine(self.machine, self.lease)
                self._record_stale = False
                if failing_since is not None:
                    log.info(
                        "machine %s: etcd reachable again after %.1fs", self.machine.id, loop.time() - failing_since
                    )
                failing_since = None
            except RegistryUnavailable as exc:
                if failing_since is None:
                    failing_since = loop.time()
                    log.warning("machine %s: cannot refresh registration: %s", self.machine.id, exc)

    async def leave(self) -> None:
        """Deregister: the machine key and its unit states go at once (graceful shutdown)."""
        with contextlib.suppress(RegistryUnavailable):
            await self.registry.deregister_machine(self.machine.id)
            await self.registry.revoke_lease(self.lease)
        if self.lease_file:
            with contextlib.suppress(OSError):
                os.unlink(self.lease_file)


class Agent:
    def __init__(
        self,
        *,
        registry: AgentRegistry,
        systemd: Systemd,
        unitdir: UnitDirectory,
        presence: Presence,
        interval: float = 5.0,
        resync_interval: float = 60.0,
        metrics: Metrics | None = None,
        unit_allow: tuple[str, ...] = (),
        unit_deny: tuple[str, ...] = (),
    ) -> None:
        self.registry = registry
        self.unit_allow = unit_allow
        self.unit_deny = unit_deny
        self.refused: dict[str, str] = {}  # unit → why: the host has a unit of that name fleetpy did not write
        self._announced: dict[str, str] = {}  # refusals already logged
        self.systemd = systemd
        self.unitdir = unitdir
        self.presence = presence
        self.machine: MachineID = presence.machine.id
        self.interval = interval
        self.resync_interval = resync_interval
        self.current: dict[str, Current] = {}
        self.adopted = asyncio.Event()
        self._schedule = registry.schedule_prefix(self.machine)
        self._mirror = registry.mirror([self._schedule])
        self.metrics = metrics
        # A short settle gathers the schedule entries the engine writes in one burst into one pass (one read of
        # their bodies, one batch of actions); a burst of systemd signals is likewise published in one batch.
        self.reconciler = Reconciler(
            "agent", self._pass, interval=interval, wake=self._mirror.changed, metrics=metrics, settle=SETTLE
        )
        self._converging: dict[str, tuple[Desired, float]] = {}  # unit → the target not yet achieved, since when
        self._dirty: set[str] = set()
        self._report = asyncio.Event()
        self._published: dict[str, UnitState] = {}
        systemd.on_change(self._on_systemd_change)
        presence.on_new_lease(self._republish_all)

    @property
    def watching(self) -> asyncio.Event:
        """Set once the agent's watch on its schedule is established."""
        return self._mirror.watching

    @property
    def watch_events(self) -> int:
        """Watch events this agent has received: only its own schedule's, by construction."""
        return self._mirror.events

    # ------------------------------------------------------------------ start-up

    async def connect_systemd(self) -> None:
        async for attempt in until_success(SystemdUnavailable, log=log, what="connecting to systemd"):
            with attempt:
                await self.systemd.connect()

    async def adopt(self) -> None:
        """Take over what the unit directory holds: running units count as launched and keep running."""
        self.unitdir.ensure()
        files = self.unitdir.units()
        statuses = await self.systemd.statuses(sorted(files))
        self.current.clear()
        for name, unit_hash in sorted(files.items()):
            status = statuses.get(name)
            if status is None or status.load == "not-found":
                continue  # the file is there but systemd does not know it: load it again
            achieved = DesiredState.LAUNCHED if status.running else DesiredState.LOADED
            self.current[name] = Current(unit_hash, achieved)
            log.info("agent: adopted %s (%s, %s/%s)", name, achieved, status.active, status.sub)
        self._dirty |= set(self.current)
        self._report.set()
        self.adopted.set()

    async def _clear_stale_states(self) -> None:
        """Unit states this machine published before a restart for units it no longer has."""
        await self.presence.registered.wait()
        async for attempt in until_success(RegistryUnavailable, log=log, what="clearing stale unit states"):
            with attempt:
                stale = [s.unit for s in await self.registry.list_states(self.machine) if s.unit not in self.current]
                if stale:
                    await self.registry.publish_states(self.machine, self.presence.lease, [], stale)

    async def run(self) -> None:
        await self.connect_systemd()
        await self.adopt()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._mirror.run())
            group.create_task(self.reconciler.run())
            group.create_task(self._report_loop())
            group.create_task(self._clear_stale_states())
            group.create_task(self._resync_loop())

    # ------------------------------------------------------------------ reconcile

    async def _pass(self) -> float | None:
        if not self._mirror.loaded.is_set():
            return None  # nothing known about the schedule yet: never act on no data
        desired = {name: Desired(e.hash, e.desired) for name, e in self._schedule.items.items()}
        try:
            desired = await self._admit(desired)
        except SystemdUnavailable:
            await self.connect_systemd()
            return 0.5
        self._note_targets(desired)
        try:
            return await self._act(desired)
        finally:
            self._note_achieved()

    def owns(self, name: str) -> bool:
        """Whether ``name`` is a unit fleetpy runs or schedules on this machine (the inspector answers only
        for those)."""
        return name in self.current or name in self._schedule.items

    # ------------------------------------------------------------------ what this machine refuses

    async def _admit(self, desired: dict[str, Desired]) -> dict[str, Desired]:
        """``desired`` without the units this machine refuses; refusals are logged once and published."""
        refusals: dict[str, str] = {}
        before = dict(self.refused)
        for name in sorted(desired):
            reason = policy_refusal(name, self.unit_allow, self.unit_deny) or self.refused.get(name, "")
            if reason:
                refusals[name] = reason
        # Units about to be loaded for the first time: one listing says which names systemd already knows
        # (most are unknown); only those are looked at more closely.
        new = sorted(n for n in desired if n not in self.current and n not in refusals)
        known = (
            [n for n, status in (await self.systemd.statuses(new)).items() if status.load != "not-found"] if new else []
        )
        for name in known:
            reason = await self._collision(name)
            if reason:
                self.refused[name] = refusals[name] = reason
        for name, reason in sorted(refusals.items()):
            if self._announced.get(name) != reason:
                log.warning("agent: refusing unit %s: %s", name, reason)
        self._announced = refusals
        if self.refused != before:
            await self.publish_policy()
        return {name: want for name, want in desired.items() if name not in refusals}

    async def _collision(self, name: str) -> str:
        """Why ``name`` must not be loaded here because the host has it from elsewhere; ``""`` if it may."""
        try:
            origin = await self.systemd.origin(name)
        except SystemdError:
            return ""  # systemd cannot look it up: loading it will fail and say why
        if origin.load == "not-found":
            return ""
        if origin.fragment and self.unitdir.wrote(name, origin.fragment):
            return ""
        source = origin.fragment or f"{origin.load}, without a unit file"
        return f"the host already has {name} ({source}), which fleetpy did not write"

    async def set_policy(self, unit_allow: tuple[str, ...], unit_deny: tuple[str, ...]) -> None:
        """New ``unit_allow``/``unit_deny`` (SIGHUP): published, and the next pass unloads what they exclude."""
        self.unit_allow, self.unit_deny = unit_allow, unit_deny
        await self.publish_policy()
        self.reconciler.wake()

    async def publish_policy(self) -> None:
        machine = dataclasses.replace(
            self.presence.machine, unit_allow=self.unit_allow, unit_deny=self.unit_deny, refused=dict(self.refused)
        )
        if machine != self.presence.machine:
            await self.presence.update(machine)

    async def _recheck_collisions(self) -> None:
        """Drop refusals whose colliding unit the host no longer has."""
        for name in sorted(self.refused):
            if not await self._collision(name):
                log.info("agent: the host no longer has its own %s: this machine may run it again", name)
                del self.refused[name]
        await self.publish_policy()

    def _note_targets(self, desired: dict[str, Desired]) -> None:
        """Remember when each new target (hash and desired state) was first seen, for the convergence metric."""
        now = time.monotonic()
        for name in [n for n in self._converging if n not in desired]:
            del self._converging[name]
        for name, want in desired.items():
            if want.state == DesiredState.INACTIVE or self._achieved(name, want):
                self._converging.pop(name, None)
            elif name not in self._converging or self._converging[name][0] != want:
                self._converging[name] = (want, now)

    def _achieved(self, name: str, want: Desired) -> bool:
        have = self.current.get(name)
        return have is not None and have.hash == want.hash and have.achieved == want.state

    def _note_achieved(self) -> None:
        now = time.monotonic()
        for name, (want, since) in list(self._converging.items()):
            if self._achieved(name, want):
                del self._converging[name]
                if self.metrics is not None:
                    self.metrics.convergence.observe(now - since)

    async def _act(self, desired: dict[str, Desired]) -> float | None:
        actions = agent_plan(desired, self.current)
        # Fetch every body this pass loads in a few reads rather than one read per unit.
        await self.registry.get_bodies(a.hash for a in actions if a.kind == ActionKind.LOAD)
        for action in actions:
            try:
                await self._execute(action)
            except SystemdUnavailable:
                await self.connect_systemd()
                return 0.5
            except (SystemdError, InvalidUnit, BodyMissing, OSError) as exc:
                log.error(
                    "agent: task failed: type=%s job=%s reason=%r: %s",
                    action.kind.name,
                    action.unit,
                    action.reason,
                    exc,
                )
                return 2.0
            log.info(
                "AgentReconciler completed task: type=%s job=%s reason=%r",
                action.kind.name,
                action.unit or "-",
                action.reason,
            )
            apply_agent_action(self.current, action)
            if action.unit:
                self._dirty.add(action.unit)
                self._report.set()
        return None

    async def _execute(self, action: AgentAction) -> None:
        name = action.unit
        if action.kind == ActionKind.LOAD:
            body = await self.registry.get_body(action.hash)
            if body is None or hash_text(body) != action.hash:
                raise BodyMissing(f"body {action.hash[:7]} of {name} is missing or damaged in etcd")
            path = self.unitdir.write(name, body)
            await self.systemd.link([path])
            if UnitFile.from_text(body).has_install_section:
                try:
                    await self.systemd.enable([path])
                except SystemdError:
                    self.unitdir.remove(name)
                    await self.systemd.disable([name])
                    raise
        elif action.kind == ActionKind.UNLOAD:
            await self.systemd.stop(name)
            await self.systemd.disable([name])
            await self.systemd.reset_failed(name)
            self.unitdir.remove(name)
        elif action.kind == ActionKind.RELOAD:
            await self.systemd.reload()
        elif action.kind == ActionKind.START:
            # systemd keeps a unit that failed before "failed" until its start job runs, which can wait behind
            # other jobs; published meanwhile with the unit launched, that old failure would look like a new one.
            await self.systemd.reset_failed(name)
            await self.systemd.start(name)
        elif action.kind == ActionKind.STOP:
            await self.systemd.stop(name)

    async def stop_all(self) -> None:
        """Stop and unload every unit this agent runs (graceful shutdown, as fleet's Purge)."""
        for action in agent_plan({}, self.current):
            try:
                await self._execute(action)
                apply_agent_action(self.current, action)
            except FleetError as exc:
                log.error("agent: during shutdown, %s of %s failed: %s", action.kind.name, action.unit, exc)

    # ------------------------------------------------------------------ unit states

    def _on_systemd_change(self, name: str) -> None:
        if name in self.current or name in self._published:
            self._dirty.add(name)
            self._report.set()

    def _republish_all(self) -> None:
        self._published.clear()
        self._dirty |= set(self.current)
        self._report.set()

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync_interval)
            self._dirty |= set(self.current) | set(self._published)
            self._report.set()
            if self.refused:
                with contextlib.suppress(SystemdUnavailable):
                    await self._recheck_collisions()

    async def _report_loop(self) -> None:
        while True:
            await self._report.wait()
            await asyncio.sleep(SETTLE)  # gather a burst of signals (a load, then a start) into one batch
            self._report.clear()
            names, self._dirty = self._dirty, set()
            # Names marked dirty while this batch is published stay in self._dirty for the next round: a
            # state read before a change must never clear the mark the change left.
            async for attempt in until_success(
                RegistryUnavailable, SystemdUnavailable, log=log, what="publishing unit states", cap=2.0
            ):
                with attempt:
                    await self.systemd.connect()
                    await self._publish(names)

    async def _publish(self, names: set[str]) -> None:
        await self.presence.registered.wait()
        managed = sorted(n for n in names if n in self.current)
        statuses = await self.systemd.statuses(managed)
        puts: list[UnitState] = []
        for name in managed:
            status = statuses.get(name)
            current = self.current.get(name)
            if status is None or current is None:
                continue  # unloaded while systemd answered: it is published as removed below
            state = UnitState(
                name, self.machine, status.load, status.active, status.sub, current.hash, current.achieved
            )
            if self._published.get(name) != state:
                puts.append(state)
        removed = sorted(n for n in names if n not in self.current and n in self._published)
        if not puts and not removed:
            return
        await self.registry.publish_states(self.machine, self.presence.lease, puts, removed)
        for state in puts:
            self._published[state.unit] = state
        for name in removed:
            self._published.pop(name, None)


class BodyMissing(FleetError):
    """A schedule entry names a body that etcd does not hold (yet)."""


def local_machine(
    machine_id: str,
    public_ip: str,
    metadata: dict[str, str],
    *,
    unit_allow: tuple[str, ...] = (),
    unit_deny: tuple[str, ...] = (),
) -> Machine:
    return Machine(MachineID(machine_id), public_ip, metadata, __version__, {}, unit_allow, unit_deny)
