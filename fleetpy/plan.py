"""Reconcile plans: what the engine and an agent should do next, as data.

Pure code: a plan is a function of a snapshot (what etcd and systemd say now) and returns actions, each with
a short English reason that ends up in the log. The loops observe, call these, and act; the next pass observes
again, so a plan never has to be complete, only correct: applying a plan and planning again gives nothing to
do (tests/unit/test_engine_plan.py and test_agent_plan.py state that as a property).

Engine plan, in phases (FLEET-SPEC §3.3–3.7 with the fixes of §9):

1. drop schedule entries that cannot stand: unit destroyed, desired ``inactive``, a template, machine gone;
2. accept the remaining entries machine by machine in unit-name order, each checked against the units
   accepted before it (conflicts, metadata, replaces), so of two entries that clash the first by name stays;
   a unit whose ``MachineOf`` peer is not on its machine is dropped (repeated until nothing changes);
3. give every eligible machine an entry for each ``Global`` unit: entries already there win; of two global
   units that conflict, one already placed somewhere goes first, then name order; a global unit that no
   machine can run gets a reason;
4. place the remaining units, in name order, on the least-loaded machine that passes every check; a unit
   that was displaced by a ``Replaces`` is placed again, with its own requirements, and so are the units
   that followed it there (``MachineOf``); a replaced global unit just leaves that machine; a unit still
   reported on another live machine waits until that machine has unloaded it (never on two machines at
   once), unless that machine is the only one reporting it and may run it, in which case it stays there;
   phases 3 and 4 run again while a displacement made room or a new global entry appeared;
5. bring kept entries up to date with their unit's hash and desired state.

The actions are netted to one per schedule key (a unit placed and displaced in one pass is not written).
Every unit that is wanted but placed nowhere has a reason that counts, per rule, the machines it ruled out;
``preview`` runs the same plan for units that are not submitted yet and explains every machine's verdict.

Agent plan: fleet's ordering (unload, load, reload, stop, start), executed until the first failure.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from fleetpy.errors import InvalidUnit
from fleetpy.model import DesiredState, Machine, MachineID, ScheduleEntry, UnitRecord
from fleetpy.scheduler import (
    LoadIndex,
    MachineView,
    Placed,
    Unplaceable,
    Verdict,
    check,
    choose,
    displaced,
    rank,
    summarize,
)
from fleetpy.unit import Requirements, name_info, requirements

# ------------------------------------------------------------------------------------------------------------
# Engine


@dataclass(frozen=True)
class ClusterSnapshot:
    """What the engine knows: units, live machines, the schedule, and where agents report units loaded."""

    units: Mapping[str, UnitRecord]
    machines: Mapping[MachineID, Machine]
    schedule: Mapping[MachineID, Mapping[str, ScheduleEntry]]
    reported: Mapping[str, frozenset[MachineID]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Schedule:
    entry: ScheduleEntry
    reason: str


@dataclass(frozen=True, slots=True)
class Unschedule:
    entry: ScheduleEntry
    reason: str


@dataclass(frozen=True, slots=True)
class Update:
    entry: ScheduleEntry
    reason: str


EngineAction = Schedule | Unschedule | Update


@dataclass(frozen=True)
class EnginePlan:
    actions: tuple[EngineAction, ...]
    unplaced: Mapping[str, str]  # unit → why no machine runs it
    # unit → how every machine fared, for the units the caller asked about (``explain``); least loaded first
    explanations: Mapping[str, tuple[Verdict, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.actions)


@lru_cache(maxsize=65536)
def _requirements(name: str, xfleet: tuple[tuple[str, str], ...]) -> Requirements:
    return requirements(xfleet, name)


def requirements_of(record: UnitRecord) -> Requirements:
    """The record's interpreted requirements (memoised: records are immutable and plans run often)."""
    return _requirements(record.name, record.requirements)


@lru_cache(maxsize=65536)
def _is_template(name: str) -> bool:
    try:
        return name_info(name).is_template
    except InvalidUnit:  # a stored name that is not a unit name is never placed
        return True


MAX_DISPLACEMENTS = 3
MAX_ROUNDS = 8


