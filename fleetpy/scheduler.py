"""Placement decisions: feasibility checks, then least-loaded ranking (FLEET-SPEC §3.5–3.6).

Pure code. A unit may run on a machine when every check passes; each check that fails says which rule
failed and why, in fleet's words, so "why is my unit not placed?" always has an answer. Among the machines
that pass, the one with the fewest units wins, ties broken by machine ID: fleet's "least loaded" rule,
deterministic because no choice depends on dict or set order.

``LoadIndex`` keeps machines grouped by load so that choosing a machine does not sort the whole cluster for
every unit (10,000 units on 1,000 machines must plan in well under a second).
"""

from __future__ import annotations

import bisect
import enum
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from fleetpy.model import Machine, MachineID, short_id
from fleetpy.unit import MetadataRule, Requirements, go_quote, path_match, policy_refusal


class Rule(enum.StrEnum):
    """The requirement a rejection comes from, named as in ``[X-Fleet]``."""

    MACHINE_ID = "MachineID"
    METADATA = "MachineMetadata"
    PEERS = "MachineOf"
    CONFLICTS = "Conflicts"
    REPLACES = "Replaces"
    POLICY = "UnitPolicy"  # fleetpy's: the machine's unit_allow/unit_deny, or its agent refused the unit


@dataclass(frozen=True, slots=True)
class Rejection:
    rule: Rule
    message: str


@dataclass
class MachineView:
    """A machine and the units placed on it (name → requirements) as the engine sees them now."""

    machine: Machine
    units: dict[str, Requirements] = field(default_factory=dict)

    @property
    def id(self) -> MachineID:
        return self.machine.id

    @property
    def load(self) -> int:
        return len(self.units)


# ------------------------------------------------------------------------------------------------------------
# Checks


