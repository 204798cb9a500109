"""The watched directory's pure decisions: which files count, what they describe, and what a watcher changes."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpy.model import DesiredState
from fleetpy.unit import UnitFile
from fleetpy.watchplan import (
    Claim,
    ClusterUnit,
    Create,
    Destroy,
    DirectoryFile,
    DirectoryUnits,
    FileKind,
    PutClaim,
    Release,
    Replace,
    WatchAction,
    WatchSnapshot,
    classify,
    read_directory,
    watch_plan,
)

NOW = 1_000_000.0
OLD = NOW - 60
A = "[Service]\nExecStart=/bin/sleep 1000\n"
B = "[Service]\nExecStart=/bin/sleep 2000\n"


def files(entries: dict[str, str] | None = None, /, **more: str) -> dict[str, DirectoryFile]:
    """name → content, all settled; ``__`` in a keyword stands for ``.``."""
    named = {**(entries or {}), **{k.replace("__", "."): v for k, v in more.items()}}
    return {name: DirectoryFile(text.encode(), OLD) for name, text in named.items()}


# ------------------------------------------------------------------------------------------------------------
# Which files count


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        pytest.param("hello.service", FileKind.UNIT, id="a unit file"),
        pytest.param("web@.service", FileKind.UNIT, id="a template unit"),
        pytest.param("db.timer", FileKind.UNIT, id="any unit type"),
        pytest.param("web.service.j2", FileKind.TEMPLATE, id="a Jinja2 template of a unit"),
        pytest.param("values.yaml", FileKind.VALUES, id="the templates' variables"),
        pytest.param(".hello.service", FileKind.IGNORED, id="a dotfile"),
        pytest.param(".hello.service.swp", FileKind.IGNORED, id="vim's swap file"),
        pytest.param("hello.service~", FileKind.IGNORED, id="a backup file"),
        pytest.param("#hello.service#", FileKind.IGNORED, id="emacs' autosave file"),
        pytest.param("hello.service.tmp", FileKind.IGNORED, id="a temporary file to be renamed into place"),
        pytest.param("hello.service.dpkg-new", FileKind.IGNORED, id="a package manager's new file"),
        pytest.param("4913", FileKind.IGNORED, id="vim's probe file"),
        pytest.param("README.md", FileKind.IGNORED, id="a file that is not a unit"),
        pytest.param("notes.j2", FileKind.IGNORED, id="a template of something that is not a unit"),
        pytest.param("hello.servICE", FileKind.IGNORED, id="an unknown unit type"),
    ],
)
def test_classify(name: str, kind: FileKind) -> None:
    assert classify(name) == kind


# ------------------------------------------------------------------------------------------------------------
# What a directory describes


def test_unit_files_describe_units_by_their_names() -> None:
    result = read_directory(files({"web@.service": B}, a__service=A, README__md="hi"), now=NOW)
    assert sorted(result.wanted) == ["a.service", "web@.service"]
    assert result.wanted["a.service"].unit == UnitFile.from_text(A)
    assert result.wanted["a.service"].record.desired == DesiredState.LAUNCHED
    assert result.wanted["web@.service"].record.desired == DesiredState.INACTIVE, "a template cannot be launched"
    assert (result.held, dict(result.errors)) == (frozenset(), {})


def test_a_file_still_being_written_is_held_without_an_error() -> None:
    entries = files(a__service=A, empty__service="")
    entries["fresh.service"] = DirectoryFile(B.encode(), NOW - 0.2)
    result = read_directory(entries, now=NOW, settle=1.0)
    assert sorted(result.wanted) == ["a.service"]
    assert result.held == {"fresh.service", "empty.service"}
    assert result.errors == {}
    assert sorted(read_directory(entries, now=NOW + 1, settle=1.0).wanted) == ["a.service", "fresh.service"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        pytest.param("bad.service", "[Service]\nnonsense upon stilts\n", "nonsense upon stilts", id="a syntax error"),
        pytest.param("bad.service", "[X-Fleet]\nGlobal=true\nMachineOf=a.service\n", "Global", id="bad X-Fleet"),
        pytest.param("a b.service", A, "invalid character", id="an invalid unit name"),
        pytest.param("bad.service", "\udcff", "not UTF-8", id="not UTF-8"),
        pytest.param("bad.service.j2", "{{ nowhere }}", "'nowhere' is undefined", id="an undefined variable"),
        pytest.param("bad.service.j2", "{% if %}", "template syntax error", id="a template syntax error"),
    ],
)
def test_an_invalid_file_is_held_with_its_error(name: str, content: str, message: str) -> None:
    entries = files(a__service=A)
    entries[name] = DirectoryFile(content.encode("utf-8", "surrogateescape"), OLD)
    result = read_directory(entries, now=NOW)
    assert sorted(result.wanted) == ["a.service"]
    assert result.held == {name}
    assert message in result.errors[name]


def test_two_files_describing_one_unit_are_both_held() -> None:
    result = read_directory(files(a__service=A, a__service__j2=B), now=NOW)
    assert result.wanted == {}
    assert result.held == {"a.service", "a.service.j2"}
    assert result.errors["a.service"] == "unit a.service is also described by a.service.j2"


def test_a_template_renders_with_values_and_can_describe_many_units() -> None:
    template = "[Service]\nExecStart=/bin/echo {{ greeting }} from {{ region }} as {{ unit }}\n"
    values = (
        "greeting: hello\nregion: nowhere\n"
        "units:\n  web.service.j2:\n    web-eu.service: {region: eu}\n    web-us.service: {region: us}\n"
    )
    result = read_directory(files(web__service__j2=template, one__service__j2=template, values__yaml=values), now=NOW)
    assert sorted(result.wanted) == ["one.service", "web-eu.service", "web-us.service"]
    assert result.wanted["web-us.service"].unit.contents["Service"]["ExecStart"] == (
        "/bin/echo hello from us as web-us.service",
    )
    assert result.wanted["one.service"].unit.contents["Service"]["ExecStart"] == (
        "/bin/echo hello from nowhere as one.service",
    )
    assert {u.file for u in result.wanted.values()} == {"web.service.j2", "one.service.j2"}


def test_invalid_values_hold_every_template_but_not_plain_units() -> None:
    result = read_directory(files(a__service=A, web__service__j2=A, values__yaml="a: [unclosed\n"), now=NOW)
    assert sorted(result.wanted) == ["a.service"]
    assert result.held == {"web.service.j2"}
    assert "invalid YAML" in result.errors["values.yaml"]


def test_one_bad_unit_holds_every_unit_of_its_template() -> None:
    values = "units:\n  web.service.j2:\n    ok.service: {}\n    bad name.service: {}\n"
    result = read_directory(files(web__service__j2=A, values__yaml=values), now=NOW)
    assert result.wanted == {}
    assert result.held == {"web.service.j2"}
    assert "bad name.service: invalid character" in result.errors["web.service.j2"]


# ------------------------------------------------------------------------------------------------------------
# What a watcher changes

ME, OTHER = "me", "other"


def wanted(**units: str) -> DirectoryUnits:
    return read_directory(files(**units), now=NOW)


H_A, H_B = UnitFile.from_text(A).hash, UnitFile.from_text(B).hash


OURS = ClusterUnit(H_A, 7, created=5)  # created at revision 5 by a watched directory (marker at 5), changed at 7
MARKED = {"a.service": 5}


def kinds(actions: tuple[WatchAction, ...]) -> list[tuple[str, str]]:
    return [(type(a).__name__, a.unit) for a in actions]


def test_a_new_file_creates_its_unit() -> None:
    plan = watch_plan(ME, wanted(a__service=A), WatchSnapshot())
    assert kinds(plan.actions) == [("Create", "a.service")]


def test_a_unit_not_created_by_a_watched_directory_is_never_touched() -> None:
    snapshot = WatchSnapshot(units={"a.service": ClusterUnit(H_B, 7, created=7)})
    plan = watch_plan(ME, wanted(a__service=A), snapshot)
    assert plan.actions == ()
    assert "was not created by a watched directory" in plan.conflicts["a.service"]
    assert watch_plan(ME, wanted(), snapshot).actions == (), "and its absence from the directory changes nothing"


def test_a_changed_file_replaces_the_unit_at_its_revision() -> None:
    snapshot = WatchSnapshot(
        units={"a.service": OURS},
        markers=MARKED,
        claims={"a.service": {ME: Claim(ME, H_A, "a.service")}},
    )
    (action,) = watch_plan(ME, wanted(a__service=B), snapshot).actions
    assert isinstance(action, Replace)
    assert (action.unit, action.revision, action.wanted.unit.hash) == ("a.service", 7, H_B)


def test_a_removed_file_destroys_its_unit_unless_another_directory_keeps_it() -> None:
    mine = {ME: Claim(ME, H_A, "a.service")}
    snapshot = WatchSnapshot(
        units={"a.service": OURS},
        markers=MARKED,
        claims={"a.service": mine},
    )
    assert watch_plan(ME, wanted(), snapshot).actions == (Destroy("a.service", 7, "its file a.service is gone"),)
    shared = replace(snapshot, claims={"a.service": {**mine, OTHER: Claim(OTHER, H_A, "a.service")}})
    assert kinds(watch_plan(ME, wanted(), shared).actions) == [("Destroy", "a.service")], "the other one is not live"
    live = replace(shared, live=frozenset({ME, OTHER}))
    assert kinds(watch_plan(ME, wanted(), live).actions) == [("Release", "a.service")]


def test_an_invalid_file_keeps_its_units_as_they_are() -> None:
    snapshot = WatchSnapshot(
        units={"a.service": OURS},
        markers=MARKED,
        claims={"a.service": {ME: Claim(ME, H_A, "a.service")}},
    )
    plan = watch_plan(ME, wanted(a__service="[Service]\nbroken\n"), snapshot)
    assert plan.actions == ()


def test_a_unit_destroyed_by_other_means_is_created_again_while_its_file_is_there() -> None:
    snapshot = WatchSnapshot(markers=MARKED, claims={"a.service": {ME: Claim(ME, H_A, "a.service")}})
    assert kinds(watch_plan(ME, wanted(a__service=A), snapshot).actions) == [("Create", "a.service")]
    assert watch_plan(ME, wanted(), snapshot).actions == (Release("a.service", True, "its file a.service is gone"),)


def test_a_unit_destroyed_and_submitted_again_by_other_means_is_not_the_directorys() -> None:
    """The marker of the unit the directory created outlives it; the unit submitted by hand is younger."""
    snapshot = WatchSnapshot(
        units={"a.service": ClusterUnit(H_B, 9, created=9)},
        markers=MARKED,
        claims={"a.service": {ME: Claim(ME, H_A, "a.service")}},
    )
    plan = watch_plan(ME, wanted(a__service=A), snapshot)
    assert plan.actions == (Release("a.service", False, "the unit is not ours to manage"),)
    assert "was not created by a watched directory" in plan.conflicts["a.service"]
    plan = watch_plan(ME, wanted(), snapshot)
    assert plan.actions == (Release("a.service", False, "its file a.service is gone"),), "never Destroy"


def test_a_directory_does_not_overwrite_what_another_live_directory_still_wants() -> None:
    snapshot = WatchSnapshot(
        units={"a.service": OURS},
        markers=MARKED,
        claims={"a.service": {ME: Claim(ME, H_A, "a.service"), OTHER: Claim(OTHER, H_A, "a.service")}},
        live=frozenset({ME, OTHER}),
    )
    plan = watch_plan(ME, wanted(a__service=B), snapshot)
    assert plan.actions == (PutClaim("a.service", Claim(ME, H_B, "a.service"), 7, "its file wants other content"),)
    assert "watched directory of other" in plan.conflicts["a.service"]


# ------------------------------------------------------------------------------------------------------------
# Properties: watchers converge and never fight


class Cluster:
    """An in-memory etcd for watch plans: applies actions with their compare-and-swap, as WatchedStore writes
    them (a marker at the revision of its unit's creation), and counts unit writes."""

    def __init__(self) -> None:
        self.units: dict[str, ClusterUnit] = {}
        self.markers: dict[str, int] = {}
        self.claims: dict[str, dict[str, Claim]] = {}
        self.revision = 1
        self.writes = 0

    def snapshot(self) -> WatchSnapshot:
        claims = {u: dict(c) for u, c in self.claims.items()}
        return WatchSnapshot(dict(self.units), dict(self.markers), claims, frozenset({ME, OTHER}))

    def by_hand(self, name: str, unit_hash: str | None) -> None:
        """``fleetpyctl destroy`` (the unit's key only), then ``fleetpyctl start`` if ``unit_hash``."""
        self.revision += 1
        self.units.pop(name, None)
        if unit_hash is not None:
            self.units[name] = ClusterUnit(unit_hash, self.revision, self.revision)

    def apply(self, owner: str, action: WatchAction) -> None:
        self.revision += 1
        current = self.units.get(action.unit)
        if isinstance(action, Create | Replace):
            expected = 0 if isinstance(action, Create) else action.revision
            if (current.revision if current else 0) != expected:
                return
            created = current.created if current else self.revision
            self.units[action.unit] = ClusterUnit(action.wanted.unit.hash, self.revision, created)
            if isinstance(action, Create):
                self.markers[action.unit] = self.revision
            self.claims.setdefault(action.unit, {})[owner] = Claim(owner, action.wanted.unit.hash, action.wanted.file)
            self.writes += 1
        elif isinstance(action, PutClaim):
            if (current.revision if current else 0) == action.revision:
                self.claims.setdefault(action.unit, {})[owner] = action.claim
        elif isinstance(action, Destroy):
            if current is not None and current.revision == action.revision:
                del self.units[action.unit]
                self.markers.pop(action.unit, None)
                self.claims.pop(action.unit, None)
                self.writes += 1
        elif action.forget:
            self.markers.pop(action.unit, None)
            self.claims.pop(action.unit, None)
        else:
            self.claims.get(action.unit, {}).pop(owner, None)

    def run(self, owners: dict[str, DirectoryUnits], rounds: int = 6) -> None:
        for _ in range(rounds):
            for owner, directory in owners.items():
                for action in watch_plan(owner, directory, self.snapshot()).actions:
                    self.apply(owner, action)


contents = st.sampled_from([A, B, "[Service]\nExecStart=/bin/true\n"])
directories = st.dictionaries(st.sampled_from(["a__service", "b__service", "c__service"]), contents, max_size=3)


@settings(max_examples=60, deadline=None)
@given(first=directories, second=directories)
def test_watchers_of_identical_directories_converge_and_never_rewrite_a_unit(first: dict, second: dict) -> None:
    cluster = Cluster()
    cluster.run({ME: wanted(**first)})
    before = cluster.writes
    cluster.run({ME: wanted(**second), OTHER: wanted(**second)})
    # every unit is written at most once by the change (created, replaced or destroyed), never back and forth
    assert cluster.writes - before <= len(set(first) | set(second))
    assert {u: c.hash for u, c in cluster.units.items()} == {
        name.replace("__", "."): UnitFile.from_text(text).hash for name, text in second.items()
    }
    for owner in (ME, OTHER):
        assert watch_plan(owner, wanted(**second), cluster.snapshot()).actions == ()


@settings(max_examples=60, deadline=None)
@given(mine=directories, theirs=directories)
def test_watchers_of_different_directories_settle(mine: dict, theirs: dict) -> None:
    cluster = Cluster()
    cluster.run({ME: wanted(**mine), OTHER: wanted(**theirs)})
    writes = cluster.writes
    cluster.run({ME: wanted(**mine), OTHER: wanted(**theirs)})
    assert cluster.writes == writes, "no unit keeps changing"
    for name in {**mine, **theirs}:
        unit = name.replace("__", ".")
        assert unit in cluster.units, "a unit that some directory has exists"
        wanted_by = {UnitFile.from_text(d[name]).hash for d in (mine, theirs) if name in d}
        assert cluster.units[unit].hash in wanted_by
    assert set(cluster.units) == {n.replace("__", ".") for n in {**mine, **theirs}}


def test_a_unit_created_by_hand_survives_every_directory() -> None:
    cluster = Cluster()
    cluster.units["hand.service"] = ClusterUnit(H_A, 1, created=1)
    cluster.run({ME: wanted(hand__service=B), OTHER: wanted()})
    assert cluster.units["hand.service"] == ClusterUnit(H_A, 1, created=1)
    assert cluster.writes == 0


@settings(max_examples=60, deadline=None)
@given(
    first=directories,
    second=directories,
    by_hand=st.dictionaries(st.sampled_from(["a.service", "b.service", "c.service"]), contents, max_size=3),
)
def test_a_unit_destroyed_and_submitted_again_by_hand_survives_every_directory(
    first: dict, second: dict, by_hand: dict
) -> None:
    cluster = Cluster()
    cluster.run({ME: wanted(**first), OTHER: wanted(**first)})
    for name, text in by_hand.items():  # the directories' units among them keep their markers
        cluster.by_hand(name, UnitFile.from_text(text).hash)
    before = dict(cluster.units)
    cluster.run({ME: wanted(**second), OTHER: wanted(**first)})
    cluster.run({ME: wanted(), OTHER: wanted()})
    assert {name: cluster.units.get(name) for name in by_hand} == {name: before[name] for name in by_hand}


def test_a_unit_destroyed_by_hand_and_created_again_by_its_directory_is_the_directorys() -> None:
    cluster = Cluster()
    cluster.run({ME: wanted(a__service=A)})
    cluster.by_hand("a.service", None)
    cluster.run({ME: wanted(a__service=A)})
    assert cluster.markers["a.service"] == cluster.units["a.service"].created, "its marker was written anew"
    cluster.run({ME: wanted(a__service=B)})
    assert cluster.units["a.service"].hash == H_B, "an edit of its file replaces it"
    cluster.run({ME: wanted()})
    assert cluster.units == {}, "and removing its file destroys it"