def engine_plan(
    snapshot: ClusterSnapshot,
    reqs_of: Callable[[UnitRecord], Requirements] = requirements_of,
    *,
    explain: frozenset[str] = frozenset(),
) -> EnginePlan:
    """The engine's next actions for ``snapshot`` (see the module docstring for the phases).

    ``explain`` names units whose every machine's verdict the plan should record (``EnginePlan.explanations``),
    as the scheduler saw them when it decided; the engine itself asks for none.
    """
    units = snapshot.units
    machines = snapshot.machines
    actions: list[EngineAction] = []
    reqs = {name: reqs_of(rec) for name, rec in units.items()}
    views = {mid: MachineView(machines[mid]) for mid in sorted(machines)}
    kept: dict[MachineID, dict[str, ScheduleEntry]] = {mid: {} for mid in views}
    placed_on: dict[str, MachineID] = {}  # non-global units only

    def wanted(name: str) -> bool:
        record = units.get(name)
        return record is not None and record.desired != DesiredState.INACTIVE and not _is_template(name)

    # Phase 1: entries that cannot stand.
    for mid in sorted(snapshot.schedule):
        for name in sorted(snapshot.schedule[mid]):
            entry = snapshot.schedule[mid][name]
            record = units.get(name)
            if record is None:
                reason = "unit destroyed"
            elif _is_template(name):
                reason = "templates are never placed"
            elif record.desired == DesiredState.INACTIVE:
                reason = "target state inactive"
            elif mid not in views:
                reason = f"target Machine({mid}) went away"
            elif not record.is_global and name in placed_on:
                reason = f"unit is already placed on Machine({placed_on[name]})"
            else:
                kept[mid][name] = entry
                if not record.is_global:
                    placed_on[name] = mid
                continue
            actions.append(Unschedule(entry, reason))

    # Phase 2: accept entries machine by machine, in name order.
    for mid, entries in kept.items():
        view = views[mid]
        for name in sorted(entries):
            if name not in entries:
                continue  # displaced by a unit accepted before it
            rejection = check(name, _without_peers(reqs[name]), view)
            if rejection is not None:
                reason = f"target Machine({mid}) unable to run unit: {rejection.message}"
                actions.append(Unschedule(entries.pop(name), reason))
                placed_on.pop(name, None)
                continue
            for other in displaced(name, reqs[name], view):
                actions.append(Unschedule(entries.pop(other), f"replaced by Unit({name})"))
                view.units.pop(other)
                placed_on.pop(other, None)
            view.units[name] = reqs[name]
    changed = True
    while changed:
        changed = False
        for mid, entries in kept.items():
            for name, peer in _stranded(views[mid]):
                actions.append(Unschedule(entries.pop(name), _peer_reason(mid, peer)))
                views[mid].units.pop(name)
                placed_on.pop(name, None)
                changed = True

    index = LoadIndex(views.values())

    def schedule(name: str, mid: MachineID, reason: str) -> None:
        record = units[name]
        entry = ScheduleEntry(name, mid, record.hash, record.desired)
        actions.append(Schedule(entry, reason))
        kept[mid][name] = entry
        index.add(mid, name, reqs[name])

    def unschedule(mid: MachineID, name: str, reason: str) -> None:
        actions.append(Unschedule(kept[mid].pop(name), reason))
        index.remove(mid, name)
        placed_on.pop(name, None)

    unplaced: dict[str, str] = {}
    displacements: dict[str, int] = {}
    explanations: dict[str, tuple[Verdict, ...]] = {}
    # Of two global units that conflict, the one already placed somewhere keeps its machines and is offered
    # new machines first (fleet let the first by name displace a running one, FLEET-SPEC §9.10); among units
    # placed nowhere yet, name order decides.
    established = {name for entries in kept.values() for name in entries if units[name].is_global}
    global_units = sorted(
        (n for n in units if units[n].is_global and wanted(n)), key=lambda n: (n not in established, n)
    )

    def place_globals() -> bool:
        """Phase 3: every global unit on every machine where it passes its checks."""
        added = False
        for name in global_units:
            for mid, view in views.items():
                if name not in view.units and check(name, reqs[name], view) is None:
                    schedule(name, mid, "global unit eligible on this machine")
                    added = True
        return added

    def place(queue: list[str]) -> bool:
        """Phase 4: each unit of ``queue`` on the least-loaded machine that passes its checks; whether any
        unit was displaced (which may make room for a unit that found no machine)."""
        freed = False
        while queue:
            retry: list[str] = []
            progress = False
            for name in queue:
                if name in explain:
                    explanations[name] = rank(name, reqs[name], index)
                elsewhere = sorted(snapshot.reported.get(name, frozenset()) & views.keys())
                if elsewhere:
                    # Still loaded on a live machine: never start a second copy. The unit may stay where it
                    # is if that machine is the only one reporting it and passes every check (a machine
                    # that came back with the unit still running); otherwise it waits for it to stop there.
                    here = views[elsewhere[0]]
                    if len(elsewhere) > 1 or check(name, reqs[name], here) is not None:
                        unplaced[name] = f"waiting for it to stop on Machine({elsewhere[0]})"
                        continue
                    decision: Placed | Unplaceable = Placed(here.id, tuple(displaced(name, reqs[name], here)))
                else:
                    decision = choose(name, reqs[name], index)
                if not isinstance(decision, Placed):
                    unplaced[name] = decision.reason
                    if reqs[name].peers:
                        retry.append(name)  # its peer may be placed later in this pass
                    continue
                unplaced.pop(name, None)
                schedule(name, decision.machine, f"target state {units[name].desired} and unit not scheduled")
                placed_on[name] = decision.machine
                progress = True
                freed = freed or bool(decision.displaces)
                for other in decision.displaces:
                    unschedule(decision.machine, other, f"replaced by Unit({name})")
                    if units[other].is_global:
                        continue  # it runs wherever it may; here it may not
                    displacements[other] = displacements.get(other, 0) + 1
                    if displacements[other] <= MAX_DISPLACEMENTS:
                        retry.append(other)
                    else:
                        unplaced[other] = "displaced too often by units that replace it"
                # Units that followed a displaced unit here must follow it elsewhere.
                while decision.displaces and (stranded := _stranded(views[decision.machine])):
                    for follower, peer in stranded:
                        unschedule(decision.machine, follower, _peer_reason(decision.machine, peer))
                        if not units[follower].is_global:
                            retry.append(follower)
            queue = sorted(set(retry)) if progress else []
        return freed

    def pending() -> list[str]:
        return sorted(
            n
            for n in units
            if not units[n].is_global
            and wanted(n)
            and n not in placed_on
            and displacements.get(n, 0) <= MAX_DISPLACEMENTS
        )

    # Phases 3 and 4, again while a displacement made room (for a global unit, or for a unit that conflicted
    # with the displaced one) or a global unit arrived (it may be a peer): the plan must leave nothing for the
    # next pass to do.
    place_globals()
    freed = place(pending())
    for _ in range(MAX_ROUNDS):
        if not (place_globals() or freed):
            break
        freed = place(pending())

    # A global unit that runs nowhere says why: every machine ruled it out.
    for name in global_units:
        if not any(name in view.units for view in views.values()):
            unplaced[name] = summarize(
                (r for v in views.values() if (r := check(name, reqs[name], v)) is not None), len(views)
            ).reason

    # Explanations the plan did not record when it decided (units kept where they are, global units): how
    # every machine fares against the planned result.
    for name in sorted(explain & units.keys()):
        if name not in explanations or units[name].is_global:
            explanations[name] = tuple(
                Verdict(v.id, v.load, None if name in v.units else check(name, reqs[name], v)) for v in index
            )

    # Phase 5: bring kept entries up to date.
    for mid, entries in kept.items():
        for name, entry in sorted(entries.items()):
            record = units[name]
            if (entry.hash, entry.desired) != (record.hash, record.desired):
                new = ScheduleEntry(name, mid, record.hash, record.desired)
                actions.append(Update(new, _update_reason(entry, record)))

    return EnginePlan(_net(actions, snapshot.schedule), unplaced, explanations)