@lru_cache(maxsize=4096)
def _regex(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def rule_holds(rule: MetadataRule, metadata: Mapping[str, str]) -> bool:
    """Whether one metadata rule holds on a machine with ``metadata`` (see ``unit.MetadataRule``)."""
    have = metadata.get(rule.key)
    if rule.op == "!=":
        return have != rule.value
    if have is None:
        return False
    if rule.op == "=":
        return have == rule.value
    if rule.op == "=~":
        regex = _regex(rule.value)
        return regex is not None and regex.fullmatch(have) is not None
    left, right = _number(have), _number(rule.value)
    if left is None or right is None:
        return False
    if rule.op == ">":
        return left > right
    if rule.op == ">=":
        return left >= right
    if rule.op == "<":
        return left < right
    return left <= right


def metadata_matches(rules: Iterable[MetadataRule], metadata: Mapping[str, str]) -> bool:
    """fleet's rule for ``key=value``: values of one key are OR-ed, keys AND-ed. ``=~`` joins the OR group
    of its key; every other operator must hold on its own."""
    groups: dict[str, bool] = {}
    for rule in rules:
        if rule.op in ("=", "=~"):
            groups[rule.key] = groups.get(rule.key, False) or rule_holds(rule, metadata)
        elif not rule_holds(rule, metadata):
            return False
    return all(groups.values())


def machine_id_matches(required: str, machine: MachineID) -> bool:
    """fleet's ``MatchID``: the full ID or its 8-character short form."""
    return required in (machine, short_id(machine))


def conflicts_between(name: str, reqs: Requirements, other: str, other_reqs: Requirements) -> bool:
    """A conflict either way: one unit's ``Conflicts`` globs match the other's name."""
    return any(path_match(p, other) for p in reqs.conflicts) or any(path_match(p, name) for p in other_reqs.conflicts)


def replaces(reqs: Requirements, other: str) -> bool:
    return any(path_match(p, other) for p in reqs.replaces)


def check(name: str, reqs: Requirements, view: MachineView) -> Rejection | None:
    """fleet's ``AbleToRun`` for placement: ``None`` when ``name`` may run on ``view``'s machine.

    A unit may land where a unit it replaces sits (that unit is moved away); it may not land where a unit
    that replaces it sits. The messages are fleet's (FLEET-SPEC §3.5).
    """
    machine = view.machine
    if machine.refused or machine.unit_allow or machine.unit_deny:
        refusal = machine.refused.get(name) or policy_refusal(name, machine.unit_allow, machine.unit_deny)
        if refusal:
            return Rejection(Rule.POLICY, f"the machine refuses it: {refusal}")
    if reqs.machine_id is not None and not machine_id_matches(reqs.machine_id, machine.id):
        return Rejection(
            Rule.MACHINE_ID, f"agent ID {go_quote(machine.id)} does not match required {go_quote(reqs.machine_id)}"
        )
    if reqs.metadata and not metadata_matches(reqs.metadata, machine.metadata):
        return Rejection(Rule.METADATA, "local Machine metadata insufficient")
    for peer in reqs.peers:
        if peer not in view.units:
            return Rejection(Rule.PEERS, f"required peer Unit({peer}) is not scheduled locally")
    if reqs.conflicts or reqs.replaces:
        others = sorted(other for other in view.units if other != name)
    else:
        # Only units with patterns of their own can object to a unit without any: skip the others (most units,
        # in most clusters) without building a generator per pair.
        others = sorted(o for o, r in view.units.items() if (r.conflicts or r.replaces) and o != name)
    # fleet checks every conflict before any replace (§3.5 steps 4 and 5), so a machine that fails both is
    # counted against Conflicts.
    for other in others:
        if conflicts_between(name, reqs, other, view.units[other]):
            return Rejection(Rule.CONFLICTS, f"found conflict with locally-scheduled Unit({other})")
    for other in others:
        if replaces(view.units[other], other=name) and not replaces(reqs, other):
            return Rejection(Rule.REPLACES, f"found replace with locally-scheduled Unit({other})")
    return None


def displaced(name: str, reqs: Requirements, view: MachineView) -> list[str]:
    """Units on ``view`` that ``name`` replaces (and that do not replace it back), sorted.

    A replaced global unit is displaced too: ``check`` keeps it off a machine where a unit that replaces it
    runs, so it must leave when such a unit arrives, or the machine would hold what no plan would create.
    """
    if not reqs.replaces:
        return []
    return [
        other
        for other in sorted(view.units)
        if other != name and replaces(reqs, other) and not replaces(view.units[other], name)
    ]


# ------------------------------------------------------------------------------------------------------------
# Ranking


class LoadIndex:
    """Machines grouped by load, each group sorted by ID: iteration yields fleet's least-loaded order."""

    def __init__(self, views: Iterable[MachineView]) -> None:
        self.views: dict[MachineID, MachineView] = {}
        self._buckets: dict[int, list[MachineID]] = {}
        for view in views:
            self.views[view.id] = view
            self._buckets.setdefault(view.load, []).append(view.id)
        for bucket in self._buckets.values():
            bucket.sort()

    def __len__(self) -> int:
        return len(self.views)

    def __iter__(self) -> Iterator[MachineView]:
        for load in sorted(self._buckets):
            for machine in tuple(self._buckets[load]):
                yield self.views[machine]

    def _move(self, view: MachineView, old_load: int) -> None:
        bucket = self._buckets[old_load]
        del bucket[bisect.bisect_left(bucket, view.id)]
        if not bucket:
            del self._buckets[old_load]
        bisect.insort(self._buckets.setdefault(view.load, []), view.id)

    def add(self, machine: MachineID, unit: str, reqs: Requirements) -> None:
        view = self.views[machine]
        old = view.load
        view.units[unit] = reqs
        if view.load != old:
            self._move(view, old)

    def remove(self, machine: MachineID, unit: str) -> None:
        view = self.views[machine]
        old = view.load
        view.units.pop(unit, None)
        if view.load != old:
            self._move(view, old)


@dataclass(frozen=True, slots=True)
class Placed:
    machine: MachineID
    displaces: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Unplaceable:
    """No machine can run the unit. ``counts`` says, per rule, how many machines it ruled out."""

    reason: str
    counts: tuple[tuple[str, int], ...] = ()
    examples: tuple[tuple[str, str], ...] = ()


NO_MACHINES = "zero agents available"


def describe(counts: Mapping[Rule, int], examples: Mapping[Rule, str], total: int) -> str:
    parts = [
        f"{rule.value} ruled out {count} of {total} machine{'s' if total != 1 else ''} ({examples[rule]})"
        for rule, count in sorted(counts.items(), key=lambda item: list(Rule).index(item[0]))
    ]
    return "no machine can run it: " + "; ".join(parts)


class _Tally:
    """Rejections counted per rule, with the first message of each rule as its example."""

    def __init__(self) -> None:
        self.counts: dict[Rule, int] = {}
        self.examples: dict[Rule, str] = {}

    def add(self, rule: Rule, message: str, count: int = 1) -> None:
        self.counts[rule] = self.counts.get(rule, 0) + count
        self.examples.setdefault(rule, message)

    def unplaceable(self, total: int) -> Unplaceable:
        return Unplaceable(
            describe(self.counts, self.examples, total),
            tuple((rule.value, count) for rule, count in self.counts.items()),
            tuple((rule.value, message) for rule, message in self.examples.items()),
        )


def summarize(rejections: Iterable[Rejection], total: int) -> Unplaceable:
    """Why a unit runs on none of ``total`` machines, each of which rejected it."""
    if not total:
        return Unplaceable(NO_MACHINES)
    tally = _Tally()
    for rejection in rejections:
        tally.add(rejection.rule, rejection.message)
    return tally.unplaceable(total)


def choose(name: str, reqs: Requirements, index: LoadIndex) -> Placed | Unplaceable:
    """The least-loaded machine that passes every check, or why there is none."""
    total = len(index)
    if not total:
        return Unplaceable(NO_MACHINES)
    tally = _Tally()
    candidates: Iterable[MachineView] = index
    if reqs.machine_id is not None:
        # Pinned: at most one machine can pass; look it up instead of scanning the cluster.
        pinned = reqs.machine_id
        candidates = sorted(
            (v for v in index.views.values() if machine_id_matches(pinned, v.id)), key=lambda v: (v.load, v.id)
        )
        if total > len(candidates):
            tally.add(Rule.MACHINE_ID, f'agent ID does not match required "{pinned}"', total - len(candidates))
    for view in candidates:
        rejection = check(name, reqs, view)
        if rejection is None:
            return Placed(view.id, tuple(displaced(name, reqs, view)))
        tally.add(rejection.rule, rejection.message)
    return tally.unplaceable(total)


@dataclass(frozen=True, slots=True)
class Verdict:
    """How one machine fares for one unit: its load then, and the check it fails (``None``: it passes all)."""

    machine: MachineID
    load: int
    rejection: Rejection | None = None


def rank(name: str, reqs: Requirements, index: LoadIndex) -> tuple[Verdict, ...]:
    """Every machine, in the order ``choose`` considers them, with the check it fails: the first machine that
    passes is the one ``choose`` picks. For explanations (``fleetpyctl plan``); it checks every machine."""
    return tuple(Verdict(view.id, view.load, check(name, reqs, view)) for view in index)
