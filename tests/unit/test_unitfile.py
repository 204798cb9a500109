"""Unit files: go-systemd's lexer, fleet's canonical form and its hash (FLEET-SPEC §2.4, §2.6)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fleetpy.errors import InvalidUnit
from fleetpy.unit import UnitFile, UnitOption, hash_text, parse_options, serialize

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

HELLO = (
    "[Unit]\nDescription=Hello World\n\n[Service]\n"
    'ExecStart=/bin/bash -c "while true; do echo \\"Hello, world\\"; sleep 1; done"\n'
)


def opts(*triples: tuple[str, str, str]) -> tuple[UnitOption, ...]:
    return tuple(UnitOption(*t) for t in triples)


# ------------------------------------------------------------------------------------------------------------
# Hashes fleet was seen to compute


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "[Service]\nExecStart=/bin/sleep 100\n",
            "1c6fb6f3684bafb0c173d8b8b957ceff031180c1",
            id="a one-line service hashes as in fleet",
        ),
        pytest.param(
            HELLO, "e55c0aeb44ba0b68004ceb8a200e685194448b45", id="the README hello.service hashes as e55c0ae"
        ),
        pytest.param(
            "[Unit]\nDescription=some description\n",
            "a0f275d46bc6ee0eca06be7c339913c07d99c0c7",
            id="a description-only unit hashes as in fleet",
        ),
        pytest.param("", "da39a3ee5e6b4b0d3255bfef95601890afd80709", id="an empty unit hashes as empty input"),
        pytest.param(
            "# a comment\n; another\n[Service]\n  ExecStart = /bin/sleep 100  \n\n\n",
            "1c6fb6f3684bafb0c173d8b8b957ceff031180c1",
            id="comments blank lines and spacing do not change the hash",
        ),
    ],
)
def test_hash_matches_fleet(text: str, expected: str) -> None:
    unit = UnitFile.from_text(text)
    assert unit.hash == expected
    assert len(unit.hash) == 40
    assert unit.hash == hash_text(unit.text)


def test_readme_hello_short_hash_is_the_one_the_readme_shows() -> None:
    assert UnitFile.from_text(HELLO).hash[:7] == "e55c0ae"


# ------------------------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", (), id="empty text has no options"),
        pytest.param("Foo=bar\nBaz=qux\n", (), id="options before the first section are ignored"),
        pytest.param(
            "garbage [Unit]\nDescription=x\n",
            (("Unit", "Description", "x"),),
            id="text before the first section is ignored up to the bracket",
        ),
        pytest.param(
            "# [Unit]\n[Service]\nA=1\n",
            (("Service", "A", "1"),),
            id="a bracket inside a comment before any section is not a section",
        ),
        pytest.param(
            "#c \\\n[Unit]\nA=1\n[Service]\nB=2\n",
            (("Service", "B", "2"),),
            id="a comment ending in a backslash swallows the next line",
        ),
        pytest.param(
            "[Service]\n#c \\ \nA=1\nB=2\n",
            (("Service", "B", "2"),),
            id="a comment continues past one trailing space after its backslash",
        ),
        pytest.param(
            "[Service]\n#c \\  \nA=1\n",
            (("Service", "A", "1"),),
            id="a comment does not continue past two trailing spaces",
        ),
        pytest.param(
            "[Service]\n; semicolon comment\n   # indented comment\nA=1\n",
            (("Service", "A", "1"),),
            id="semicolon and indented comments are skipped",
        ),
        pytest.param(
            "[Service]\nExecStart = /bin/true  \n",
            (("Service", "ExecStart", "/bin/true"),),
            id="spaces around the equals sign and at the end are trimmed",
        ),
        pytest.param(
            "[Service]\nExecStart=/bin/echo a=b\n",
            (("Service", "ExecStart", "/bin/echo a=b"),),
            id="the option name ends at the first equals sign",
        ),
        pytest.param(
            "[Service]\n<<<<<<<<<<<=bar\n",
            (("Service", "<<<<<<<<<<<", "bar"),),
            id="any line with an equals sign is an option",
        ),
        pytest.param("[Service]\nA=\n", (("Service", "A", ""),), id="an empty value is kept"),
        pytest.param(
            "[Service]\nExecStart=/bin/echo \\\n  hello\n",
            (("Service", "ExecStart", "/bin/echo \\\n  hello"),),
            id="a continuation keeps the backslash and the newline",
        ),
        pytest.param(
            "[Service]\nA=one \\\n# not a comment \\\nthree\n",
            (("Service", "A", "one \\\n# not a comment \\\nthree"),),
            id="a comment inside a continuation is part of the value",
        ),
        pytest.param(
            "[Service]\nA=one \\\n\nB=2\n",
            (("Service", "A", "one \\\n"), ("Service", "B", "2")),
            id="a continuation ended by a blank line keeps its newline",
        ),
        pytest.param(
            "[Service]\nA=one \\",
            (("Service", "A", "one \\"),),
            id="a backslash at the end of the file is kept without a newline",
        ),
        pytest.param(
            "[Service]\r\nA=1\r\nB=2\r\n",
            (("Service", "A", "1"), ("Service", "B", "2")),
            id="CRLF line endings parse like LF",
        ),
        pytest.param(
            "[Service]\nA=x\\\r\nB=2\n",
            (("Service", "A", "x\\"), ("Service", "B", "2")),
            id="a backslash before CRLF does not continue the value as in go-systemd",
        ),
        pytest.param(
            "[Unit]\nA=1\n[Service]\nB=2\n[Unit]\nC=3\n",
            (("Unit", "A", "1"), ("Service", "B", "2"), ("Unit", "C", "3")),
            id="repeated sections parse in file order",
        ),
        pytest.param(
            "[Service]\nexecstart=a\nExecStart=b\n",
            (("Service", "execstart", "a"), ("Service", "ExecStart", "b")),
            id="option names are case sensitive",
        ),
        pytest.param(
            "[Ser\nvice]\nA=1\n",
            (("Ser\nvice", "A", "1"),),
            id="a section name runs to the closing bracket even across lines",
        ),
        pytest.param(
            "[Service]   \nA=1",
            (("Service", "A", "1"),),
            id="spaces after the section header are not garbage",
        ),
        pytest.param("[]\nA=1\n", (("", "A", "1"),), id="an empty section name is a section"),
    ],
)
def test_parse(text: str, expected: tuple[tuple[str, str, str], ...]) -> None:
    assert parse_options(text) == opts(*expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("[Service", "unable to find end of section", id="an unclosed section header is an error"),
        pytest.param(
            "[Service]\nA=1\n[Unit\n", "unable to find end of section", id="an unclosed later section is an error"
        ),
        pytest.param(
            "[Service] trailing\nA=1\n",
            "found garbage after section name Service: 'trailing'",
            id="text after a section header is garbage",
        ),
        pytest.param(
            "[Service]\nnonsense upon stilts\n",
            "unexpected newline encountered while parsing option name",
            id="a line without an equals sign is an error",
        ),
        pytest.param(
            "[Service]\nA=1\n<<<<<<<\nB=2\n",
            "unexpected newline encountered while parsing option name",
            id="a merge conflict marker is an error",
        ),
        pytest.param(
            "[Service]\nname\r=value\n",
            "unexpected newline encountered while parsing option name",
            id="a carriage return in an option name is a newline",
        ),
        pytest.param(
            "[Service]\nA=x\\\r\nbroken\r\n",
            "unexpected newline encountered while parsing option name",
            id="the line after a backslash and CRLF must be an option of its own",
        ),
        pytest.param(
            "[Service]\nA=1\nno-equals-at-eof",
            "unexpected end of file while parsing option name",
            id="an option name cut off by the end of the file is an error",
        ),
    ],
)
def test_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidUnit) as caught:
        parse_options(text)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("length", "too_long"),
    [
        pytest.param(2047, False, id="a 2047-byte line is accepted"),
        pytest.param(2048, True, id="a 2048-byte line is too long"),
        pytest.param(5000, True, id="a 5000-byte line is too long"),
    ],
)
def test_line_length_limit(length: int, too_long: bool) -> None:
    line = "ExecStart=/bin/echo " + "x" * (length - len("ExecStart=/bin/echo "))
    assert len(line) == length
    text = f"[Service]\n{line}\n"
    if too_long:
        with pytest.raises(InvalidUnit, match=r"^line too long \(max 2048 bytes\)$"):
            parse_options(text)
    else:
        assert parse_options(text)[0].value.endswith("x")


def test_line_length_counts_bytes_not_characters() -> None:
    # 1024 two-byte characters make a 2048-byte value on a line that is longer still.
    with pytest.raises(InvalidUnit, match="line too long"):
        parse_options("[Service]\nA=" + "é" * 1024 + "\n")
    assert parse_options("[Service]\nA=" + "é" * 1000 + "\n")


def test_line_length_limit_applies_to_options_from_the_api() -> None:
    with pytest.raises(InvalidUnit, match="line too long"):
        UnitFile.from_options(opts(("Service", "ExecStart", "x" * 2100)))
    assert UnitFile.from_options(opts(("Service", "ExecStart", "x" * 2000))).options


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(opts(("Service", "A=B", "c")), id="an option name with an equals sign"),
        pytest.param(opts(("Ser]vice", "A", "c")), id="a section name with a closing bracket"),
        pytest.param(opts(("Service", "A", "1"), ("Service", "#B", "2")), id="an option name that is a comment"),
    ],
)
def test_options_that_do_not_survive_serialisation_are_refused(options: tuple[UnitOption, ...]) -> None:
    with pytest.raises(InvalidUnit):
        UnitFile.from_options(options)


def test_options_whose_sections_interleave_are_accepted_and_grouped_as_fleet_serialises_them() -> None:
    # found by the parser fuzz test: a section seen again later is merged into its first appearance
    unit = UnitFile.from_options(opts(("Unit", "A", "1"), ("Service", "B", "2"), ("Unit", "C", "3")))
    assert unit.text == "[Unit]\nA=1\nC=3\n\n[Service]\nB=2\n"
    assert UnitFile.from_text("[Unit]\nA=1\n[Service]\nB=2\n[Unit]\nC=3\n").hash == unit.hash


# ------------------------------------------------------------------------------------------------------------
# Canonical form


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        pytest.param("", "", id="no options serialise to nothing"),
        pytest.param("[Service]\nA=1\n", "[Service]\nA=1\n", id="one section ends with one newline"),
        pytest.param(
            "[Unit]\nA=1\n[Service]\nB=2\n[Unit]\nC=3\n",
            "[Unit]\nA=1\nC=3\n\n[Service]\nB=2\n",
            id="repeated sections are merged where they were first seen",
        ),
        pytest.param(
            "# comment\n\n[Unit]\n\n\nDescription = x \n\n[Install]\nWantedBy=multi-user.target\n\n\n",
            "[Unit]\nDescription=x\n\n[Install]\nWantedBy=multi-user.target\n",
            id="comments blank lines and spacing disappear and sections get one blank line",
        ),
        pytest.param("[Empty]\n[Service]\nA=1\n", "[Service]\nA=1\n", id="a section without options disappears"),
    ],
)
def test_canonical_form(text: str, canonical: str) -> None:
    assert UnitFile.from_text(text).text == canonical


def test_options_keep_their_order_within_a_section() -> None:
    unit = UnitFile.from_text("[S]\nB=2\nA=1\nB=3\n")
    assert unit.text == "[S]\nB=2\nA=1\nB=3\n"
    assert unit.contents == {"S": {"B": ("2", "3"), "A": ("1",)}}


def test_unit_file_accessors() -> None:
    unit = UnitFile.from_text("[Unit]\nDescription=first\n[X-Fleet]\nGlobal=true\nFoo=bar\n[Install]\nX=y\n")
    assert unit.description == "first"
    assert unit.has_install_section
    assert unit.is_global
    assert unit.xfleet == (("Global", "true"), ("Foo", "bar"))
    assert not UnitFile.from_text("[Service]\nA=1\n").has_install_section
    assert UnitFile.from_text("[Service]\nA=1\n").description == ""


def test_units_are_the_same_exactly_when_their_hashes_are() -> None:
    a = UnitFile.from_text("[Service]\nExecStart=/bin/true\n")
    b = UnitFile.from_text("# different text\n[Service]\n ExecStart = /bin/true\n")
    c = UnitFile.from_text("[Service]\nExecStart=/bin/false\n")
    assert a.hash == b.hash
    assert a.hash != c.hash


# ------------------------------------------------------------------------------------------------------------
# Properties

# Characters that make the lexer interesting: structure, comments, continuation, spacing, line ends.
LEXER_CHARS = st.sampled_from(list("[]=#;\\ \t\r\nab=\x0b\x1c\u00a0é"))
section_names = st.text(st.characters(blacklist_characters="]\r\n", blacklist_categories=["Cs"]), max_size=8)
option_names = st.text(st.characters(blacklist_characters="=\r\n", blacklist_categories=["Cs"]), min_size=1, max_size=8)
option_values = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)
option_lists = st.lists(
    st.builds(
        UnitOption,
        section=st.sampled_from(["Unit", "Service", "X-Fleet"]) | section_names,
        name=option_names,
        value=option_values,
    ),
    max_size=6,
)


@PROPERTY
@given(st.text(LEXER_CHARS, max_size=60) | st.text(max_size=60))
def test_parsing_raises_nothing_but_invalid_unit(text: str) -> None:
    try:
        parse_options(text)
    except InvalidUnit:
        pass


@PROPERTY
@given(option_lists)
def test_canonical_text_is_a_fixed_point(options: list[UnitOption]) -> None:
    try:
        once = serialize(parse_options(serialize(options)))
    except InvalidUnit:
        assume(False)
        return
    assert serialize(parse_options(once)) == once


@PROPERTY
@given(
    st.lists(
        st.builds(
            UnitOption,
            section=st.text(st.sampled_from("AZaz09-_ ."), min_size=1, max_size=6),
            name=st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,6}", fullmatch=True),
            value=st.from_regex(
                r"([^\s\\\x1c-\x1f\x85\xa0]([^\r\n\x1c-\x1f\x85\xa0]{0,8}[^\s\\\x1c-\x1f\x85\xa0])?)?", fullmatch=True
            ),
        ),
        max_size=6,
    )
)
def test_clean_options_round_trip_exactly(options: list[UnitOption]) -> None:
    text = serialize(options)
    reparsed = parse_options(text)
    assert serialize(reparsed) == text
    assert sorted(reparsed, key=lambda o: o.section) == sorted(options, key=lambda o: o.section)


@PROPERTY
@given(st.text(LEXER_CHARS, max_size=60))
def test_hash_is_a_function_of_the_canonical_text(text: str) -> None:
    try:
        unit = UnitFile.from_text(text)
    except InvalidUnit:
        assume(False)
        return
    assert unit.hash == hash_text(unit.text)
    assert UnitFile(parse_options(unit.text)).hash == unit.hash