def _stranded(view: MachineView) -> list[tuple[str, str]]:
    """Units on ``view`` whose ``MachineOf`` peer is not there, with the first missing peer, by name.

    A unit is not its own peer: ``check`` never places a unit that names itself, so one must not stay either.
    """
    result = []
    for name in sorted(view.units):
        missing = [p for p in view.units[name].peers if p not in view.units or p == name]
        if missing:
            result.append((name, missing[0]))
    return result


def _peer_reason(mid: MachineID, peer: str) -> str:
    return f"target Machine({mid}) unable to run unit: required peer Unit({peer}) is not scheduled locally"


def _net(
    actions: list[EngineAction], schedule: Mapping[MachineID, Mapping[str, ScheduleEntry]]
) -> tuple[EngineAction, ...]:
    """One action per schedule key, saying how the key ends up: a unit placed and then displaced in the same
    pass was never placed, one unscheduled and placed back on the same machine was never moved. (etcd also
    refuses a transaction that writes a key twice.)"""
    last: dict[tuple[MachineID, str], EngineAction] = {}
    for action in actions:
        key = (action.entry.machine, action.entry.unit)
        last.pop(key, None)  # keep the position of the last action on the key
        last[key] = action
    result: list[EngineAction] = []
    for (mid, name), action in last.items():
        stored = schedule.get(mid, {}).get(name)
        if isinstance(action, Unschedule):
            if stored is not None:
                result.append(Unschedule(stored, action.reason))
        elif stored is None:
            result.append(Schedule(action.entry, action.reason))
        elif stored != action.entry:
            reason = action.reason if isinstance(action, Update) else _update_reason(stored, action.entry)
            result.append(Update(action.entry, reason))
    return tuple(result)


