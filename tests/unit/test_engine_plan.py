"""The engine plan: fleet's scheduling rules table by table, then safety and convergence properties over
generated clusters (FLEET-SPEC §3.3–3.7, with the fixes of §9)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetpy.model import DesiredState, Machine, MachineID, ScheduleEntry, UnitRecord
from fleetpy.plan import (
    ClusterSnapshot,
    EngineAction,
    EnginePlan,
    Schedule,
    UnitPreview,
    Unschedule,
    Update,
    apply_engine_plan,
    engine_plan,
    preview,
    requirements_of,
)
from fleetpy.scheduler import MachineView, Rejection, Rule, Verdict, check, conflicts_between
from fleetpy.unit import UnitFile, name_info, validate_requirements

LAUNCHED, LOADED, INACTIVE = DesiredState.LAUNCHED, DesiredState.LOADED, DesiredState.INACTIVE


def unit(name: str, xfleet: str = "", desired: DesiredState = LAUNCHED, body: str = "") -> UnitRecord:
    text = f"[Service]\nExecStart=/bin/echo {body or name}\n"
    if xfleet:
        text += "[X-Fleet]\n" + xfleet
    parsed = UnitFile.from_text(text)
    return UnitRecord(name, parsed.hash, desired, parsed.is_global, parsed.xfleet)


def machine(mid: str, **metadata: str) -> Machine:
    return Machine(MachineID(mid), metadata=metadata)


def cluster(
    units: Iterable[UnitRecord],
    machines: Iterable[Machine | str],
    placed: Mapping[str, Iterable[str]] | None = None,
    reported: Mapping[str, Iterable[str]] | None = None,
) -> ClusterSnapshot:
    """A snapshot; ``placed`` maps a machine to the units scheduled there (entries up to date)."""
    records = {u.name: u for u in units}
    ms = [m if isinstance(m, Machine) else machine(m) for m in machines]
    schedule: dict[MachineID, dict[str, ScheduleEntry]] = {}
    for mid, names in (placed or {}).items():
        for name in names:
            record = records.get(name)
            entry = ScheduleEntry(
                name,
                MachineID(mid),
                record.hash if record else "0" * 40,
                record.desired if record else LAUNCHED,
            )
            schedule.setdefault(MachineID(mid), {})[name] = entry
    return ClusterSnapshot(
        units=records,
        machines={m.id: m for m in ms},
        schedule=schedule,
        reported={u: frozenset(MachineID(m) for m in ms_) for u, ms_ in (reported or {}).items()},
    )


def placements(snapshot: ClusterSnapshot) -> dict[str, list[str]]:
    """unit → the machines it is scheduled on."""
    result: dict[str, list[str]] = {}
    for mid in sorted(snapshot.schedule):
        for name in sorted(snapshot.schedule[mid]):
            result.setdefault(name, []).append(mid)
    return result


def summary(plan: EnginePlan | Iterable[EngineAction]) -> list[tuple[str, str, str, str]]:
    actions = plan.actions if isinstance(plan, EnginePlan) else plan
    return [(type(a).__name__, a.entry.unit, a.entry.machine, a.reason) for a in actions]


def after(snapshot: ClusterSnapshot) -> dict[str, list[str]]:
    return placements(apply_engine_plan(snapshot, engine_plan(snapshot)))


# ------------------------------------------------------------------------------------------------------------
# Least loaded (§3.6)


def test_least_loaded_example_places_in_name_order_when_planned_together() -> None:
    snapshot = cluster(
        [unit("hello.service"), unit("hello@1.service"), unit("hello@2.service"), unit("goodbye.service")],
        ["m1", "m2", "m3"],
    )
    assert after(snapshot) == {
        "goodbye.service": ["m1"],
        "hello.service": ["m2"],
        "hello@1.service": ["m3"],
        "hello@2.service": ["m1"],
    }


def test_least_loaded_example_started_one_by_one_matches_fleet() -> None:
    snapshot = cluster([], ["m1", "m2", "m3"])
    for name in ("hello.service", "hello@1.service", "hello@2.service", "goodbye.service"):
        units = dict(snapshot.units) | {name: unit(name)}
        snapshot = ClusterSnapshot(units, snapshot.machines, snapshot.schedule)
        snapshot = apply_engine_plan(snapshot, engine_plan(snapshot))
    assert placements(snapshot) == {
        "hello.service": ["m1"],
        "hello@1.service": ["m2"],
        "hello@2.service": ["m3"],
        "goodbye.service": ["m1"],
    }


def test_placement_sees_the_load_of_earlier_placements_in_the_same_pass() -> None:
    snapshot = cluster([unit(f"u{i}.service") for i in range(6)], ["m1", "m2", "m3"], placed={"m1": []})
    assert sorted(m for ms in after(snapshot).values() for m in ms) == ["m1", "m1", "m2", "m2", "m3", "m3"]


def test_global_units_count_towards_load() -> None:
    snapshot = cluster(
        [unit("g.service", "Global=true\nMachineMetadata=role=edge\n"), unit("x.service")],
        [machine("m1", role="edge"), machine("m2")],
    )
    assert after(snapshot) == {"g.service": ["m1"], "x.service": ["m2"]}


def test_schedule_action_reasons() -> None:
    snapshot = cluster([unit("a.service"), unit("b.service", desired=LOADED)], ["m1"])
    assert summary(engine_plan(snapshot)) == [
        ("Schedule", "a.service", "m1", "target state launched and unit not scheduled"),
        ("Schedule", "b.service", "m1", "target state loaded and unit not scheduled"),
    ]


# ------------------------------------------------------------------------------------------------------------
# What is never placed, and entries that cannot stand (§3.3 loop 1)


@pytest.mark.parametrize(
    ("units", "placed", "machines", "expected_actions"),
    [
        pytest.param(
            [unit("a.service", desired=INACTIVE)], {}, ["m1"], [], id="a unit with desired inactive is not placed"
        ),
        pytest.param(
            [unit("a.service", desired=INACTIVE)],
            {"m1": ["a.service"]},
            ["m1"],
            [("Unschedule", "a.service", "m1", "target state inactive")],
            id="a placed unit whose desired state became inactive is unscheduled",
        ),
        pytest.param([unit("t@.service")], {}, ["m1"], [], id="a launched template is never placed"),
        pytest.param(
            [unit("t@.service")],
            {"m1": ["t@.service"]},
            ["m1"],
            [("Unschedule", "t@.service", "m1", "templates are never placed")],
            id="a template that was placed is unscheduled",
        ),
        pytest.param(
            [],
            {"m1": ["gone.service"]},
            ["m1"],
            [("Unschedule", "gone.service", "m1", "unit destroyed")],
            id="a destroyed unit is unscheduled",
        ),
        pytest.param(
            [unit("a.service")],
            {"m9": ["a.service"]},
            ["m1"],
            [
                ("Unschedule", "a.service", "m9", "target Machine(m9) went away"),
                ("Schedule", "a.service", "m1", "target state launched and unit not scheduled"),
            ],
            id="a unit on a machine that went away is placed elsewhere in the same pass",
        ),
        pytest.param(
            [unit("a.service")],
            {"m1": ["a.service"], "m2": ["a.service"]},
            ["m1", "m2"],
            [("Unschedule", "a.service", "m2", "unit is already placed on Machine(m1)")],
            id="a unit placed on two machines keeps the first",
        ),
        pytest.param(
            [unit("no-dot")],
            {"m1": ["no-dot"]},
            ["m1"],
            [("Unschedule", "no-dot", "m1", "templates are never placed")],
            id="a stored name that is not a unit name is never placed",
        ),
        pytest.param(
            [unit("a.service", "MachineMetadata=disk=ssd\n")],
            {"m1": ["a.service"]},
            [machine("m1", disk="hdd")],
            [
                (
                    "Unschedule",
                    "a.service",
                    "m1",
                    "target Machine(m1) unable to run unit: local Machine metadata insufficient",
                )
            ],
            id="a unit whose machine lost the metadata it needs is unscheduled",
        ),
        pytest.param(
            [unit("a.service")], {"m1": ["a.service"]}, ["m1", "m2"], [], id="a unit that may stay is left alone"
        ),
    ],
)
def test_entries_that_cannot_stand(
    units: list[UnitRecord],
    placed: dict[str, list[str]],
    machines: list[Machine | str],
    expected_actions: list[tuple[str, str, str, str]],
) -> None:
    assert summary(engine_plan(cluster(units, machines, placed))) == expected_actions


def test_machine_loss_places_the_unit_even_if_the_lost_machine_still_reports_it() -> None:
    snapshot = cluster([unit("a.service")], ["m1"], placed={"m9": ["a.service"]}, reported={"a.service": ["m9"]})
    assert after(snapshot) == {"a.service": ["m1"]}


def test_a_unit_still_reported_on_a_live_machine_that_cannot_run_it_waits_for_it_to_stop() -> None:
    snapshot = cluster(
        [unit("a.service", "MachineMetadata=disk=ssd\n")],
        [machine("m1", disk="ssd"), machine("m2", disk="hdd")],
        reported={"a.service": ["m2"]},
    )
    plan = engine_plan(snapshot)
    assert plan.actions == ()
    assert plan.unplaced == {"a.service": "waiting for it to stop on Machine(m2)"}


def test_a_unit_still_reported_on_two_live_machines_waits_for_both() -> None:
    snapshot = cluster([unit("a.service")], ["m1", "m2", "m3"], reported={"a.service": ["m3", "m2"]})
    plan = engine_plan(snapshot)
    assert plan.actions == ()
    assert plan.unplaced == {"a.service": "waiting for it to stop on Machine(m2)"}


def test_a_unit_still_running_on_the_only_machine_that_reports_it_stays_there() -> None:
    # A machine that came back with the unit still running, the unit unplaced meanwhile: placing it anywhere
    # else would stop and start it; it stays, although m1 is less loaded.
    snapshot = cluster(
        [unit("a.service"), unit("b.service")],
        ["m1", "m2"],
        placed={"m2": ["b.service"]},
        reported={"a.service": ["m2"]},
    )
    assert summary(engine_plan(snapshot)) == [
        ("Schedule", "a.service", "m2", "target state launched and unit not scheduled")
    ]


def test_a_unit_unscheduled_from_its_machine_waits_there_before_moving() -> None:
    snapshot = cluster(
        [unit("a.service", "MachineMetadata=disk=ssd\n")],
        [machine("m1", disk="hdd"), machine("m2", disk="ssd")],
        placed={"m1": ["a.service"]},
        reported={"a.service": ["m1"]},
    )
    plan = engine_plan(snapshot)
    assert [type(a).__name__ for a in plan.actions] == ["Unschedule"]
    assert plan.unplaced == {"a.service": "waiting for it to stop on Machine(m1)"}
    stopped = ClusterSnapshot(snapshot.units, snapshot.machines, apply_engine_plan(snapshot, plan).schedule)
    assert after(stopped) == {"a.service": ["m2"]}


# ------------------------------------------------------------------------------------------------------------
# Updates (phase 5)


def test_a_replaced_unit_body_updates_its_entry() -> None:
    old = unit("a.service", body="old")
    new = unit("a.service", body="new")
    snapshot = cluster([old], ["m1"], placed={"m1": ["a.service"]})
    snapshot = ClusterSnapshot({"a.service": new}, snapshot.machines, snapshot.schedule)
    assert summary(engine_plan(snapshot)) == [
        ("Update", "a.service", "m1", f"unit replaced: hash {old.hash[:7]} → {new.hash[:7]}")
    ]
    assert apply_engine_plan(snapshot, engine_plan(snapshot)).schedule["m1"]["a.service"].hash == new.hash


def test_a_changed_desired_state_updates_its_entry() -> None:
    snapshot = cluster([unit("a.service")], ["m1"], placed={"m1": ["a.service"]})
    snapshot = ClusterSnapshot({"a.service": unit("a.service", desired=LOADED)}, snapshot.machines, snapshot.schedule)
    plan = engine_plan(snapshot)
    assert summary(plan) == [("Update", "a.service", "m1", "target state launched → loaded")]
    assert isinstance(plan.actions[0], Update)
    assert plan.actions[0].entry.desired == LOADED


def test_global_entries_are_updated_on_every_machine() -> None:
    old = unit("g.service", "Global=true\n", body="old")
    new = unit("g.service", "Global=true\n", body="new")
    snapshot = cluster([old], ["m1", "m2"], placed={"m1": ["g.service"], "m2": ["g.service"]})
    snapshot = ClusterSnapshot({"g.service": new}, snapshot.machines, snapshot.schedule)
    assert [(a.entry.machine, a.entry.hash) for a in engine_plan(snapshot).actions] == [
        ("m1", new.hash),
        ("m2", new.hash),
    ]


# ------------------------------------------------------------------------------------------------------------
# The rules of AbleToRun applied by the plan (§3.5)

ID1 = "1111111122222222333333334444aaaa"
ID2 = "5555555566666666777777778888bbbb"


@pytest.mark.parametrize(
    ("units", "machines", "placed", "expected"),
    [
        pytest.param(
            [unit("a.service", f"MachineID={ID2}\n")],
            [ID1, ID2],
            {},
            {"a.service": [ID2]},
            id="MachineID by full ID",
        ),
        pytest.param(
            [unit("a.service", "MachineID=55555555\n")],
            [ID1, ID2],
            {},
            {"a.service": [ID2]},
            id="MachineID by 8-character short ID",
        ),
        pytest.param(
            [unit("pin@55555555.service", "MachineID=%i\n")],
            [ID1, ID2],
            {},
            {"pin@55555555.service": [ID2]},
            id="MachineID from an instance name",
        ),
        pytest.param(
            [unit("a.service", "MachineID=nowhere\n")], [ID1, ID2], {}, {}, id="MachineID of no machine is not placed"
        ),
        pytest.param(
            [unit("a.service", "MachineMetadata=region=us\nMachineMetadata=region=eu\n")],
            [machine("m1", region="ap"), machine("m2", region="eu")],
            {},
            {"a.service": ["m2"]},
            id="metadata values of one key are ORed",
        ),
        pytest.param(
            [unit("a.service", 'MachineMetadata="region=eu" "disk=ssd"\n')],
            [machine("m1", region="eu", disk="hdd"), machine("m2", region="eu", disk="ssd")],
            {},
            {"a.service": ["m2"]},
            id="metadata keys are ANDed",
        ),
        pytest.param(
            [unit("a.service", "MachineMetadata=cores>=8\n")],
            [machine("m1", cores="4"), machine("m2", cores="many"), machine("m3", cores="16")],
            {},
            {"a.service": ["m3"]},
            id="a numeric metadata operator skips non-numeric values",
        ),
        pytest.param(
            [unit("a.service", "MachineMetadata=disk!=hdd\n")],
            [machine("m1", disk="hdd"), machine("m2")],
            {},
            {"a.service": ["m2"]},
            id="not equal accepts a machine without the key",
        ),
        pytest.param(
            [unit("a.service", "MachineMetadata=zone=~eu-.*\n")],
            [machine("m1", zone="us-east"), machine("m2", zone="eu-west")],
            {},
            {"a.service": ["m2"]},
            id="a regular expression on metadata",
        ),
        pytest.param(
            [unit("app.service", "MachineOf=db.service\n"), unit("db.service")],
            ["m1", "m2"],
            {"m2": ["db.service"]},
            {"app.service": ["m2"], "db.service": ["m2"]},
            id="a follower goes to its peer even on a busier machine",
        ),
        pytest.param(
            [unit("a.service", "MachineOf=z.service\n"), unit("z.service")],
            ["m1", "m2"],
            {},
            {"a.service": ["m1"], "z.service": ["m1"]},
            id="a follower that sorts before its peer is placed after it in the same pass",
        ),
        pytest.param(
            [unit("a.service", "MachineOf=p.service\n")],
            ["m1"],
            {},
            {},
            id="a follower whose peer is not placed is not placed",
        ),
        pytest.param(
            [unit("a.service", "MachineOf=b.service\n"), unit("b.service", "MachineOf=a.service\n")],
            ["m1"],
            {},
            {},
            id="two units that name each other as peers are never placed",
        ),
        pytest.param(
            [unit("a.service", "MachineOf=g.service\n"), unit("g.service", "Global=true\nMachineMetadata=x=1\n")],
            [machine("m1"), machine("m2", x="1")],
            {},
            {"a.service": ["m2"], "g.service": ["m2"]},
            id="a global unit is a peer where it runs",
        ),
        pytest.param(
            [unit("a.service", "Conflicts=b.service\n"), unit("b.service")],
            ["m1"],
            {"m1": ["b.service"]},
            {"b.service": ["m1"]},
            id="a unit does not land where a unit it conflicts with sits",
        ),
        pytest.param(
            [unit("a.service"), unit("b.service", "Conflicts=a.service\n")],
            ["m1"],
            {"m1": ["b.service"]},
            {"b.service": ["m1"]},
            id="a conflict declared by the unit already there also blocks",
        ),
        pytest.param(
            [unit(f"web@{i}.service", "Conflicts=web@*.service\n") for i in (1, 2, 3)],
            ["m1", "m2"],
            {},
            {"web@1.service": ["m1"], "web@2.service": ["m2"]},
            id="a conflict glob spreads instances and leaves the extra one unplaced",
        ),
        pytest.param(
            [unit("a.service", "Conflicts=b.service\n"), unit("b.service")],
            ["m1"],
            {"m1": ["a.service", "b.service"]},
            {"a.service": ["m1"]},
            id="of two conflicting units on one machine the first by name stays",
        ),
        # The deprecated spellings of §2.1 schedule as their current names do.
        pytest.param(
            [unit("a.service", "X-ConditionMachineID=55555555\n")],
            [ID1, ID2],
            {},
            {"a.service": [ID2]},
            id="deprecated X-ConditionMachineID pins",
        ),
        pytest.param(
            [unit("a.service", f"X-ConditionMachineBootID={ID2}\n")],
            [ID1, ID2],
            {},
            {"a.service": [ID2]},
            id="legacy X-ConditionMachineBootID pins",
        ),
        pytest.param(
            [unit("a.service", "X-ConditionMachineMetadata=region=eu\n")],
            [machine("m1", region="us"), machine("m2", region="eu")],
            {},
            {"a.service": ["m2"]},
            id="deprecated X-ConditionMachineMetadata",
        ),
        pytest.param(
            [unit("app.service", "X-ConditionMachineOf=db.service\n"), unit("db.service")],
            ["m1", "m2"],
            {"m2": ["db.service"]},
            {"app.service": ["m2"], "db.service": ["m2"]},
            id="deprecated X-ConditionMachineOf",
        ),
        pytest.param(
            [unit(f"web@{i}.service", "X-Conflicts=web@*.service\n") for i in (1, 2)],
            ["m1", "m2"],
            {},
            {"web@1.service": ["m1"], "web@2.service": ["m2"]},
            id="deprecated X-Conflicts",
        ),
        # Specifiers are expanded with each unit's own name.
        pytest.param(
            [unit(f"web@{i}.service", "Conflicts=%p@*.service\n") for i in (1, 2, 3)],
            ["m1", "m2", "m3"],
            {},
            {"web@1.service": ["m1"], "web@2.service": ["m2"], "web@3.service": ["m3"]},
            id="instances that conflict with their siblings through a specifier spread out",
        ),
        pytest.param(
            [unit(f"meta@{h}.service", "MachineMetadata=hostname=%i\n") for h in ("h1", "h2")],
            [machine("m1", hostname="h2"), machine("m2", hostname="h1")],
            {},
            {"meta@h1.service": ["m2"], "meta@h2.service": ["m1"]},
            id="metadata from the instance name",
        ),
        # The combinations §2.4 allows.
        pytest.param(
            [unit("a.service", "MachineID=55555555\nMachineMetadata=disk=ssd\n")],
            [machine(ID1, disk="ssd"), machine(ID2, disk="ssd")],
            {},
            {"a.service": [ID2]},
            id="MachineID with metadata the pinned machine has",
        ),
        pytest.param(
            [unit("a.service", "MachineID=55555555\nMachineMetadata=disk=ssd\n")],
            [machine(ID1, disk="ssd"), machine(ID2, disk="hdd")],
            {},
            {},
            id="MachineID with metadata the pinned machine lacks is not placed",
        ),
        pytest.param(
            [unit("app.service", "MachineOf=db.service\nConflicts=x.service\n"), unit("db.service"), unit("x.service")],
            ["m1", "m2"],
            {"m1": ["db.service", "x.service"]},
            {"db.service": ["m1"], "x.service": ["m1"]},
            id="MachineOf with Conflicts: a conflict on the peer's machine keeps the follower off",
        ),
        pytest.param(
            [
                unit("app.service", "MachineOf=db.service\nReplaces=old.service\n"),
                unit("db.service"),
                unit("old.service"),
            ],
            ["m1", "m2"],
            {"m1": ["db.service", "old.service"]},
            {"app.service": ["m1"], "db.service": ["m1"], "old.service": ["m2"]},
            id="MachineOf with Replaces: the follower joins its peer and displaces what it replaces",
        ),
        pytest.param(
            [unit("g.service", "Global=true\nMachineMetadata=role=web\nConflicts=x.service\n"), unit("x.service")],
            [machine("m1", role="web"), machine("m2", role="web"), machine("m3", role="db")],
            {"m1": ["x.service"]},
            {"g.service": ["m2"], "x.service": ["m1"]},
            id="Global with metadata and conflicts",
        ),
    ],
)
def test_rules(
    units: list[UnitRecord],
    machines: list[Machine | str],
    placed: dict[str, list[str]],
    expected: dict[str, list[str]],
) -> None:
    assert after(cluster(units, machines, placed)) == expected


def test_peer_rejection_reason_names_the_missing_peer() -> None:
    snapshot = cluster(
        [unit("app.service", "MachineOf=db.service\n"), unit("db.service")],
        ["m1", "m2"],
        placed={"m1": ["app.service"], "m2": ["db.service"]},
        reported={"app.service": ["m1"]},
    )
    plan = engine_plan(snapshot)
    assert summary(plan) == [
        (
            "Unschedule",
            "app.service",
            "m1",
            "target Machine(m1) unable to run unit: required peer Unit(db.service) is not scheduled locally",
        )
    ]
    assert plan.unplaced == {"app.service": "waiting for it to stop on Machine(m1)"}


def test_a_follower_moves_with_its_peer() -> None:
    snapshot = cluster(
        [unit("app.service", "MachineOf=db.service\n"), unit("db.service")],
        ["m1", "m2"],
        placed={"m9": ["db.service"], "m1": ["app.service"]},
    )
    result = after(snapshot)
    assert result["db.service"] == result["app.service"]


def test_unplaceable_reasons_count_rejections_per_rule() -> None:
    snapshot = cluster(
        [unit("a.service", "MachineMetadata=disk=ssd\nConflicts=b.service\n"), unit("b.service")],
        [machine("m1", disk="hdd"), machine("m2", disk="ssd")],
        placed={"m2": ["b.service"]},
    )
    assert engine_plan(snapshot).unplaced == {
        "a.service": "no machine can run it: MachineMetadata ruled out 1 of 2 machines "
        "(local Machine metadata insufficient); Conflicts ruled out 1 of 2 machines "
        "(found conflict with locally-scheduled Unit(b.service))"
    }


def test_zero_agents_available() -> None:
    plan = engine_plan(cluster([unit("a.service")], []))
    assert plan.actions == ()
    assert plan.unplaced == {"a.service": "zero agents available"}
    assert not plan


# ------------------------------------------------------------------------------------------------------------
# Replaces (§3.4, §9.9)


def test_a_replacing_unit_moves_the_replaced_one_elsewhere() -> None:
    snapshot = cluster(
        [unit("new.service", "Replaces=old.service\nMachineMetadata=zone=a\n"), unit("old.service")],
        [machine("m1", zone="a"), machine("m2")],
        placed={"m1": ["old.service"]},
    )
    plan = engine_plan(snapshot)
    assert summary(plan) == [
        ("Schedule", "new.service", "m1", "target state launched and unit not scheduled"),
        ("Unschedule", "old.service", "m1", "replaced by Unit(new.service)"),
        ("Schedule", "old.service", "m2", "target state launched and unit not scheduled"),
    ]


def test_the_replaced_unit_keeps_its_own_requirements_when_it_moves() -> None:
    snapshot = cluster(
        [
            unit("new.service", "Replaces=old.service\nMachineMetadata=zone=a\n"),
            unit("old.service", "MachineMetadata=disk=ssd\n"),
        ],
        [machine("m1", zone="a", disk="ssd"), machine("m2"), machine("m3", disk="ssd")],
        placed={"m1": ["old.service"], "m2": []},
    )
    assert after(snapshot) == {"new.service": ["m1"], "old.service": ["m3"]}


def test_a_replaced_unit_that_is_running_waits_to_stop_before_moving() -> None:
    snapshot = cluster(
        [unit("new.service", "Replaces=old.service\nMachineMetadata=zone=a\n"), unit("old.service")],
        [machine("m1", zone="a"), machine("m2")],
        placed={"m1": ["old.service"]},
        reported={"old.service": ["m1"]},
    )
    plan = engine_plan(snapshot)
    assert placements(apply_engine_plan(snapshot, plan)) == {"new.service": ["m1"]}
    assert plan.unplaced == {"old.service": "waiting for it to stop on Machine(m1)"}


def test_a_replaced_unit_with_nowhere_else_to_go_is_unplaced() -> None:
    snapshot = cluster(
        [unit("new.service", "Replaces=old.service\n"), unit("old.service")], ["m1"], placed={"m1": ["old.service"]}
    )
    plan = engine_plan(snapshot)
    assert placements(apply_engine_plan(snapshot, plan)) == {"new.service": ["m1"]}
    assert plan.unplaced["old.service"].startswith("no machine can run it: Replaces ruled out 1 of 1 machine")


@pytest.mark.parametrize(
    ("replacer", "replaced"),
    [
        pytest.param("a-new.service", "z-old.service", id="the replacing unit sorts first"),
        pytest.param("z-new.service", "a-old.service", id="the replaced unit sorts first"),
    ],
)
def test_the_replaced_unit_always_moves_whatever_the_name_order(replacer: str, replaced: str) -> None:
    snapshot = cluster(
        [unit(replacer, f"Replaces={replaced}\n"), unit(replaced)], ["m1", "m2"], placed={"m1": [replacer, replaced]}
    )
    assert after(snapshot) == {replacer: ["m1"], replaced: ["m2"]}


def test_replaced_units_on_different_machines_stay_put() -> None:
    snapshot = cluster(
        [unit("new.service", "Replaces=old.service\n"), unit("old.service")],
        ["m1", "m2"],
        placed={"m1": ["old.service"]},
    )
    assert after(snapshot) == {"new.service": ["m2"], "old.service": ["m1"]}


def test_mutual_replaces_are_ignored() -> None:
    snapshot = cluster(
        [unit("a.service", "Replaces=b.service\n"), unit("b.service", "Replaces=a.service\n")],
        ["m1", "m2"],
        placed={"m1": ["a.service", "b.service"]},
    )
    assert engine_plan(snapshot).actions == ()


def test_a_unit_placed_and_displaced_in_the_same_pass_is_never_written() -> None:
    snapshot = cluster(
        [unit("a-old.service"), unit("b-new.service", "Replaces=a-old.service\nMachineMetadata=zone=x\n")],
        [machine("m1", zone="x"), machine("m2")],
    )
    # a-old goes to m1 first (least loaded, by ID), b-new must go to m1 and displaces it to m2.
    assert summary(engine_plan(snapshot)) == [
        ("Schedule", "b-new.service", "m1", "target state launched and unit not scheduled"),
        ("Schedule", "a-old.service", "m2", "target state launched and unit not scheduled"),
    ]


def test_a_follower_moves_with_a_peer_that_is_displaced() -> None:
    snapshot = cluster(
        [
            unit("app.service", "MachineOf=db.service\n"),
            unit("db.service"),
            unit("new.service", "Replaces=db.service\nMachineMetadata=zone=x\n"),
        ],
        [machine("m1", zone="x"), machine("m2")],
        placed={"m1": ["app.service", "db.service"]},
    )
    plan = engine_plan(snapshot)
    assert after(snapshot) == {"app.service": ["m2"], "db.service": ["m2"], "new.service": ["m1"]}
    assert (
        "Unschedule",
        "app.service",
        "m1",
        "target Machine(m1) unable to run unit: required peer Unit(db.service) is not scheduled locally",
    ) in summary(plan)


def test_a_replaced_global_unit_leaves_the_machine_of_its_replacer() -> None:
    snapshot = cluster(
        [unit("g.service", "Global=true\n"), unit("new.service", "Replaces=g.service\n")],
        ["m1", "m2"],
        placed={"m1": ["g.service"], "m2": ["g.service"]},
    )
    assert summary(engine_plan(snapshot)) == [
        ("Schedule", "new.service", "m1", "target state launched and unit not scheduled"),
        ("Unschedule", "g.service", "m1", "replaced by Unit(new.service)"),
    ]


def test_a_global_unit_takes_the_room_a_displaced_unit_leaves() -> None:
    snapshot = cluster(
        [
            unit("old.service"),
            unit("new.service", "Replaces=old.service\n"),
            unit("g.service", "Global=true\nConflicts=old.service\n"),
        ],
        ["m1"],
        placed={"m1": ["old.service"]},
    )
    assert after(snapshot) == {"g.service": ["m1"], "new.service": ["m1"]}


def test_a_unit_takes_the_room_a_displaced_global_unit_leaves() -> None:
    snapshot = cluster(
        [
            unit("a.service"),
            unit("g.service", "Global=true\nConflicts=a.service\n"),
            unit("new.service", "Replaces=g.service\n"),
        ],
        ["m1"],
        placed={"m1": ["g.service"]},
    )
    assert after(snapshot) == {"a.service": ["m1"], "new.service": ["m1"]}


def test_a_unit_is_not_its_own_peer() -> None:
    self_peer = unit("a.service", "MachineOf=a.service\n")
    assert after(cluster([self_peer], ["m1"])) == {}
    assert after(cluster([self_peer], ["m1"], placed={"m1": ["a.service"]})) == {}


# ------------------------------------------------------------------------------------------------------------
# Global units (§3.7, §9.10)


def test_a_global_unit_goes_to_every_eligible_machine() -> None:
    snapshot = cluster(
        [unit("g.service", "Global=true\nMachineMetadata=role=web\n")],
        [machine("m1", role="web"), machine("m2", role="db"), machine("m3", role="web")],
    )
    assert summary(engine_plan(snapshot)) == [
        ("Schedule", "g.service", "m1", "global unit eligible on this machine"),
        ("Schedule", "g.service", "m3", "global unit eligible on this machine"),
    ]


def test_a_global_unit_skips_machines_with_a_conflicting_unit() -> None:
    snapshot = cluster(
        [unit("g.service", "Global=true\nConflicts=x.service\n"), unit("x.service")],
        ["m1", "m2"],
        placed={"m1": ["x.service"]},
    )
    assert after(snapshot) == {"g.service": ["m2"], "x.service": ["m1"]}


def test_of_two_new_conflicting_global_units_the_first_by_name_wins() -> None:
    snapshot = cluster(
        [unit("b.service", "Global=true\n"), unit("a.service", "Global=true\nConflicts=b.service\n")],
        ["m1", "m2"],
    )
    assert after(snapshot) == {"a.service": ["m1", "m2"]}


def test_a_placed_global_unit_keeps_its_machines_against_a_new_one_earlier_in_the_alphabet() -> None:
    snapshot = cluster(
        [unit("b.service", "Global=true\n"), unit("a.service", "Global=true\nConflicts=b.service\n")],
        ["m1", "m2"],
        placed={"m1": ["b.service"]},
    )
    # b runs already: it keeps m1 and is offered the free machine m2 first; a runs nowhere, and says why.
    plan = engine_plan(snapshot)
    assert placements(apply_engine_plan(snapshot, plan)) == {"b.service": ["m1", "m2"]}
    assert plan.unplaced == {
        "a.service": "no machine can run it: Conflicts ruled out 2 of 2 machines "
        "(found conflict with locally-scheduled Unit(b.service))"
    }


def test_a_machine_that_joins_later_gets_the_global_unit_that_already_runs() -> None:
    snapshot = cluster(
        [unit("b.service", "Global=true\n"), unit("a.service", "Global=true\nConflicts=b.service\n")],
        ["m1", "m2", "m3"],
        placed={"m1": ["b.service"], "m2": ["b.service"]},
    )
    assert after(snapshot) == {"b.service": ["m1", "m2", "m3"]}


def test_global_units_placed_on_different_machines_both_count_as_running() -> None:
    # a runs on m1, b on m2 (metadata kept them apart); on m3, where both may run, name order decides.
    snapshot = cluster(
        [
            unit("a.service", "Global=true\nConflicts=b.service\nMachineMetadata=a=1\n"),
            unit("b.service", "Global=true\nMachineMetadata=b=1\n"),
        ],
        [machine("m1", a="1"), machine("m2", b="1"), machine("m3", a="1", b="1")],
        placed={"m1": ["a.service"], "m2": ["b.service"]},
    )
    assert after(snapshot) == {"a.service": ["m1", "m3"], "b.service": ["m2"]}


def test_a_global_unit_that_no_machine_can_run_says_why() -> None:
    snapshot = cluster(
        [unit("g.service", "Global=true\nMachineMetadata=role=edge\n")], [machine("m1"), machine("m2", role="db")]
    )
    plan = engine_plan(snapshot)
    assert plan.actions == ()
    assert plan.unplaced == {
        "g.service": "no machine can run it: MachineMetadata ruled out 2 of 2 machines "
        "(local Machine metadata insufficient)"
    }
    assert engine_plan(cluster([unit("g.service", "Global=true\n")], [])).unplaced == {
        "g.service": "zero agents available"
    }


def test_new_units_avoid_machines_where_a_global_unit_conflicts_with_them() -> None:
    snapshot = cluster(
        [unit("g.service", "Global=true\nConflicts=x.service\nMachineMetadata=role=edge\n"), unit("x.service")],
        [machine("m1", role="edge"), machine("m2", role="edge"), machine("m3")],
    )
    assert after(snapshot) == {"g.service": ["m1", "m2"], "x.service": ["m3"]}


@pytest.mark.parametrize(
    ("desired", "expected"),
    [
        pytest.param(INACTIVE, {}, id="an inactive global unit runs nowhere"),
        pytest.param(LOADED, {"g.service": ["m1", "m2"]}, id="a loaded global unit is placed"),
        pytest.param(LAUNCHED, {"g.service": ["m1", "m2"]}, id="a launched global unit is placed"),
    ],
)
def test_global_unit_desired_state(desired: DesiredState, expected: dict[str, list[str]]) -> None:
    snapshot = cluster(
        [unit("g.service", "Global=true\n", desired=desired)], ["m1", "m2"], placed={"m1": ["g.service"]}
    )
    assert after(snapshot) == expected


def test_a_global_unit_does_not_wait_for_reports_elsewhere() -> None:
    snapshot = cluster([unit("g.service", "Global=true\n")], ["m1", "m2"], reported={"g.service": ["m1"]})
    assert after(snapshot) == {"g.service": ["m1", "m2"]}


def test_global_template_is_never_placed() -> None:
    assert after(cluster([unit("g@.service", "Global=true\n")], ["m1"])) == {}


# ------------------------------------------------------------------------------------------------------------
# Explanations and previews (fleetpyctl plan)

CONFLICT_B = Rejection(Rule.CONFLICTS, "found conflict with locally-scheduled Unit(b.service)")
NO_SSD = Rejection(Rule.METADATA, "local Machine metadata insufficient")


def explained_cluster(*extra: UnitRecord) -> ClusterSnapshot:
    """m1 (ssd) runs b, m2 (ssd) runs c, m3 (no disk) is empty."""
    return cluster(
        [unit("b.service"), unit("c.service"), *extra],
        [machine("m1", disk="ssd"), machine("m2", disk="ssd"), machine("m3")],
        placed={"m1": ["b.service"], "m2": ["c.service"]},
    )


def test_an_explanation_lists_every_machine_least_loaded_first_as_the_scheduler_saw_it() -> None:
    snapshot = explained_cluster(unit("a.service", "MachineMetadata=disk=ssd\nConflicts=b.service\n"))
    plan = engine_plan(snapshot, explain=frozenset({"a.service"}))
    assert summary(plan) == [("Schedule", "a.service", "m2", "target state launched and unit not scheduled")]
    assert plan.explanations == {
        "a.service": (Verdict("m3", 0, NO_SSD), Verdict("m1", 1, CONFLICT_B), Verdict("m2", 1, None))
    }


def test_explaining_changes_no_decision_and_costs_nothing_when_not_asked() -> None:
    snapshot = explained_cluster(unit("a.service", "MachineMetadata=disk=ssd\nConflicts=b.service\n"))
    explained = engine_plan(snapshot, explain=frozenset(snapshot.units))
    plain = engine_plan(snapshot)
    assert (explained.actions, explained.unplaced) == (plain.actions, plain.unplaced)
    assert plain.explanations == {}


def test_preview_of_a_new_unit() -> None:
    snapshot = explained_cluster()
    result = preview(snapshot, [unit("a.service", "MachineMetadata=disk=ssd\nConflicts=b.service\n")])
    assert result.units == (
        UnitPreview(
            "a.service",
            ("m2",),
            kept=False,
            reason="",
            verdicts=(Verdict("m3", 0, NO_SSD), Verdict("m1", 1, CONFLICT_B), Verdict("m2", 1, None)),
        ),
    )
    assert summary(result.actions) == [("Schedule", "a.service", "m2", "target state launched and unit not scheduled")]


def test_preview_of_a_unit_no_machine_can_run() -> None:
    snapshot = explained_cluster()
    result = preview(snapshot, [unit("a.service", "MachineMetadata=disk=ssd\nConflicts=[bc].service\n")])
    (only,) = result.units
    assert only.machines == ()
    assert only.reason == (
        "no machine can run it: MachineMetadata ruled out 1 of 3 machines (local Machine metadata insufficient); "
        "Conflicts ruled out 2 of 3 machines (found conflict with locally-scheduled Unit(b.service))"
    )
    assert [v.rejection.rule if v.rejection else None for v in only.verdicts] == [
        Rule.METADATA,
        Rule.CONFLICTS,
        Rule.CONFLICTS,
    ]
    assert result.actions == ()


def test_preview_of_a_unit_that_stays_where_it_is() -> None:
    snapshot = explained_cluster()
    (only,) = preview(snapshot, [snapshot.units["b.service"]]).units
    assert (only.machines, only.kept, only.reason) == (("m1",), True, "")
    assert only.verdicts == (Verdict("m3", 0, None), Verdict("m1", 1, None), Verdict("m2", 1, None))


def test_preview_shows_what_a_replacing_unit_displaces() -> None:
    snapshot = explained_cluster()
    result = preview(snapshot, [unit("new.service", "Replaces=b.service\nMachineMetadata=disk=ssd\n")])
    assert result.units[0].machines == ("m1",)
    assert summary(result.actions) == [
        ("Schedule", "new.service", "m1", "target state launched and unit not scheduled"),
        ("Unschedule", "b.service", "m1", "replaced by Unit(new.service)"),
        ("Schedule", "b.service", "m3", "target state launched and unit not scheduled"),
    ]


def test_preview_of_a_global_unit_lists_every_machine_it_would_run_on() -> None:
    snapshot = explained_cluster()
    (only,) = preview(snapshot, [unit("g.service", "Global=true\nMachineMetadata=disk=ssd\n")]).units
    assert (only.machines, only.kept, only.reason) == (("m1", "m2"), False, "")
    assert sorted((v.machine, v.rejection) for v in only.verdicts) == [("m1", None), ("m2", None), ("m3", NO_SSD)]


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        pytest.param(unit("t@.service"), "templates are never placed", id="a template"),
        pytest.param(unit("a.service", desired=INACTIVE), "target state inactive", id="an inactive unit"),
    ],
)
def test_preview_of_units_that_are_never_placed(record: UnitRecord, reason: str) -> None:
    (only,) = preview(explained_cluster(), [record]).units
    assert (only.machines, only.reason) == ((), reason)


# ------------------------------------------------------------------------------------------------------------
# Properties over generated clusters

POOL = ["a.service", "b.service", "c.service", "d.service", "web@1.service", "web@2.service", "web@.service"]
PATTERNS = [*POOL, "web@*.service", "[ab].service", "[^a].service", "*.service", "?.service", "["]
METADATA = {"region": ["us", "eu"], "disk": ["ssd", "hdd"], "cores": ["2", "8", "many"]}
RULES = ["region=us", "region=eu", "disk=ssd", "disk!=hdd", "cores>=4", "cores<4", "region=~u.*"]
MACHINE_IDS = ["m0aaaaaaaa", "m1bbbbbbbb", "m2cccccccc", "m3dddddddd", "m4eeeeeeee"]


@st.composite
def xfleet_text(draw: st.DrawFn, name: str) -> str:
    lines: list[str] = []
    if draw(st.integers(0, 5)) == 0:
        lines.append("Global=true")
    if draw(st.integers(0, 7)) == 0:
        lines.append(f"MachineID={draw(st.sampled_from(MACHINE_IDS))[: draw(st.sampled_from([8, 10]))]}")
    for pattern in draw(st.lists(st.sampled_from(PATTERNS), max_size=2)):
        lines.append(f"Conflicts={pattern}")
    for peer in draw(st.lists(st.sampled_from(POOL), max_size=1)):
        lines.append(f"MachineOf={peer}")
    for rule in draw(st.lists(st.sampled_from(RULES), max_size=2)):
        lines.append(f"MachineMetadata={rule}")
    for pattern in draw(st.lists(st.sampled_from(PATTERNS), max_size=1)):
        lines.append(f"Replaces={pattern}")
    text = "".join(line + "\n" for line in lines)
    # keep only what fleet would accept: drop lines until the combination is valid
    while True:
        xf = UnitFile.from_text("[X-Fleet]\n" + text).xfleet
        try:
            validate_requirements(xf)
            return text
        except Exception:
            text = "".join(line + "\n" for line in text.splitlines()[1:])


@st.composite
def snapshots(draw: st.DrawFn) -> ClusterSnapshot:
    machine_ids = draw(st.lists(st.sampled_from(MACHINE_IDS), min_size=0, max_size=4, unique=True))
    machines = [
        Machine(
            MachineID(mid),
            metadata={k: draw(st.sampled_from(v)) for k, v in METADATA.items() if draw(st.booleans())},
        )
        for mid in machine_ids
    ]
    names = draw(st.lists(st.sampled_from(POOL), max_size=len(POOL), unique=True))
    units = [
        unit(
            name,
            draw(xfleet_text(name)),
            desired=draw(st.sampled_from([LAUNCHED, LAUNCHED, LOADED, INACTIVE])),
            body=draw(st.sampled_from(["one", "two"])),
        )
        for name in names
    ]
    records = {u.name: u for u in units}
    known = [*MACHINE_IDS[:2], *machine_ids]  # schedules may name machines that are gone
    schedule: dict[MachineID, dict[str, ScheduleEntry]] = {}
    for mid, name in draw(st.lists(st.tuples(st.sampled_from(known), st.sampled_from(POOL)), max_size=8)):
        record = records.get(name)
        stale = draw(st.booleans())
        entry = ScheduleEntry(
            name,
            MachineID(mid),
            record.hash if record and not stale else "f" * 40,
            record.desired if record and not draw(st.booleans()) else LAUNCHED,
        )
        schedule.setdefault(MachineID(mid), {})[name] = entry
    reported: dict[str, set[MachineID]] = {}
    for mid, name in draw(st.lists(st.tuples(st.sampled_from(known), st.sampled_from(POOL)), max_size=3)):
        reported.setdefault(name, set()).add(MachineID(mid))
    return ClusterSnapshot(
        units=records,
        machines={m.id: m for m in machines},
        schedule=schedule,
        reported={u: frozenset(ms) for u, ms in reported.items()},
    )


def _views(snapshot: ClusterSnapshot) -> dict[MachineID, MachineView]:
    return {
        mid: MachineView(
            machine, {name: requirements_of(snapshot.units[name]) for name in snapshot.schedule.get(mid, {})}
        )
        for mid, machine in snapshot.machines.items()
    }


def _wanted(snapshot: ClusterSnapshot, name: str) -> bool:
    record = snapshot.units.get(name)
    if record is None or record.desired == INACTIVE:
        return False
    try:
        return not name_info(name).is_template
    except Exception:
        return False


PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(snapshots())
def test_property_plans_are_safe(snapshot: ClusterSnapshot) -> None:
    plan = engine_plan(snapshot)
    result = apply_engine_plan(snapshot, plan)
    placed = placements(result)

    # Only live machines, only wanted units, entries up to date.
    for mid, entries in result.schedule.items():
        for name, entry in entries.items():
            assert mid in snapshot.machines, f"{name} left on gone machine {mid}"
            assert _wanted(snapshot, name), f"{name} placed although not wanted"
            record = snapshot.units[name]
            assert (entry.hash, entry.desired) == (record.hash, record.desired)
            assert (entry.unit, entry.machine) == (name, mid)

    # (e) a non-global unit is on one machine at most.
    for name, machines in placed.items():
        if not snapshot.units[name].is_global:
            assert len(machines) == 1, f"{name} on {machines}"

    views = _views(result)
    for mid, view in views.items():
        for name, reqs in view.units.items():
            others = MachineView(view.machine, {n: r for n, r in view.units.items() if n != name})
            # (b) every unit passes every check against the others on its machine.
            assert check(name, reqs, others) is None, (name, mid, check(name, reqs, others))
            # (a) never two conflicting units on one machine.
            for other, other_reqs in others.units.items():
                assert not conflicts_between(name, reqs, other, other_reqs)

    # (f) a wanted global unit is on every machine where it passes its checks.
    for name, record in snapshot.units.items():
        if record.is_global and _wanted(snapshot, name):
            for mid, view in views.items():
                if name not in view.units:
                    assert check(name, requirements_of(record), view) is not None, f"{name} missing on {mid}"

    # A newly placed unit is never placed while another live machine still reports it.
    for action in plan.actions:
        if isinstance(action, Schedule) and not snapshot.units[action.entry.unit].is_global:
            elsewhere = snapshot.reported.get(action.entry.unit, frozenset()) & snapshot.machines.keys()
            assert elsewhere <= {action.entry.machine}

    # One write per key: etcd refuses a transaction that names a key twice.
    keys = [(a.entry.machine, a.entry.unit) for a in plan.actions]
    assert len(keys) == len(set(keys)), summary(plan)

    # Every unit that is wanted and placed nowhere has a reason, and only those.
    for name in snapshot.units:
        assert (_wanted(snapshot, name) and name not in placed) == (name in plan.unplaced), name


@PROPERTY
@given(snapshots())
def test_property_applying_a_plan_and_planning_again_gives_nothing_to_do(snapshot: ClusterSnapshot) -> None:
    result = apply_engine_plan(snapshot, engine_plan(snapshot))
    assert summary(engine_plan(result)) == []


@PROPERTY
@given(snapshots())
def test_property_explanations_change_nothing_and_agree_with_the_choice(snapshot: ClusterSnapshot) -> None:
    plain = engine_plan(snapshot)
    explained = engine_plan(snapshot, explain=frozenset(snapshot.units))
    assert (explained.actions, explained.unplaced) == (plain.actions, plain.unplaced)
    for action in explained.actions:
        name = action.entry.unit
        if isinstance(action, Schedule) and not snapshot.units[name].is_global and name not in snapshot.reported:
            # least loaded wins: the first machine of the explanation that passes every check
            first = next(v for v in explained.explanations[name] if v.rejection is None)
            assert first.machine == action.entry.machine, (name, explained.explanations[name])
    for name, reason in explained.unplaced.items():
        if reason.startswith("no machine can run it"):
            assert all(v.rejection is not None for v in explained.explanations[name]), name


def _shuffled(snapshot: ClusterSnapshot, rnd: random.Random) -> ClusterSnapshot:
    def shuffle(mapping: Mapping[str, object]) -> list[str]:
        keys = list(mapping)
        rnd.shuffle(keys)
        return keys

    return ClusterSnapshot(
        units={k: snapshot.units[k] for k in shuffle(snapshot.units)},
        machines={MachineID(k): snapshot.machines[MachineID(k)] for k in shuffle(snapshot.machines)},
        schedule={
            MachineID(m): {u: snapshot.schedule[MachineID(m)][u] for u in shuffle(snapshot.schedule[MachineID(m)])}
            for m in shuffle(snapshot.schedule)
        },
        reported={k: snapshot.reported[k] for k in shuffle(snapshot.reported)},
    )


@PROPERTY
@given(snapshots(), st.randoms(use_true_random=False))
def test_property_the_same_input_gives_the_same_plan(snapshot: ClusterSnapshot, rnd: random.Random) -> None:
    first = engine_plan(snapshot)
    assert engine_plan(snapshot) == first
    assert engine_plan(_shuffled(snapshot, rnd)) == first


def test_action_kinds_are_the_ones_the_engine_applies() -> None:
    snapshot = cluster([unit("a.service")], ["m1"])
    assert all(isinstance(a, Schedule | Unschedule | Update) for a in engine_plan(snapshot).actions)
