"""Placement: fleet's AbleToRun checks with fleet's reasons, fleetpy's metadata operators, least-loaded choice
with ties by machine ID, and rejection counts (FLEET-SPEC §3.5–3.6)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpy.model import Machine, MachineID
from fleetpy.scheduler import (
    LoadIndex,
    MachineView,
    Placed,
    Rejection,
    Rule,
    Unplaceable,
    check,
    choose,
    displaced,
    machine_id_matches,
    metadata_matches,
    rule_holds,
)
from fleetpy.unit import (
    MetadataRule,
    Requirements,
    UnitFile,
    parse_metadata_rule,
    path_match,
    policy_refusal,
    requirements,
)

FULL_ID = "4d389537a1b2c3d4e5f60718293a4b5c"


def reqs(name: str, xfleet: str = "") -> Requirements:
    return requirements(UnitFile.from_text("[X-Fleet]\n" + xfleet).xfleet, name)


def view(metadata: dict[str, str] | None = None, units: dict[str, str] | None = None) -> MachineView:
    """The machine FULL_ID with ``metadata`` and ``units`` on it (name → its X-Fleet text)."""
    placed = {name: reqs(name, xfleet) for name, xfleet in (units or {}).items()}
    return MachineView(Machine(MachineID(FULL_ID), metadata=metadata or {}), placed)


def rule(pair: str) -> MetadataRule:
    parsed = parse_metadata_rule(pair)
    assert parsed is not None
    return parsed


# ------------------------------------------------------------------------------------------------------------
# AbleToRun


@pytest.mark.parametrize(
    ("name", "xfleet", "machine", "expected"),
    [
        pytest.param("a.service", "", view(), None, id="no requirements run anywhere"),
        pytest.param("a.service", f"MachineID={FULL_ID}\n", view(), None, id="the full machine ID matches"),
        pytest.param("a.service", "MachineID=4d389537\n", view(), None, id="the 8-character short ID matches"),
        pytest.param(
            "a.service",
            "MachineID=4d38953\n",
            view(),
            Rejection(Rule.MACHINE_ID, f'agent ID "{FULL_ID}" does not match required "4d38953"'),
            id="a 7-character prefix does not match",
        ),
        pytest.param(
            "a.service",
            "MachineID=e793afb9\n",
            view(),
            Rejection(Rule.MACHINE_ID, f'agent ID "{FULL_ID}" does not match required "e793afb9"'),
            id="another machine's ID does not match",
        ),
        pytest.param(
            "pin@4d389537.service", "MachineID=%i\n", view(), None, id="a pinned instance matches by its instance"
        ),
        pytest.param(
            "a.service", "MachineMetadata=region=us\n", view(metadata={"region": "us"}), None, id="metadata matches"
        ),
        pytest.param(
            "a.service",
            "MachineMetadata=region=us\n",
            view(metadata={"region": "eu"}),
            Rejection(Rule.METADATA, "local Machine metadata insufficient"),
            id="metadata with another value",
        ),
        pytest.param(
            "a.service",
            "MachineMetadata=region=us\n",
            view(),
            Rejection(Rule.METADATA, "local Machine metadata insufficient"),
            id="metadata the machine does not have",
        ),
        pytest.param(
            "a.service",
            "MachineMetadata=region=us\nMachineMetadata=region=eu\n",
            view(metadata={"region": "eu"}),
            None,
            id="values of one key are ORed",
        ),
        pytest.param(
            "a.service",
            'MachineMetadata="region=us" "disk=ssd"\n',
            view(metadata={"region": "us", "disk": "hdd"}),
            Rejection(Rule.METADATA, "local Machine metadata insufficient"),
            id="different keys are ANDed",
        ),
        pytest.param(
            "a.service",
            "MachineMetadata=region=us\nMachineMetadata=disk=ssd\nMachineMetadata=region=eu\n",
            view(metadata={"region": "eu", "disk": "ssd"}),
            None,
            id="grouping by key does not depend on line order",
        ),
        pytest.param(
            "a.service",
            "MachineOf=db.service\n",
            view(units={"db.service": ""}),
            None,
            id="a peer on the machine",
        ),
        pytest.param(
            "a.service",
            "MachineOf=db.service\nMachineOf=cache.service\n",
            view(units={"db.service": ""}),
            Rejection(Rule.PEERS, "required peer Unit(cache.service) is not scheduled locally"),
            id="every peer must be on the machine",
        ),
        pytest.param(
            "a.service",
            "MachineOf=db*.service\n",
            view(units={"db1.service": ""}),
            Rejection(Rule.PEERS, "required peer Unit(db*.service) is not scheduled locally"),
            id="a peer is a name, not a glob",
        ),
        pytest.param(
            "a.service",
            "MachineOf=g.service\n",
            view(units={"g.service": "Global=true\n"}),
            None,
            id="a global unit on the machine is a peer",
        ),
        pytest.param(
            "a.service",
            "Conflicts=b.service\n",
            view(units={"b.service": ""}),
            Rejection(Rule.CONFLICTS, "found conflict with locally-scheduled Unit(b.service)"),
            id="a conflict with a unit on the machine",
        ),
        pytest.param(
            "a.service",
            "",
            view(units={"b.service": "Conflicts=a.service\n"}),
            Rejection(Rule.CONFLICTS, "found conflict with locally-scheduled Unit(b.service)"),
            id="a conflict declared by the unit on the machine",
        ),
        pytest.param(
            "web@2.service",
            "Conflicts=web@*.service\n",
            view(units={"web@1.service": ""}),
            Rejection(Rule.CONFLICTS, "found conflict with locally-scheduled Unit(web@1.service)"),
            id="a conflict glob over instances",
        ),
        pytest.param(
            "a.service",
            "Conflicts=a.service\n",
            view(units={"a.service": "Conflicts=a.service\n"}),
            None,
            id="a unit does not conflict with itself",
        ),
        pytest.param(
            "a.service",
            "Conflicts=b.service\n",
            view(units={"c.service": "", "b.service": ""}),
            Rejection(Rule.CONFLICTS, "found conflict with locally-scheduled Unit(b.service)"),
            id="the first conflicting unit by name is named",
        ),
        pytest.param(
            "new.service",
            "Replaces=old.service\n",
            view(units={"old.service": ""}),
            None,
            id="a unit may land where a unit it replaces sits",
        ),
        pytest.param(
            "old.service",
            "",
            view(units={"new.service": "Replaces=old.service\n"}),
            Rejection(Rule.REPLACES, "found replace with locally-scheduled Unit(new.service)"),
            id="a unit may not land where a unit that replaces it sits",
        ),
        pytest.param(
            "b.service",
            "Replaces=a.service\n",
            view(units={"a.service": "Replaces=b.service\n"}),
            None,
            id="mutual replaces are ignored",
        ),
        pytest.param(
            "b.service",
            "Conflicts=c.service\n",
            view(units={"a.service": "Replaces=b.service\n", "c.service": ""}),
            Rejection(Rule.CONFLICTS, "found conflict with locally-scheduled Unit(c.service)"),
            id="every conflict is checked before any replace",
        ),
        pytest.param(
            "a.service",
            f"X-ConditionMachineID={FULL_ID}\n",
            view(),
            None,
            id="deprecated X-ConditionMachineID matches",
        ),
        pytest.param(
            "a.service",
            "X-ConditionMachineID=e793afb9\n",
            view(),
            Rejection(Rule.MACHINE_ID, f'agent ID "{FULL_ID}" does not match required "e793afb9"'),
            id="deprecated X-ConditionMachineID that does not match",
        ),
        pytest.param(
            "a.service",
            "X-ConditionMachineBootID=e793afb9\n",
            view(),
            Rejection(Rule.MACHINE_ID, f'agent ID "{FULL_ID}" does not match required "e793afb9"'),
            id="legacy X-ConditionMachineBootID is a MachineID",
        ),
        pytest.param(
            "a.service",
            "X-ConditionMachineMetadata=region=us\n",
            view(metadata={"region": "eu"}),
            Rejection(Rule.METADATA, "local Machine metadata insufficient"),
            id="deprecated X-ConditionMachineMetadata",
        ),
        pytest.param(
            "a.service",
            "X-ConditionMachineMetadata=region=us\nMachineMetadata=region=eu\n",
            view(metadata={"region": "eu"}),
            None,
            id="deprecated and current metadata of one key are ORed",
        ),
        pytest.param(
            "a.service",
            "X-ConditionMachineOf=db.service\n",
            view(),
            Rejection(Rule.PEERS, "required peer Unit(db.service) is not scheduled locally"),
            id="deprecated X-ConditionMachineOf",
        ),
        pytest.param(
            "a.service",
            "X-ConditionMachineOf=db.service\nMachineOf=cache.service\n",
            view(units={"cache.service": ""}),
            Rejection(Rule.PEERS, "required peer Unit(db.service) is not scheduled locally"),
            id="deprecated and current peers are all required",
        ),
        pytest.param(
            "a.service",
            "X-Conflicts=b*\n",
            view(units={"b1.service": ""}),
            Rejection(Rule.CONFLICTS, "found conflict with locally-scheduled Unit(b1.service)"),
            id="deprecated X-Conflicts",
        ),
        pytest.param(
            "a.service",
            "",
            view(units={"b.service": "X-Conflicts=a.service\n"}),
            Rejection(Rule.CONFLICTS, "found conflict with locally-scheduled Unit(b.service)"),
            id="deprecated X-Conflicts of the unit on the machine",
        ),
        pytest.param(
            "web@2.service",
            "Conflicts=%p@*.service\n",
            view(units={"web@1.service": ""}),
            Rejection(Rule.CONFLICTS, "found conflict with locally-scheduled Unit(web@1.service)"),
            id="a conflict with a specifier",
        ),
        pytest.param(
            "metadata@smoke1.service",
            "MachineMetadata=hostname=%i\n",
            view(metadata={"hostname": "smoke1"}),
            None,
            id="metadata with a specifier",
        ),
        pytest.param(
            "metadata@smoke2.service",
            "MachineMetadata=hostname=%i\n",
            view(metadata={"hostname": "smoke1"}),
            Rejection(Rule.METADATA, "local Machine metadata insufficient"),
            id="metadata with a specifier that does not match",
        ),
        pytest.param(
            "foo.service",
            "MachineOf=%p.socket\n",
            view(units={"foo.socket": ""}),
            None,
            id="a peer with a specifier",
        ),
        pytest.param(
            "a.service",
            "Conflicts=b.service c.service\n",
            view(units={"c.service": ""}),
            Rejection(Rule.CONFLICTS, "found conflict with locally-scheduled Unit(c.service)"),
            id="conflicts split on whitespace each count",
        ),
        pytest.param(
            "a.service",
            "Conflicts=[\n",
            view(units={"[": ""}),
            None,
            id="a malformed conflict glob matches nothing",
        ),
        pytest.param(
            "a.service",
            "MachineID=4d389537\nMachineMetadata=region=us\n",
            view(metadata={"region": "eu"}),
            Rejection(Rule.METADATA, "local Machine metadata insufficient"),
            id="MachineID with metadata needs both",
        ),
        pytest.param(
            "a.service",
            "MachineOf=db.service\nConflicts=x.service\n",
            view(units={"db.service": "", "x.service": ""}),
            Rejection(Rule.CONFLICTS, "found conflict with locally-scheduled Unit(x.service)"),
            id="a peer on the machine does not excuse a conflict there",
        ),
        pytest.param(
            "a.service",
            "MachineOf=db.service\nReplaces=old.service\n",
            view(units={"db.service": "", "old.service": ""}),
            None,
            id="a follower may land where a unit it replaces sits",
        ),
        pytest.param(
            "g.service",
            "Global=true\nMachineMetadata=role=web\nConflicts=x.service\n",
            view(metadata={"role": "web"}, units={"x.service": ""}),
            Rejection(Rule.CONFLICTS, "found conflict with locally-scheduled Unit(x.service)"),
            id="a global unit with metadata and conflicts",
        ),
        pytest.param(
            "a.service",
            "MachineID=other\nMachineMetadata=region=us\nConflicts=b.service\n",
            view(units={"b.service": ""}),
            Rejection(Rule.MACHINE_ID, f'agent ID "{FULL_ID}" does not match required "other"'),
            id="MachineID is checked first",
        ),
        pytest.param(
            "a.service",
            "MachineMetadata=region=us\nMachineOf=p.service\n",
            view(),
            Rejection(Rule.METADATA, "local Machine metadata insufficient"),
            id="metadata is checked before peers",
        ),
        pytest.param(
            "a.service",
            "MachineOf=p.service\nConflicts=b.service\n",
            view(units={"b.service": ""}),
            Rejection(Rule.PEERS, "required peer Unit(p.service) is not scheduled locally"),
            id="peers are checked before conflicts",
        ),
    ],
)
def test_check(name: str, xfleet: str, machine: MachineView, expected: Rejection | None) -> None:
    assert check(name, reqs(name, xfleet), machine) == expected


@pytest.mark.parametrize(
    ("name", "allow", "deny", "expected"),
    [
        pytest.param("web.service", (), (), "", id="no patterns allow every name"),
        pytest.param("web.service", ("web*",), (), "", id="an allowed name"),
        pytest.param(
            "db.service", ("web*", "cache@*"), (), "unit name matches no unit_allow pattern (web*, cache@*)",
            id="a name no allow pattern matches",
        ),
        pytest.param(
            "web.service", ("web*",), ("*.service",), "unit name matches unit_deny pattern '*.service'",
            id="deny wins over allow",
        ),
        pytest.param("web.timer", (), ("*.service",), "", id="a deny pattern that does not match"),
        pytest.param("a/b.service", (), ("*.service",), "", id="globs do not cross a slash, as Conflicts's"),
    ],
)  # fmt: skip
def test_policy_refusal(name: str, allow: tuple[str, ...], deny: tuple[str, ...], expected: str) -> None:
    assert policy_refusal(name, allow, deny) == expected


def test_a_machine_refusing_a_unit_rules_it_out_before_any_other_check() -> None:
    pinned_elsewhere = reqs("db.service", "MachineID=0000000000000000\n")
    denying = MachineView(Machine(MachineID(FULL_ID), unit_deny=("db*",)), {})
    assert check("db.service", pinned_elsewhere, denying) == Rejection(
        Rule.POLICY, "the machine refuses it: unit name matches unit_deny pattern 'db*'"
    )
    refusing = MachineView(Machine(MachineID(FULL_ID), refused={"db.service": "the host already has db.service"}), {})
    assert check("db.service", reqs("db.service"), refusing) == Rejection(
        Rule.POLICY, "the machine refuses it: the host already has db.service"
    )
    assert check("web.service", reqs("web.service"), refusing) is None, "only the refused name"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab*?.-@/", max_size=8), st.lists(st.text(alphabet="ab*?.-", max_size=5), max_size=3))
def test_a_denied_name_is_never_allowed_whatever_the_allow_list(name: str, deny: list[str]) -> None:
    for allow in ((), ("*",), tuple(deny)):
        if any(path_match(p, name) for p in deny):
            assert policy_refusal(name, allow, deny).startswith("unit name matches unit_deny pattern")


def test_machine_id_matches_full_and_short_ids() -> None:
    machine = MachineID(FULL_ID)
    assert machine_id_matches(FULL_ID, machine)
    assert machine_id_matches(FULL_ID[:8], machine)
    assert not machine_id_matches(FULL_ID[:9], machine)
    assert not machine_id_matches("", machine)
    assert machine_id_matches("short", MachineID("short"))


@pytest.mark.parametrize(
    ("name", "xfleet", "on_machine", "expected"),
    [
        pytest.param("new.service", "Replaces=old.service\n", ["old.service"], ["old.service"], id="a replaced unit"),
        pytest.param(
            "new.service",
            "Replaces=old*\n",
            ["old2.service", "old1.service", "other.service"],
            ["old1.service", "old2.service"],
            id="every matching unit in name order",
        ),
        pytest.param("new.service", "", ["old.service"], [], id="no Replaces displaces nothing"),
        pytest.param("b.service", "Replaces=a.service\n", ["a.service"], [], id="a unit that replaces back stays"),
        pytest.param("g.service", "Replaces=g*\n", ["g.service"], [], id="a unit does not displace itself"),
        pytest.param(
            "new.service",
            "Replaces=glob.service\n",
            ["glob.service"],
            ["glob.service"],
            id="a global unit is displaced too",
        ),
    ],
)
def test_displaced(name: str, xfleet: str, on_machine: list[str], expected: list[str]) -> None:
    units = {
        "a.service": reqs("a.service", "Replaces=b.service\n"),
        "glob.service": reqs("glob.service", "Global=true\n"),
    }
    machine = MachineView(Machine(MachineID("m1")), {u: units.get(u, reqs(u)) for u in on_machine})
    assert displaced(name, reqs(name, xfleet), machine) == expected


# ------------------------------------------------------------------------------------------------------------
# Metadata operators


@pytest.mark.parametrize(
    ("pair", "metadata", "holds"),
    [
        pytest.param("region=us", {"region": "us"}, True, id="equal"),
        pytest.param("region=us", {"region": "US"}, False, id="equality is case sensitive"),
        pytest.param("region=us", {}, False, id="equal needs the key"),
        pytest.param("disk!=hdd", {"disk": "ssd"}, True, id="not equal to another value"),
        pytest.param("disk!=hdd", {"disk": "hdd"}, False, id="not equal to the same value"),
        pytest.param("disk!=hdd", {}, True, id="not equal holds when the key is missing"),
        pytest.param("cores>4", {"cores": "8"}, True, id="greater"),
        pytest.param("cores>4", {"cores": "4"}, False, id="not strictly greater"),
        pytest.param("cores>=4", {"cores": "4"}, True, id="at least"),
        pytest.param("cores<4", {"cores": "3.5"}, True, id="less with a decimal"),
        pytest.param("cores<=4", {"cores": "4.0"}, True, id="at most compares numbers not text"),
        pytest.param("cores>10", {"cores": "9"}, False, id="numbers are not compared as text"),
        pytest.param("cores>-1", {"cores": "0"}, True, id="negative numbers"),
        pytest.param("cores>4", {"cores": "many"}, False, id="a non-numeric machine value never matches"),
        pytest.param("cores<4", {"cores": "many"}, False, id="a non-numeric machine value never matches less"),
        pytest.param("cores>four", {"cores": "8"}, False, id="a non-numeric operand never matches"),
        pytest.param("cores>4", {}, False, id="a numeric comparison needs the key"),
        pytest.param("zone=~us-.*", {"zone": "us-east"}, True, id="a regular expression that matches"),
        pytest.param("zone=~us", {"zone": "us-east"}, False, id="a regular expression must match the whole value"),
        pytest.param("zone=~us-.*", {}, False, id="a regular expression needs the key"),
        pytest.param("zone=~[", {"zone": "["}, False, id="a broken regular expression never matches"),
    ],
)
def test_rule_holds(pair: str, metadata: dict[str, str], holds: bool) -> None:
    assert rule_holds(rule(pair), metadata) is holds


@pytest.mark.parametrize(
    ("pairs", "metadata", "matches"),
    [
        pytest.param([], {}, True, id="no rules match any machine"),
        pytest.param(["a=1", "a=2"], {"a": "2"}, True, id="equal values of one key are ORed"),
        pytest.param(["a=1", "b=2"], {"a": "1"}, False, id="keys are ANDed"),
        pytest.param(["zone=us", "zone=~eu-.*"], {"zone": "eu-west"}, True, id="a regex joins its key's OR group"),
        pytest.param(["cores>2", "cores<8"], {"cores": "4"}, True, id="numeric rules each hold on their own"),
        pytest.param(["cores>2", "cores<8"], {"cores": "9"}, False, id="one failing numeric rule fails"),
        pytest.param(["a=1", "a!=1"], {"a": "1"}, False, id="not equal is not ORed with equal"),
        pytest.param(["a=1", "b!=2"], {"a": "1"}, True, id="not equal with a missing key holds"),
    ],
)
def test_metadata_matches(pairs: list[str], metadata: dict[str, str], matches: bool) -> None:
    assert metadata_matches([rule(p) for p in pairs], metadata) is matches


# ------------------------------------------------------------------------------------------------------------
# Least loaded


def machines(*ids: str, loads: dict[str, int] | None = None) -> LoadIndex:
    loads = loads or {}
    return LoadIndex(
        MachineView(Machine(MachineID(m)), {f"u{i}.service": reqs(f"u{i}.service") for i in range(loads.get(m, 0))})
        for m in ids
    )


def test_load_index_orders_by_load_then_id() -> None:
    index = machines("c", "a", "d", "b", loads={"a": 2, "b": 1, "d": 1})
    assert [v.id for v in index] == ["c", "b", "d", "a"]
    index.add(MachineID("c"), "x.service", reqs("x.service"))
    index.add(MachineID("c"), "y.service", reqs("y.service"))
    assert [v.id for v in index] == ["b", "d", "a", "c"]
    index.remove(MachineID("a"), "u0.service")
    index.remove(MachineID("a"), "u1.service")
    index.remove(MachineID("a"), "not-there.service")
    assert [v.id for v in index] == ["a", "b", "d", "c"]
    assert len(index) == 4


def test_adding_a_unit_twice_does_not_count_twice() -> None:
    index = machines("a", "b")
    index.add(MachineID("a"), "x.service", reqs("x.service"))
    index.add(MachineID("a"), "x.service", reqs("x.service"))
    assert [(v.id, v.load) for v in index] == [("b", 0), ("a", 1)]


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5), st.integers(0, 6)), max_size=40))
def test_load_index_always_iterates_in_least_loaded_order(ops: list[tuple[bool, int, int]]) -> None:
    index = machines(*[f"m{i}" for i in range(6)])
    for add, machine, unit in ops:
        if add:
            index.add(MachineID(f"m{machine}"), f"x{unit}.service", reqs(f"x{unit}.service"))
        else:
            index.remove(MachineID(f"m{machine}"), f"x{unit}.service")
    order = [(v.load, v.id) for v in index]
    assert order == sorted(order)
    assert sorted(v.id for v in index) == [f"m{i}" for i in range(6)]


def test_choose_picks_the_least_loaded_machine() -> None:
    index = machines("m1", "m2", "m3", loads={"m1": 2, "m2": 1, "m3": 3})
    assert choose("x.service", reqs("x.service"), index) == Placed(MachineID("m2"))


def test_choose_breaks_ties_by_machine_id() -> None:
    index = machines("m3", "m1", "m2")
    assert choose("x.service", reqs("x.service"), index) == Placed(MachineID("m1"))


def test_choose_skips_machines_that_fail_a_check() -> None:
    index = LoadIndex(
        [
            MachineView(Machine(MachineID("m1")), {"b.service": reqs("b.service")}),
            MachineView(Machine(MachineID("m2")), {"c.service": reqs("c.service"), "d.service": reqs("d.service")}),
        ]
    )
    assert choose("a.service", reqs("a.service", "Conflicts=b.service\n"), index) == Placed(MachineID("m2"))


def test_choose_reports_what_a_replacing_unit_displaces() -> None:
    index = LoadIndex([MachineView(Machine(MachineID("m1")), {"old.service": reqs("old.service")})])
    decision = choose("new.service", reqs("new.service", "Replaces=old.service\n"), index)
    assert decision == Placed(MachineID("m1"), ("old.service",))


def test_choose_follows_a_pinned_machine_even_if_it_is_loaded() -> None:
    index = machines("aaaaaaaa11", "bbbbbbbb22", loads={"bbbbbbbb22": 5})
    assert choose("x.service", reqs("x.service", "MachineID=bbbbbbbb\n"), index) == Placed(MachineID("bbbbbbbb22"))


def test_choose_with_no_machines() -> None:
    assert choose("x.service", reqs("x.service"), LoadIndex([])) == Unplaceable("zero agents available")


def test_unplaceable_counts_rejections_per_rule() -> None:
    index = LoadIndex(
        [
            MachineView(Machine(MachineID("m1"), metadata={"disk": "hdd"})),
            MachineView(Machine(MachineID("m2"), metadata={"disk": "ssd"}), {"b.service": reqs("b.service")}),
            MachineView(Machine(MachineID("m3"), metadata={"disk": "ssd"}), {"b.service": reqs("b.service")}),
        ]
    )
    decision = choose("a.service", reqs("a.service", "MachineMetadata=disk=ssd\nConflicts=b.service\n"), index)
    assert isinstance(decision, Unplaceable)
    assert dict(decision.counts) == {"MachineMetadata": 1, "Conflicts": 2}
    assert dict(decision.examples) == {
        "MachineMetadata": "local Machine metadata insufficient",
        "Conflicts": "found conflict with locally-scheduled Unit(b.service)",
    }
    assert decision.reason == (
        "no machine can run it: MachineMetadata ruled out 1 of 3 machines (local Machine metadata insufficient); "
        "Conflicts ruled out 2 of 3 machines (found conflict with locally-scheduled Unit(b.service))"
    )


def test_unplaceable_pinned_to_a_missing_machine() -> None:
    decision = choose("x.service", reqs("x.service", "MachineID=nowhere\n"), machines("m1", "m2"))
    assert isinstance(decision, Unplaceable)
    assert dict(decision.counts) == {"MachineID": 2}
    assert decision.reason == (
        'no machine can run it: MachineID ruled out 2 of 2 machines (agent ID does not match required "nowhere")'
    )


def test_unplaceable_with_one_machine_says_machine() -> None:
    decision = choose("x.service", reqs("x.service", "MachineOf=p.service\n"), machines("m1"))
    assert isinstance(decision, Unplaceable)
    assert decision.reason == (
        "no machine can run it: MachineOf ruled out 1 of 1 machine "
        "(required peer Unit(p.service) is not scheduled locally)"
    )


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_choose_does_not_depend_on_the_order_machines_are_given(loads: list[int], rnd: random.Random) -> None:
    ids = [f"m{i}" for i in range(len(loads))]
    shuffled = ids[:]
    rnd.shuffle(shuffled)
    load = dict(zip(ids, loads, strict=True))
    first = choose("x.service", reqs("x.service"), machines(*ids, loads=load))
    second = choose("x.service", reqs("x.service"), machines(*shuffled, loads=load))
    assert first == second
    assert isinstance(first, Placed)
    assert (load[first.machine], first.machine) == min((load[m], m) for m in ids)