def _without_peers(reqs: Requirements) -> Requirements:
    """Peers are checked after every entry is accepted, because a peer may sort after its follower."""
    if not reqs.peers:
        return reqs
    return Requirements(reqs.machine_id, (), reqs.metadata, reqs.conflicts, reqs.replaces, reqs.is_global)


def _update_reason(entry: ScheduleEntry, record: UnitRecord | ScheduleEntry) -> str:
    if entry.hash != record.hash:
        return f"unit replaced: hash {entry.hash[:7]} → {record.hash[:7]}"
    return f"target state {entry.desired} → {record.desired}"


def apply_engine_plan(snapshot: ClusterSnapshot, plan: EnginePlan) -> ClusterSnapshot:
    """The snapshot as it will be once the plan's writes are done (agents not yet caught up)."""
    schedule = {mid: dict(entries) for mid, entries in snapshot.schedule.items()}
    for action in plan.actions:
        entries = schedule.setdefault(action.entry.machine, {})
        if isinstance(action, Unschedule):
            entries.pop(action.entry.unit, None)
        else:
            entries[action.entry.unit] = action.entry
    return ClusterSnapshot(snapshot.units, snapshot.machines, schedule, snapshot.reported)


@dataclass(frozen=True, slots=True)
class UnitPreview:
    """Where one unit would run after the engine's next plan, and how every machine fared.

    ``machines`` is empty when it would run nowhere (``reason`` says why), and holds several machines for a
    global unit. ``kept`` says it is already placed there. ``verdicts`` lists every machine, least loaded
    first, with the check it fails (``None``: it passes every check).
    """

    unit: str
    machines: tuple[MachineID, ...]
    kept: bool
    reason: str
    verdicts: tuple[Verdict, ...]
    is_global: bool = False


@dataclass(frozen=True)
class Preview:
    units: tuple[UnitPreview, ...]
    actions: tuple[EngineAction, ...]  # every write the plan would make, also for other units


