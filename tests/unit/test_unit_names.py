"""Unit names: fleet's validation messages in fleet's order, templates and instances, fleetctl's mangling
(FLEET-SPEC §1.1, §2.2–2.4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpy.errors import InvalidUnit
from fleetpy.unit import NAME_MAX, go_quote, mangle_name, name_info, validate_name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("hello.service", id="a plain service"),
        pytest.param("yo.yo.service", id="dots before the suffix"),
        pytest.param("hello:world.service", id="a colon"),
        pytest.param("yes@no\\.service", id="a backslash in an instance"),
        pytest.param("foo@.service", id="a template"),
        pytest.param("foo@bar@baz.service", id="an instance with an at sign"),
        pytest.param("a_b-c.socket", id="underscore and dash"),
        pytest.param("foo.target", id="a target"),
        pytest.param("x.swap", id="a swap unit"),
        pytest.param("foo@1.timer", id="a timer instance"),
        pytest.param("a" * (NAME_MAX - len(".service")) + ".service", id="exactly the maximum length"),
    ],
)
def test_good_names(name: str) -> None:
    validate_name(name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        pytest.param("", "unit name cannot be empty", id="empty"),
        pytest.param(
            "a" * NAME_MAX + ".service", "unit name exceeds maximum length (256)", id="longer than 256 characters"
        ),
        pytest.param(
            "é" * 125 + ".service",
            "unit name exceeds maximum length (256)",
            id="longer than 256 bytes although shorter in characters",
        ),
        pytest.param(
            "+" * NAME_MAX + ".service",
            "unit name exceeds maximum length (256)",
            id="length is checked before characters",
        ),
        pytest.param("foo", 'unit name must contain "."', id="no dot"),
        pytest.param("foo.", 'unit name cannot end in "."', id="ends in a dot"),
        pytest.param("foo.servICE", 'invalid unit type: "servICE"', id="suffix is case sensitive"),
        pytest.param("foo.service.bak", 'invalid unit type: "bak"', id="the suffix is after the last dot"),
        pytest.param('foo.ser"x', 'invalid unit type: "ser\\"x"', id="the suffix is quoted as Go quotes it"),
        pytest.param("foo@1.mount", 'invalid unit type for template: "mount"', id="an instance of a mount"),
        pytest.param("foo@.slice", 'invalid unit type for template: "slice"', id="a template of a slice"),
        pytest.param("+@x.mount", 'invalid unit type for template: "mount"', id="template type before characters"),
        pytest.param("this+that.mount", "invalid character '+' in unit name", id="a plus sign"),
        pytest.param("a b.service", "invalid character ' ' in unit name", id="a space"),
        pytest.param("a/b.service", "invalid character '/' in unit name", id="a slash"),
        pytest.param("it's.service", "invalid character '\\'' in unit name", id="a quote is escaped as in Go"),
        pytest.param("a\tb.service", "invalid character '\\t' in unit name", id="a tab is escaped as in Go"),
        pytest.param("a\x00b.service", "invalid character '\\x00' in unit name", id="a NUL is escaped as in Go"),
        pytest.param("a\u00a0b.service", "invalid character '\\u00a0' in unit name", id="a no-break space"),
        pytest.param("é.service", "invalid character 'é' in unit name", id="a printable non-ASCII letter"),
        pytest.param("@+.service", "invalid character '+' in unit name", id="characters before the leading at"),
        pytest.param("@foo.service", 'unit name cannot start in "@"', id="a leading at sign"),
        pytest.param(".service", 'unit name cannot start in "."', id="nothing before the type (fleetpy's)"),
        pytest.param("..service", 'unit name cannot start in "."', id="a hidden file name (fleetpy's)"),
    ],
)
def test_bad_names(name: str, message: str) -> None:
    with pytest.raises(InvalidUnit) as caught:
        validate_name(name)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("name", "prefix", "instance", "template", "is_template", "is_instance"),
    [
        pytest.param("foo.service", "foo", "", "", False, False, id="a plain unit is neither"),
        pytest.param("foo@.service", "foo", "", "foo@.service", True, False, id="a template"),
        pytest.param("foo@1.service", "foo", "1", "foo@.service", False, True, id="an instance"),
        pytest.param(
            "foo@bar@baz.service", "foo", "bar@baz", "foo@.service", False, True, id="the prefix ends at the first at"
        ),
        pytest.param(
            "a.b@c.d.socket", "a.b", "c.d", "a.b@.socket", False, True, id="the instance ends at the last dot"
        ),
    ],
)
def test_name_info(name: str, prefix: str, instance: str, template: str, is_template: bool, is_instance: bool) -> None:
    info = name_info(name)
    assert (info.prefix, info.instance, info.template) == (prefix, instance, template)
    assert (info.is_template, info.is_instance) == (is_template, is_instance)
    assert info.full == name
    assert info.name + info.suffix == name


def test_name_info_needs_a_dot() -> None:
    with pytest.raises(InvalidUnit, match=r'must contain "\."'):
        name_info("foo")


@pytest.mark.parametrize(
    ("argument", "mangled"),
    [
        pytest.param("foo", "foo.service", id="a bare name becomes a service"),
        pytest.param("foo.service", "foo.service", id="a service stays"),
        pytest.param("dir/bar.socket", "bar.socket", id="the directory is dropped"),
        pytest.param("/abs/dir/baz.timer", "baz.timer", id="an absolute path is reduced to its base"),
        pytest.param("foo.target", "foo.target.service", id="a target is not a suffix fleetctl knows"),
        pytest.param("foo.swap", "foo.swap.service", id="a swap is not a suffix fleetctl knows"),
        pytest.param("foo@1", "foo@1.service", id="an instance without suffix"),
        pytest.param("a.path", "a.path", id="a path unit"),
        pytest.param("a.device", "a.device", id="a device unit"),
        pytest.param("a.mount", "a.mount", id="a mount unit"),
        pytest.param("a.automount", "a.automount", id="an automount unit"),
        pytest.param("units/", "units.service", id="trailing slashes are ignored"),
        pytest.param("", "..service", id="an empty argument is Go's path.Base dot"),
        pytest.param("///", "/.service", id="only slashes is Go's path.Base slash"),
    ],
)
def test_mangle_name(argument: str, mangled: str) -> None:
    assert mangle_name(argument) == mangled


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        pytest.param("abc", '"abc"', id="plain text"),
        pytest.param('a"b', '"a\\"b"', id="a double quote"),
        pytest.param("a'b", '"a\'b"', id="a single quote is not escaped in a string"),
        pytest.param("a\\b", '"a\\\\b"', id="a backslash"),
        pytest.param("\n\r\t\x07\x08\x0b\x0c", '"\\n\\r\\t\\a\\b\\v\\f"', id="named control characters"),
        pytest.param("\x1b\x7f", '"\\x1b\\x7f"', id="other control characters"),
        pytest.param("\u200b", '"\\u200b"', id="a format character"),
        pytest.param("\U000e0001", '"\\U000e0001"', id="a character outside the basic plane"),
        pytest.param("héllo ✓", '"héllo ✓"', id="printable non-ASCII text is kept"),
    ],
)
def test_go_quote(text: str, quoted: str) -> None:
    assert go_quote(text) == quoted


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.lists(
        st.sampled_from(["a", "b", "@", ".", ":", "_", "-", "\\", "+", " ", "/", "é", "service", "mount"]), max_size=12
    )
)
def test_validation_raises_nothing_but_invalid_unit(parts: list[str]) -> None:
    name = "".join(parts)
    try:
        validate_name(name)
    except InvalidUnit:
        return
    info = name_info(name)
    assert not info.name.startswith("@")
    assert len(name.encode()) <= NAME_MAX
