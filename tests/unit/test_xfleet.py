"""The ``[X-Fleet]`` section: multi-value splitting, specifiers, requirement keys, option-combination rules,
fleetpy's metadata operators, and Go's ``path.Match`` (FLEET-SPEC §2.1, §2.4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpy.errors import InvalidUnit
from fleetpy.unit import (
    MetadataRule,
    UnitFile,
    expand_specifiers,
    is_global,
    name_info,
    parse_metadata_rule,
    path_match,
    requirements,
    split_multivalue,
    unknown_requirement_warnings,
    validate_requirements,
    validate_unit,
)

XFleet = tuple[tuple[str, str], ...]


def xf(text: str) -> XFleet:
    """The [X-Fleet] pairs of a unit whose X-Fleet section is ``text``."""
    return UnitFile.from_text("[X-Fleet]\n" + text).xfleet


# ------------------------------------------------------------------------------------------------------------
# Multi-value splitting


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("foo", ["foo"], id="a bare value is one item"),
        pytest.param("foo bar", ["foo bar"], id="an unquoted value with spaces is one item"),
        pytest.param('"foo bar', ['"foo bar'], id="a value that only starts with a quote is one item"),
        pytest.param('foo "bar"', ['foo "bar"'], id="a value that only ends with a quote is one item"),
        pytest.param('""', [""], id="two quotes give one empty item"),
        pytest.param('"', [""], id="a single quote starts and ends the value"),
        pytest.param('"bar" "', ["bar", ""], id="a dangling quote gives a trailing empty item"),
        pytest.param('"foo\\"bar"', ["foo\\bar"], id="quotes are removed even after a backslash"),
        pytest.param('"region=us-east-1" "diskType=SSD"', ["region=us-east-1", "diskType=SSD"], id="two quoted items"),
        pytest.param('"a b" "c"', ["a b", "c"], id="spaces inside quotes do not split"),
        pytest.param('"a"  "b"', ["a", "", "b"], id="every space outside quotes splits"),
        pytest.param('"a"\t"b"', ["a\tb"], id="only spaces split, not tabs"),
        pytest.param('"a" b "c"', ["a", "b", "c"], id="unquoted words between quoted ones are items"),
    ],
)
def test_split_multivalue(value: str, expected: list[str]) -> None:
    assert split_multivalue(value) == expected


# ------------------------------------------------------------------------------------------------------------
# Specifiers


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        pytest.param("%n", "foo@bar.service", "foo@bar.service", id="percent n is the full name"),
        pytest.param("%N", "foo@bar.service", "foo@bar", id="percent N is the name without suffix"),
        pytest.param("%p", "foo@bar.service", "foo", id="percent p is the prefix of an instance"),
        pytest.param("%p", "foo.service", "foo", id="percent p is the whole name without an at sign"),
        pytest.param("%i", "foo@bar.service", "bar", id="percent i is the instance"),
        pytest.param("%i", "foo.service", "", id="percent i is empty without an instance"),
        pytest.param("%p.socket", "foo.service", "foo.socket", id="MachineOf percent p socket"),
        pytest.param("hostname=%i", "metadata@smoke1.service", "hostname=smoke1", id="metadata from an instance"),
        pytest.param("%x %% %", "foo@bar.service", "%x %% %", id="other specifiers stay literal"),
        pytest.param("%n-%n", "a.service", "a.service-a.service", id="every occurrence is replaced"),
        pytest.param("%%i", "a@b.service", "%b", id="a doubled percent is not an escape"),
    ],
)
def test_expand_specifiers(value: str, unit: str, expected: str) -> None:
    assert expand_specifiers(value, name_info(unit)) == expected


# ------------------------------------------------------------------------------------------------------------
# Requirements


@pytest.mark.parametrize(
    ("text", "unit", "field", "expected"),
    [
        pytest.param("MachineID=abc\n", "a.service", "machine_id", "abc", id="MachineID"),
        pytest.param("MachineID=a\nMachineID=b\n", "a.service", "machine_id", "a", id="the first MachineID wins"),
        pytest.param('MachineID="a" "b"\n', "a.service", "machine_id", "a", id="the first value of MachineID wins"),
        pytest.param(
            "X-ConditionMachineID=old\nMachineID=new\n",
            "a.service",
            "machine_id",
            "new",
            id="MachineID wins over X-ConditionMachineID whatever the line order",
        ),
        pytest.param(
            "X-ConditionMachineBootID=boot\nX-ConditionMachineID=cond\n",
            "a.service",
            "machine_id",
            "cond",
            id="X-ConditionMachineID wins over X-ConditionMachineBootID",
        ),
        pytest.param(
            "X-ConditionMachineBootID=boot\n", "a.service", "machine_id", "boot", id="the legacy boot ID is honoured"
        ),
        pytest.param("", "a.service", "machine_id", None, id="no MachineID"),
        pytest.param("MachineID=%i\n", "a@m1.service", "machine_id", "m1", id="MachineID is expanded"),
        pytest.param(
            "MachineOf=b.service\nX-ConditionMachineOf=c.service\n",
            "a.service",
            "peers",
            ("c.service", "b.service"),
            id="deprecated peers come first then MachineOf",
        ),
        pytest.param(
            'MachineOf="b.service c.service"\n',
            "a.service",
            "peers",
            ("b.service c.service",),
            id="a peer is not split on whitespace",
        ),
        pytest.param("MachineOf=%p.socket\n", "foo.service", "peers", ("foo.socket",), id="a peer is expanded"),
        pytest.param(
            "Conflicts=a.service\nConflicts=b.service\nConflicts=c*\n",
            "x.service",
            "conflicts",
            ("a.service", "b.service", "c*"),
            id="repeated Conflicts accumulate",
        ),
        pytest.param(
            "Conflicts=a.service b.service\n",
            "x.service",
            "conflicts",
            ("a.service", "b.service"),
            id="Conflicts are split on whitespace",
        ),
        pytest.param(
            "Conflicts=\ta.service\t  b.service \n",
            "x.service",
            "conflicts",
            ("a.service", "b.service"),
            id="Conflicts are split on any run of whitespace",
        ),
        pytest.param(
            "Conflicts=b.service\nX-Conflicts=a.service\n",
            "x.service",
            "conflicts",
            ("a.service", "b.service"),
            id="X-Conflicts come first then Conflicts",
        ),
        pytest.param(
            "Conflicts=%p@*.service\n", "web@1.service", "conflicts", ("web@*.service",), id="a conflict is expanded"
        ),
        pytest.param(
            "Replaces=a.service b.service\n",
            "x.service",
            "replaces",
            ("a.service b.service",),
            id="Replaces are not split on whitespace",
        ),
        pytest.param(
            'Replaces="a.service" "b.service"\n',
            "x.service",
            "replaces",
            ("a.service", "b.service"),
            id="quoted Replaces are split",
        ),
        pytest.param(
            "MachineMetadata=region=us\nX-ConditionMachineMetadata=disk=ssd\n",
            "x.service",
            "metadata",
            (MetadataRule("disk", "=", "ssd"), MetadataRule("region", "=", "us")),
            id="deprecated metadata comes first then MachineMetadata",
        ),
        pytest.param(
            'MachineMetadata="region=us-east-1" "diskType=SSD"\n',
            "x.service",
            "metadata",
            (MetadataRule("region", "=", "us-east-1"), MetadataRule("diskType", "=", "SSD")),
            id="quoted metadata pairs are split",
        ),
        pytest.param(
            "MachineMetadata=hostname=%i\n",
            "metadata@smoke1.service",
            "metadata",
            (MetadataRule("hostname", "=", "smoke1"),),
            id="metadata is expanded",
        ),
        pytest.param(
            "MachineMetadata=hostname=%i\n",
            "plain.service",
            "metadata",
            (),
            id="a pair whose value expands to nothing is ignored as fleet ignores it",
        ),
        pytest.param(
            'MachineMetadata="a=b=c" "=b" "a=" "ab" "" "region = us"\n',
            "x.service",
            "metadata",
            (MetadataRule("region ", "=", " us"),),
            id="pairs that do not split in two non-empty parts are silently ignored",
        ),
    ],
)
def test_requirements(text: str, unit: str, field: str, expected: object) -> None:
    assert getattr(requirements(xf(text), unit), field) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", False, id="no Global is not global"),
        pytest.param("Global=true\n", True, id="true"),
        pytest.param("Global=TRUE\n", True, id="case does not matter"),
        pytest.param("Global=yes\n", True, id="yes"),
        pytest.param("Global=1\n", True, id="one"),
        pytest.param("Global=on\n", True, id="on"),
        pytest.param("Global=t\n", True, id="t"),
        pytest.param("Global=y\n", False, id="y is not truthy"),
        pytest.param("Global=\n", False, id="empty is not truthy"),
        pytest.param("Global=true\nGlobal=false\n", False, id="the last value wins over an earlier true"),
        pytest.param("Global=false\nGlobal=true\n", True, id="the last value wins over an earlier false"),
        pytest.param('Global="true"\n', True, id="a quoted value is unquoted first"),
        pytest.param('Global="false" "true"\n', True, id="the last of several quoted values wins"),
        pytest.param('Global="true" "no"\n', False, id="a quoted false last value wins"),
    ],
)
def test_global_is_the_truthiness_of_the_last_value(text: str, expected: bool) -> None:
    assert is_global(xf(text)) is expected
    assert requirements(xf(text), "g.service").is_global is expected
    assert UnitFile.from_text("[X-Fleet]\n" + text).is_global is expected


def test_requirements_of_a_name_that_is_not_a_unit_name_are_not_expanded() -> None:
    reqs = requirements(xf("MachineOf=%p.socket\nMachineMetadata=host=%i\n"), "no-dot")
    assert reqs.peers == ("%p.socket",)
    assert reqs.metadata == (MetadataRule("host", "=", "%i"),)


def test_unknown_keys_are_listed_and_warned_about() -> None:
    unit = UnitFile.from_text("[X-Fleet]\nFoo=1\nMachineOf=a.service\nBar=2\nFoo=3\nmachineof=x\n")
    assert requirements(unit.xfleet, "x.service").unknown == ("Bar", "Foo", "machineof")
    assert unknown_requirement_warnings("x.service", unit) == [
        'Unit x.service: unrecognized requirement in [X-Fleet] section: "Bar"',
        'Unit x.service: unrecognized requirement in [X-Fleet] section: "Foo"',
        'Unit x.service: unrecognized requirement in [X-Fleet] section: "machineof"',
    ]


def test_other_sections_are_not_requirements() -> None:
    unit = UnitFile.from_text("[Unit]\nConflicts=a.service\n[Service]\nGlobal=true\n")
    reqs = requirements(unit.xfleet, "x.service")
    assert reqs.conflicts == ()
    assert not reqs.is_global


# ------------------------------------------------------------------------------------------------------------
# Metadata rules


@pytest.mark.parametrize(
    ("pair", "expected"),
    [
        pytest.param("region=us", MetadataRule("region", "=", "us"), id="fleet's key equals value"),
        pytest.param("a=>b", MetadataRule("a", "=", ">b"), id="an operator character after equals is a value"),
        pytest.param("disk!=hdd", MetadataRule("disk", "!=", "hdd"), id="not equal"),
        pytest.param("cores>4", MetadataRule("cores", ">", "4"), id="greater than"),
        pytest.param("cores>=4", MetadataRule("cores", ">=", "4"), id="at least"),
        pytest.param("cores<4", MetadataRule("cores", "<", "4"), id="less than"),
        pytest.param("cores<=4", MetadataRule("cores", "<=", "4"), id="at most"),
        pytest.param("zone=~us-.*", MetadataRule("zone", "=~", "us-.*"), id="regular expression"),
        pytest.param("a!=b=c", MetadataRule("a", "!=", "b=c"), id="an operator other than equals allows equals"),
        pytest.param("a=b=c", None, id="two equals signs are ignored as in fleet"),
        pytest.param("=b", None, id="an empty key is ignored"),
        pytest.param("a=", None, id="an empty value is ignored"),
        pytest.param("a>=", None, id="an empty operand is ignored"),
        pytest.param("novalue", None, id="no operator is ignored"),
        pytest.param("", None, id="an empty pair is ignored"),
    ],
)
def test_parse_metadata_rule(pair: str, expected: MetadataRule | None) -> None:
    assert parse_metadata_rule(pair) == expected


# ------------------------------------------------------------------------------------------------------------
# Option combinations


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "MachineOf=db.service\nConflicts=db*\n",
            'unresolvable requirements: peer "db.service" matches conflict "db*"',
            id="a peer that matches a conflict",
        ),
        pytest.param(
            "MachineOf=db.service\nReplaces=db.service\n",
            'unresolvable requirements: peer "db.service" matches replace "db.service"',
            id="a peer that matches a replace",
        ),
        pytest.param(
            "MachineID=abc\nMachineOf=db.service\n", "MachineID cannot be used with Peers", id="MachineID and peers"
        ),
        pytest.param(
            "X-ConditionMachineID=abc\nX-ConditionMachineOf=db.service\n",
            "MachineID cannot be used with Peers",
            id="deprecated MachineID and deprecated peers",
        ),
        pytest.param(
            "MachineID=abc\nConflicts=x*\n", "MachineID cannot be used with Conflicts", id="MachineID and conflicts"
        ),
        pytest.param("MachineID=abc\nGlobal=true\n", "MachineID cannot be used with Global", id="MachineID and Global"),
        pytest.param(
            "MachineID=abc\nReplaces=x.service\n", "MachineID cannot be used with Replaces", id="MachineID and Replaces"
        ),
        pytest.param("Global=true\nMachineOf=a.service\n", "Global cannot be used with Peers", id="Global and peers"),
        pytest.param(
            "Global=true\nReplaces=a.service\n", "Global cannot be used with Replaces", id="Global and Replaces"
        ),
        pytest.param(
            "Conflicts=a.service\nReplaces=b.service\n",
            "Conflicts cannot be used with Replaces",
            id="Conflicts and Replaces",
        ),
        pytest.param(
            "MachineID=abc\nMachineOf=a.service\nConflicts=a*\n",
            'unresolvable requirements: peer "a.service" matches conflict "a*"',
            id="overlap is reported before combinations",
        ),
        pytest.param(
            "MachineID=abc\nConflicts=a*\nGlobal=true\n",
            "MachineID cannot be used with Conflicts",
            id="MachineID combinations come in fleet's order",
        ),
        pytest.param(
            "MachineMetadata=zone=~[\n",
            "invalid regular expression in MachineMetadata '['",
            id="a regular expression that does not compile",
        ),
    ],
)
def test_invalid_combinations(text: str, message: str) -> None:
    with pytest.raises(InvalidUnit) as caught:
        validate_requirements(xf(text))
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("Global=true\nMachineMetadata=a=b\nConflicts=x*\n", id="Global with metadata and conflicts"),
        pytest.param("MachineOf=a.service\nConflicts=b*\n", id="peers with conflicts that do not overlap"),
        pytest.param("MachineOf=a.service\nReplaces=b*\n", id="peers with replaces that do not overlap"),
        pytest.param("MachineID=abc\nMachineMetadata=a=b\n", id="MachineID with metadata"),
        pytest.param("Global=false\nMachineOf=a.service\n", id="a false Global with peers"),
        pytest.param("MachineOf=foo.socket\nConflicts=%p.socket\n", id="specifiers are compared unexpanded"),
        pytest.param("Foo=bar\n", id="unknown keys are accepted"),
        pytest.param("MachineMetadata=zone=~us-(east|west)\n", id="a regular expression that compiles"),
    ],
)
def test_allowed_combinations(text: str) -> None:
    validate_requirements(xf(text))


def test_validate_unit_checks_the_name_first() -> None:
    unit = UnitFile.from_text("[X-Fleet]\nGlobal=true\nMachineID=x\n")
    with pytest.raises(InvalidUnit, match="invalid unit type"):
        validate_unit("bad.name", unit)
    with pytest.raises(InvalidUnit, match="MachineID cannot be used with Global"):
        validate_unit("good.service", unit)


# ------------------------------------------------------------------------------------------------------------
# Go's path.Match


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        pytest.param("foo.service", "foo.service", True, id="a literal matches itself"),
        pytest.param("foo.service", "foo.socket", False, id="a literal matches nothing else"),
        pytest.param("*", "anything.service", True, id="a star matches a name"),
        pytest.param("*", "", True, id="a star matches nothing"),
        pytest.param("*", "a/b", False, id="a star does not match a slash"),
        pytest.param("a*", "a/b", False, id="a trailing star does not match a slash"),
        pytest.param("*/b", "a/b", True, id="a star stops at the slash"),
        pytest.param("web@*.service", "web@1.service", True, id="a glob over instances"),
        pytest.param("web@*.service", "web@.service", True, id="a glob over instances matches the template"),
        pytest.param("*.service", "a.b.service", True, id="a star spans dots"),
        pytest.param("a*b*c", "aXbYbZc", True, id="several stars backtrack"),
        pytest.param("a*b", "aXbY", False, id="the name must be used up"),
        pytest.param("?.service", "a.service", True, id="a question mark matches one character"),
        pytest.param("?.service", "ab.service", False, id="a question mark matches only one character"),
        pytest.param("?", "/", False, id="a question mark does not match a slash"),
        pytest.param("?", "é", True, id="a question mark matches one non-ASCII character"),
        pytest.param("[abc].service", "b.service", True, id="a class"),
        pytest.param("[abc].service", "d.service", False, id="a class that does not match"),
        pytest.param("[a-c]", "b", True, id="a range"),
        pytest.param("[^a-c]", "d", True, id="a negated range"),
        pytest.param("[^a-c]", "b", False, id="a negated range that does not match"),
        pytest.param("[^a]", "/", True, id="a negated class matches a slash"),
        pytest.param("[/]", "/", True, id="a class can match a slash"),
        pytest.param("[\\]]", "]", True, id="an escaped closing bracket in a class"),
        pytest.param("[\\-]", "-", True, id="an escaped dash in a class"),
        pytest.param("[a-\\z]", "m", True, id="an escaped range end"),
        pytest.param("[*]", "*", True, id="a star in a class is literal"),
        pytest.param("\\*", "*", True, id="an escaped star is literal"),
        pytest.param("\\*", "a", False, id="an escaped star matches only a star"),
        pytest.param("\\a", "a", True, id="an escaped ordinary character"),
        pytest.param("a]", "a]", True, id="a closing bracket outside a class is literal"),
        pytest.param("[", "[", False, id="an unclosed class is malformed"),
        pytest.param("[]", "]", False, id="an empty class is malformed"),
        pytest.param("[^]", "a", False, id="an empty negated class is malformed"),
        pytest.param("[a-]", "a", False, id="a range without an end is malformed"),
        pytest.param("[-a]", "-", False, id="a range without a start is malformed"),
        pytest.param("a\\", "a", False, id="a trailing backslash is malformed"),
        pytest.param("a\\", "a\\", False, id="a trailing backslash matches not even itself"),
        pytest.param("*[", "x[", False, id="a malformed class after a star matches nothing"),
        pytest.param("", "", True, id="an empty pattern matches the empty name"),
        pytest.param("", "a", False, id="an empty pattern matches nothing else"),
    ],
)
def test_path_match(pattern: str, name: str, matches: bool) -> None:
    assert path_match(pattern, name) is matches


class _BadPattern(Exception):
    pass


def _scan_chunk(pattern: str) -> tuple[bool, str, str]:
    star = False
    while pattern.startswith("*"):
        pattern, star = pattern[1:], True
    in_range, i = False, 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            if i + 1 < len(pattern):
                i += 1
        elif char == "[":
            in_range = True
        elif char == "]":
            in_range = False
        elif char == "*" and not in_range:
            break
        i += 1
    return star, pattern[:i], pattern[i:]


def _get_esc(chunk: str) -> tuple[str, str]:
    if not chunk or chunk[0] in "-]":
        raise _BadPattern
    if chunk[0] == "\\":
        chunk = chunk[1:]
        if not chunk:
            raise _BadPattern
    char, rest = chunk[0], chunk[1:]
    if not rest:
        raise _BadPattern
    return char, rest


def _match_chunk(chunk: str, s: str) -> tuple[str, bool]:
    failed = False
    while chunk:
        if not failed and not s:
            failed = True
        head = chunk[0]
        if head == "[":
            char = ""
            if not failed:
                char, s = s[0], s[1:]
            chunk = chunk[1:]
            negated = chunk.startswith("^")
            if negated:
                chunk = chunk[1:]
            matched, ranges = False, 0
            while True:
                if chunk.startswith("]") and ranges:
                    chunk = chunk[1:]
                    break
                lo, chunk = _get_esc(chunk)
                hi = lo
                if chunk[0] == "-":
                    hi, chunk = _get_esc(chunk[1:])
                matched = matched or (char != "" and lo <= char <= hi)
                ranges += 1
            if matched == negated:
                failed = True
        elif head == "?":
            if not failed:
                failed = s[0] == "/"
                s = s[1:]
            chunk = chunk[1:]
        else:
            if head == "\\":
                chunk = chunk[1:]
                if not chunk:
                    raise _BadPattern
            if not failed:
                failed = chunk[0] != s[0]
                s = s[1:]
            chunk = chunk[1:]
    return ("", False) if failed else (s, True)


def go_path_match(pattern: str, name: str) -> bool:
    """A line-by-line port of Go's path.Match (chunks matched leftmost, no backtracking across stars), used
    as the oracle; a pattern error counts as no match, as in fleet's globMatches."""
    try:
        while pattern:
            star, chunk, pattern = _scan_chunk(pattern)
            if star and not chunk:
                return "/" not in name
            rest, ok = _match_chunk(chunk, name)
            if ok and (not rest or pattern):
                name = rest
                continue
            if star:
                found = False
                i = 0
                while i < len(name) and name[i] != "/":
                    rest, ok = _match_chunk(chunk, name[i + 1 :])
                    if ok and not (not pattern and rest):
                        name, found = rest, True
                        break
                    i += 1
                if found:
                    continue
            while pattern:
                _, chunk, pattern = _scan_chunk(pattern)
                _match_chunk(chunk, "")
            return False
        return not name
    except _BadPattern:
        return False


@settings(max_examples=1500, deadline=None, derandomize=True)
@given(
    st.text(st.sampled_from("ab/*?[]^-\\"), max_size=8),
    st.text(st.sampled_from("ab/-]^*\\"), max_size=8),
)
def test_path_match_agrees_with_go(pattern: str, name: str) -> None:
    assert path_match(pattern, name) == go_path_match(pattern, name)