def preview(snapshot: ClusterSnapshot, records: Sequence[UnitRecord]) -> Preview:
    """What the engine would do if ``records`` were submitted as they are (replacing units of the same
    name): the plan, and for each record where it would go and why every other machine was not chosen."""
    units = dict(snapshot.units)
    for record in records:
        units[record.name] = record
    trial = ClusterSnapshot(units, snapshot.machines, snapshot.schedule, snapshot.reported)
    plan = engine_plan(trial, explain=frozenset(r.name for r in records))
    result = apply_engine_plan(trial, plan).schedule
    scheduled = {a.entry.unit for a in plan.actions if isinstance(a, Schedule)}
    previews = []
    for record in records:
        name = record.name
        machines = tuple(sorted(mid for mid, entries in result.items() if name in entries))
        if machines:
            reason = ""
        elif _is_template(name):
            reason = "templates are never placed"
        elif record.desired == DesiredState.INACTIVE:
            reason = "target state inactive"
        else:
            reason = plan.unplaced.get(name, "")
        kept = bool(machines) and name not in scheduled
        verdicts = plan.explanations.get(name, ())
        previews.append(UnitPreview(name, machines, kept, reason, verdicts, record.is_global))
    return Preview(tuple(previews), plan.actions)


# ------------------------------------------------------------------------------------------------------------
# Agent


class ActionKind(enum.IntEnum):
    """Agent actions; the value is the execution order within one plan."""

    UNLOAD = 1
    LOAD = 2
    RELOAD = 3
    STOP = 4
    START = 5


@dataclass(frozen=True, slots=True)
class Desired:
    hash: str
    state: DesiredState


@dataclass(frozen=True, slots=True)
class Current:
    hash: str
    achieved: DesiredState


@dataclass(frozen=True, slots=True)
class AgentAction:
    kind: ActionKind
    unit: str
    reason: str
    hash: str = ""


def agent_plan(desired: Mapping[str, Desired], current: Mapping[str, Current]) -> list[AgentAction]:
    """fleet's agent reconciler (§3.8): actions ordered unload, load, reload, stop, start."""
    actions: list[AgentAction] = []
    for name in sorted(desired.keys() | current.keys()):
        want = desired.get(name)
        have = current.get(name)
        if want is None or want.state == DesiredState.INACTIVE:
            if have is not None:
                actions.append(AgentAction(ActionKind.UNLOAD, name, "unit loaded but not scheduled here"))
            continue
        launch = want.state == DesiredState.LAUNCHED
        if have is None or have.hash != want.hash:
            if have is not None:
                actions.append(AgentAction(ActionKind.UNLOAD, name, "unit loaded but hash differs to expected"))
            actions.append(AgentAction(ActionKind.LOAD, name, "unit scheduled here but not loaded", want.hash))
            if launch:
                actions.append(
                    AgentAction(ActionKind.START, name, "unit currently loaded but desired state is launched")
                )
        elif have.achieved == DesiredState.INACTIVE:
            # A file the agent has not loaded itself (fleet: not in its cache): load it, then start it if wanted.
            actions.append(AgentAction(ActionKind.LOAD, name, "unit scheduled here but not loaded", want.hash))
            if launch:
                actions.append(
                    AgentAction(ActionKind.START, name, "unit currently loaded but desired state is launched")
                )
        elif launch and have.achieved != DesiredState.LAUNCHED:
            actions.append(AgentAction(ActionKind.START, name, "unit currently loaded but desired state is launched"))
        elif not launch and have.achieved == DesiredState.LAUNCHED:
            actions.append(AgentAction(ActionKind.STOP, name, "unit currently launched but desired state is loaded"))
    if any(a.kind in (ActionKind.LOAD, ActionKind.UNLOAD) for a in actions):
        actions.append(AgentAction(ActionKind.RELOAD, "", "unit files changed"))
    actions.sort(key=lambda a: a.kind)
    return actions


def apply_agent_action(current: dict[str, Current], action: AgentAction) -> None:
    """Record in ``current`` what a successful action achieved (the agent's own bookkeeping)."""
    if action.kind == ActionKind.UNLOAD:
        current.pop(action.unit, None)
    elif action.kind == ActionKind.LOAD:
        current[action.unit] = Current(action.hash, DesiredState.LOADED)
    elif action.kind == ActionKind.START:
        current[action.unit] = Current(current[action.unit].hash, DesiredState.LAUNCHED)
    elif action.kind == ActionKind.STOP:
        current[action.unit] = Current(current[action.unit].hash, DesiredState.LOADED)
