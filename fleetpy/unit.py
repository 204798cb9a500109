"""Unit files and unit names, exactly as fleet reads them (FLEET-SPEC §2).

Pure code: no I/O. It owns

* the unit-file parser, a port of the go-systemd lexer fleet vendored, so that a file parses to the same
  options, and hence the same canonical text and hash, in fleet and in fleetpy (§2.6);
* the canonical serialisation and its SHA-1 hash;
* unit-name validation with fleet's messages (§2.2, §2.4), and templates and instances (§2.3);
* the ``[X-Fleet]`` section: fleet's multi-value splitting, the ``%n %N %p %i`` specifiers, the option
  combination rules (§2.1, §2.4), and fleetpy's metadata operators;
* Go's ``path.Match`` glob semantics, which ``Conflicts`` and ``Replaces`` use.

Messages are fleet's own wherever fleet has one, because users and scripts know them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

from fleetpy.errors import InvalidUnit

LINE_MAX = 2048
NAME_MAX = 256
UNIT_TYPES = frozenset(
    "automount busname device mount path scope service slice snapshot socket swap target timer".split()
)
TEMPLATE_UNIT_TYPES = frozenset("path service socket target timer".split())
# fleetctl appends ".service" to any argument that does not end in one of these (§1.1).
FLEETCTL_SUFFIXES = (".service", ".socket", ".timer", ".path", ".device", ".mount", ".automount")
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:_.@-\\")
_GO_NOT_SPACE = frozenset("\x1c\x1d\x1e\x1f")  # Python calls these whitespace, Go does not

XFLEET = "X-Fleet"
KNOWN_REQUIREMENTS = frozenset(
    {
        "MachineID",
        "X-ConditionMachineID",
        "X-ConditionMachineBootID",
        "MachineOf",
        "X-ConditionMachineOf",
        "Conflicts",
        "X-Conflicts",
        "MachineMetadata",
        "X-ConditionMachineMetadata",
        "Global",
        "Replaces",
    }
)
_TRUE_WORDS = frozenset({"true", "yes", "1", "on", "t"})


# --------------------------------------------------------------------------------------------------------------
# Parsing and serialisation


@dataclass(frozen=True, slots=True)
class UnitOption:
    """One ``Name=Value`` line of a unit file, with the section it belongs to."""

    section: str
    name: str
    value: str


def _is_space(char: str) -> bool:
    return char.isspace() and char not in _GO_NOT_SPACE


def _trim(text: str) -> str:
    """Go's ``strings.TrimSpace``."""
    start, end = 0, len(text)
    while start < end and _is_space(text[start]):
        start += 1
    while end > start and _is_space(text[end - 1]):
        end -= 1
    return text[start:end]


def _check_line_lengths(text: str) -> None:
    # go-systemd refuses any stretch of LINE_MAX bytes without a line break (systemd would truncate it).
    for line in re.split(r"[\r\n]", text):
        if len(line) >= LINE_MAX // 4 and len(line.encode("utf-8", "surrogatepass")) >= LINE_MAX:
            raise InvalidUnit(f"line too long (max {LINE_MAX} bytes)")


class _Lexer:
    """A faithful port of go-systemd's unit lexer: same states, same accepted input, same errors."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.options: list[UnitOption] = []

    def _read(self) -> str | None:
        if self.pos >= len(self.text):
            return None
        char = self.text[self.pos]
        self.pos += 1
        return char

    def _read_through(self, delimiter: str) -> tuple[str, bool]:
        """Read up to and including ``delimiter``; return (text, found)."""
        end = self.text.find(delimiter, self.pos)
        if end == -1:
            chunk, self.pos = self.text[self.pos :], len(self.text)
            return chunk, False
        chunk, self.pos = self.text[self.pos : end + 1], end + 1
        return chunk, True

    def _to_eol(self) -> tuple[str, bool]:
        """The rest of the line without its newline, and whether the input ended first.

        go-systemd trims ``\\r`` *before* ``\\n``, so a CRLF line keeps its ``\\r``: a value ending in
        ``\\`` + CRLF is not continued, and the next line is lexed as a new option."""
        line, found = self._read_through("\n")
        line = line.removesuffix("\r").removesuffix("\n")
        return line, not found

    def _skip_comment(self) -> bool:
        """Skip a comment line (and its continuations); False at end of input."""
        while True:
            line, eof = self._to_eol()
            # go-systemd drops one trailing space before looking for the continuation backslash.
            if not line.removesuffix(" ").endswith("\\"):
                return not eof
            if eof:
                return False

    def lex(self) -> list[UnitOption]:
        # Before the first section header everything is ignored, character by character.
        while True:
            char = self._read()
            if char is None:
                return self.options
            if char == "[":
                break
            if char in "#;" and not self._skip_comment():
                return self.options
        section = self._section_name()
        while True:
            char = self._read()
            if char is None:
                return self.options
            if _is_space(char):
                continue
            if char == "[":
                section = self._section_name()
            elif char in "#;":
                if not self._skip_comment():
                    return self.options
            else:
                self.pos -= 1
                self._option(section)

    def _section_name(self) -> str:
        name, found = self._read_through("]")
        if not found:
            raise InvalidUnit("unable to find end of section")
        section = name[:-1]
        garbage, _ = self._to_eol()
        garbage = _trim(garbage)
        if garbage:
            raise InvalidUnit(f"found garbage after section name {section}: {garbage!r}")
        return section

    def _option(self, section: str) -> None:
        start = self.pos
        while True:
            char = self._read()
            if char is None:
                raise InvalidUnit(f"unexpected end of file while parsing option name {_trim(self.text[start:])!r}")
            if char in "\r\n":
                raise InvalidUnit(
                    "unexpected newline encountered while parsing option name "
                    f"(line {self.text[start : self.pos - 1]!r} has no '=')"
                )
            if char == "=":
                break
        name = _trim(self.text[start : self.pos - 1])
        value = ""
        while True:
            line, eof = self._to_eol()
            if not _trim(line):
                break
            value += line
            if not line.endswith("\\"):
                break
            if not eof:
                value += "\n"
        value = _trim(value) + "\n" if value.endswith("\n") else _trim(value)
        self.options.append(UnitOption(section, name, value))


def parse_options(text: str) -> tuple[UnitOption, ...]:
    """Parse unit-file text into its options, in file order; raise ``InvalidUnit`` as go-systemd would."""
    _check_line_lengths(text)
    return tuple(_Lexer(text).lex())


def _by_section(options: Iterable[UnitOption]) -> dict[str, list[UnitOption]]:
    """Options grouped under their sections, sections in first-seen order (how fleet serialises them)."""
    sections: dict[str, list[UnitOption]] = {}
    for option in options:
        sections.setdefault(option.section, []).append(option)
    return sections


def serialize(options: Iterable[UnitOption]) -> str:
    """fleet's canonical text: sections in first-seen order, options grouped under them, no comments."""
    sections = _by_section(options)
    return "\n".join(
        f"[{section}]\n" + "".join(f"{opt.name}={opt.value}\n" for opt in opts) for section, opts in sections.items()
    )


def hash_text(canonical: str) -> str:
    """SHA-1 of the canonical text, 40 lowercase hex characters, as fleet computes it."""
    return hashlib.sha1(canonical.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class UnitFile:
    """A parsed unit file. Two unit files are the same exactly when their hashes are equal."""

    options: tuple[UnitOption, ...]

    @classmethod
    def from_text(cls, text: str) -> UnitFile:
        return cls(parse_options(text))

    @classmethod
    def from_options(cls, options: Iterable[UnitOption]) -> UnitFile:
        """Build a unit from API option triples, checking them the way fleet does (a round trip)."""
        unit = cls(tuple(options))
        reparsed = parse_options(unit.text)
        grouped = [option for opts in _by_section(unit.options).values() for option in opts]
        if [(o.section, o.name) for o in reparsed] != [(o.section, o.name) for o in grouped]:
            # fleet accepts such options but stores something else; say so rather than change the unit.
            raise InvalidUnit(
                "options do not survive serialisation (an option name contains '=' or a section name "
                "contains ']' or a line break)"
            )
        return unit

    @cached_property
    def text(self) -> str:
        return serialize(self.options)

    @cached_property
    def hash(self) -> str:
        return hash_text(self.text)

    @cached_property
    def contents(self) -> Mapping[str, Mapping[str, tuple[str, ...]]]:
        """section → option name → values, in file order (fleet's ``Unit.Contents``)."""
        result: dict[str, dict[str, list[str]]] = {}
        for opt in self.options:
            result.setdefault(opt.section, {}).setdefault(opt.name, []).append(opt.value)
        return {sec: {k: tuple(v) for k, v in opts.items()} for sec, opts in result.items()}

    @property
    def xfleet(self) -> tuple[tuple[str, str], ...]:
        """The raw ``[X-Fleet]`` options, in file order."""
        return tuple((o.name, o.value) for o in self.options if o.section == XFLEET)

    @property
    def description(self) -> str:
        values = self.contents.get("Unit", {}).get("Description", ())
        return values[-1] if values else ""

    @property
    def has_install_section(self) -> bool:
        return "Install" in self.contents

    @property
    def is_global(self) -> bool:
        return is_global(self.xfleet)


# --------------------------------------------------------------------------------------------------------------
# Names


@dataclass(frozen=True, slots=True)
class NameInfo:
    """The parts of a unit name: ``foo@bar.service`` has prefix ``foo``, instance ``bar``,
    template ``foo@.service`` and suffix ``.service``."""

    full: str
    name: str
    prefix: str
    instance: str
    template: str
    suffix: str

    @property
    def is_template(self) -> bool:
        return bool(self.template) and not self.instance

    @property
    def is_instance(self) -> bool:
        return bool(self.instance)


def name_info(name: str) -> NameInfo:
    """Split a unit name; the instance runs from the first ``@`` to the last ``.``."""
    dot = name.rfind(".")
    if dot == -1:
        raise InvalidUnit('unit name must contain "."')
    base, suffix = name[:dot], name[dot:]
    at = base.find("@")
    if at == -1:
        return NameInfo(name, base, base, "", "", suffix)
    return NameInfo(name, base, base[:at], base[at + 1 :], f"{base[:at]}@{suffix}", suffix)


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def _go_escape(char: str, quote: str) -> str:
    """One character as Go's ``strconv.Quote``/``QuoteRune`` writes it between ``quote`` characters."""
    if char in (quote, "\\"):
        return "\\" + char
    if char.isprintable():  # Go's IsPrint: letters, marks, numbers, punctuation, symbols and ASCII space
        return char
    if char in _GO_ESCAPES:
        return _GO_ESCAPES[char]
    code = ord(char)
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if 0xD800 <= code <= 0xDFFF:  # not a valid rune: Go writes the replacement character
        code = 0xFFFD
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def go_quote(text: str) -> str:
    """Go's ``%q`` of a string, as fleet's messages print names and values."""
    return '"' + "".join(_go_escape(c, '"') for c in text) + '"'


def _go_quote_rune(char: str) -> str:
    """Go's ``%q`` of a rune."""
    return "'" + _go_escape(char, "'") + "'"


def validate_name(name: str) -> None:
    """Raise ``InvalidUnit`` with fleet's message if ``name`` is not a valid unit name (§2.4)."""
    if not name:
        raise InvalidUnit("unit name cannot be empty")
    if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX:  # Go's len(): bytes, not characters
        raise InvalidUnit(f"unit name exceeds maximum length ({NAME_MAX})")
    dot = name.rfind(".")
    if dot == -1:
        raise InvalidUnit('unit name must contain "."')
    if dot == len(name) - 1:
        raise InvalidUnit('unit name cannot end in "."')
    suffix = name[dot + 1 :]
    if suffix not in UNIT_TYPES:
        raise InvalidUnit(f"invalid unit type: {go_quote(suffix)}")
    if "@" in name and suffix not in TEMPLATE_UNIT_TYPES:
        raise InvalidUnit(f"invalid unit type for template: {go_quote(suffix)}")
    for char in name[:dot]:
        if char not in _NAME_CHARS:
            raise InvalidUnit(f"invalid character {_go_quote_rune(char)} in unit name")
    if name.startswith("@"):
        raise InvalidUnit('unit name cannot start in "@"')
    if name.startswith("."):
        # fleetpy's: fleet took ".service" and "..service", which systemd refuses and which would be hidden files
        raise InvalidUnit('unit name cannot start in "."')


def mangle_name(argument: str) -> str:
    """fleetctl's name mangling: the base name, with ``.service`` appended unless it has a known suffix."""
    trimmed = argument.rstrip("/")
    base = "." if not argument else "/" if not trimmed else trimmed.rsplit("/", 1)[-1]  # Go's path.Base
    if not base.endswith(FLEETCTL_SUFFIXES):
        base += ".service"
    return base


# --------------------------------------------------------------------------------------------------------------
# Go's path.Match


class _BadPattern(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Class:
    negated: bool
    ranges: tuple[tuple[str, str], ...]

    def regex(self) -> str:
        # Go compares runes: a range whose end sorts before its start matches nothing (Python would refuse it).
        ranges = [(lo, hi) for lo, hi in self.ranges if lo <= hi]
        if not ranges:
            return "(?s:.)" if self.negated else "(?!)"
        body = "".join(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}" for lo, hi in ranges)
        return f"[{'^' if self.negated else ''}{body}]"


_STAR, _ANY = object(), object()
_Token = object | str | _Class


def _compile_glob(pattern: str) -> tuple[_Token, ...]:
    tokens: list[_Token] = []
    i, n = 0, len(pattern)

    def escaped(j: int) -> tuple[str, int]:
        if j >= n or pattern[j] in "-]":
            raise _BadPattern
        if pattern[j] == "\\":
            j += 1
            if j >= n:
                raise _BadPattern
        return pattern[j], j + 1

    while i < n:
        char = pattern[i]
        if char == "*":
            tokens.append(_STAR)
            i += 1
        elif char == "?":
            tokens.append(_ANY)
            i += 1
        elif char == "\\":
            if i + 1 >= n:
                raise _BadPattern
            tokens.append(pattern[i + 1])
            i += 2
        elif char == "[":
            i += 1
            negated = i < n and pattern[i] == "^"
            if negated:
                i += 1
            ranges: list[tuple[str, str]] = []
            while True:
                if i < n and pattern[i] == "]" and ranges:
                    i += 1
                    break
                lo, i = escaped(i)
                hi = lo
                if i >= n:
                    raise _BadPattern
                if pattern[i] == "-":
                    hi, i = escaped(i + 1)
                ranges.append((lo, hi))
            tokens.append(_Class(negated, tuple(ranges)))
        else:
            tokens.append(char)
            i += 1
    return tuple(tokens)


@lru_cache(maxsize=4096)
def _glob_regex(pattern: str) -> re.Pattern[str] | None:
    """The pattern as a compiled regular expression; ``None`` when Go would call it malformed."""
    try:
        tokens = _compile_glob(pattern)
    except _BadPattern:
        return None
    parts = []
    for token in tokens:
        if token is _STAR:
            parts.append("[^/]*")
        elif token is _ANY:
            parts.append("[^/]")
        elif isinstance(token, _Class):
            parts.append(token.regex())
        else:
            parts.append(re.escape(str(token)))
    return re.compile("".join(parts), re.DOTALL)


def path_match(pattern: str, name: str) -> bool:
    """Go's ``path.Match``: ``*`` and ``?`` never match ``/``; a malformed pattern matches nothing.

    Go matches chunk by chunk without backtracking across stars; because a star cannot cross ``/`` that finds
    the same matches as a full backtracking match, which is what the compiled expression does (the unit tests
    compare the two on generated patterns).
    """
    regex = _glob_regex(pattern)
    return regex is not None and regex.fullmatch(name) is not None


def policy_refusal(name: str, allow: Sequence[str], deny: Sequence[str]) -> str:
    """Why a machine whose configuration has these ``unit_allow``/``unit_deny`` globs (``Conflicts``'s syntax)
    does not run the unit ``name``; ``""`` when it may. A deny pattern wins over an allow pattern; an empty
    allow list allows every name."""
    for pattern in deny:
        if path_match(pattern, name):
            return f"unit name matches unit_deny pattern {pattern!r}"
    if allow and not any(path_match(pattern, name) for pattern in allow):
        return f"unit name matches no unit_allow pattern ({', '.join(allow)})"
    return ""


# --------------------------------------------------------------------------------------------------------------
# [X-Fleet]


def split_multivalue(value: str) -> list[str]:
    """fleet's multi-value splitting: a value that starts and ends with ``"`` is split on spaces outside
    quotes and loses every ``"``; any other value is a single item."""
    if not (value.startswith('"') and value.endswith('"')):
        return [value]
    values: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
            continue
        if char == " " and not quoted:
            values.append("".join(current))
            current = []
            continue
        current.append(char)
    values.append("".join(current))
    return values


def expand_specifiers(value: str, info: NameInfo) -> str:
    """Replace ``%n %N %p %i`` in that order, by plain string replacement, as fleet does."""
    return (
        value.replace("%n", info.full).replace("%N", info.name).replace("%p", info.prefix).replace("%i", info.instance)
    )


METADATA_OPERATORS = ("!=", ">=", "<=", "=~", ">", "<", "=")


@dataclass(frozen=True, slots=True)
class MetadataRule:
    """One ``MachineMetadata`` condition: ``key op value``.

    ``=`` is fleet's: values of one key are OR-ed, different keys AND-ed. fleetpy adds ``!=``, numeric
    ``> >= < <=`` and ``=~`` (full regular-expression match), each of which must hold on its own.
    """

    key: str
    op: str
    value: str


def parse_metadata_rule(pair: str) -> MetadataRule | None:
    """Parse one ``MachineMetadata`` item; ``None`` for an item fleet would silently ignore."""
    match = re.match(r"([^=<>!]+?)(!=|>=|<=|=~|>|<|=)(.*)\Z", pair, re.DOTALL)
    if match is None:
        return None
    key, op, value = match.groups()
    if not key or not value:
        return None
    if op == "=" and "=" in value:
        return None  # fleet: a pair must split on "=" into exactly two parts
    return MetadataRule(key, op, value)


@dataclass(frozen=True, slots=True)
class Requirements:
    """The interpreted ``[X-Fleet]`` section of one unit, specifiers expanded."""

    machine_id: str | None = None
    peers: tuple[str, ...] = ()
    metadata: tuple[MetadataRule, ...] = ()
    conflicts: tuple[str, ...] = ()
    replaces: tuple[str, ...] = ()
    is_global: bool = False
    unknown: tuple[str, ...] = field(default=())


def _values(xfleet: Sequence[tuple[str, str]], *keys: str, expand: Callable[[str], str] = str) -> list[str]:
    """Every value of ``keys`` (in the order of ``keys``, then file order), multi-value split, then passed
    through ``expand`` (fleet expands specifiers before it interprets any value)."""
    result: list[str] = []
    for key in keys:
        for name, value in xfleet:
            if name == key:
                result.extend(expand(v) for v in split_multivalue(value))
    return result


def _truthy(values: Sequence[str]) -> bool:
    return bool(values) and values[-1].lower() in _TRUE_WORDS


def is_global(xfleet: Sequence[tuple[str, str]]) -> bool:
    """fleet's ``Global``: the last value, after multi-value splitting, is one of true/yes/1/on/t."""
    return _truthy(_values(xfleet, "Global"))


def _interpret(xfleet: Sequence[tuple[str, str]], expand: Callable[[str], str] = str) -> Requirements:
    machine_id: str | None = None
    for key in ("MachineID", "X-ConditionMachineID", "X-ConditionMachineBootID"):
        values = _values(xfleet, key, expand=expand)
        if values:
            machine_id = values[0]
            break
    conflicts = [p for v in _values(xfleet, "X-Conflicts", "Conflicts", expand=expand) for p in v.split()]
    rules = [
        parse_metadata_rule(v) for v in _values(xfleet, "X-ConditionMachineMetadata", "MachineMetadata", expand=expand)
    ]
    return Requirements(
        machine_id=machine_id,
        peers=tuple(_values(xfleet, "X-ConditionMachineOf", "MachineOf", expand=expand)),
        metadata=tuple(r for r in rules if r is not None),
        conflicts=tuple(conflicts),
        replaces=tuple(_values(xfleet, "Replaces", expand=expand)),
        is_global=_truthy(_values(xfleet, "Global", expand=expand)),
        unknown=tuple(sorted({name for name, _ in xfleet if name not in KNOWN_REQUIREMENTS})),
    )


def requirements(xfleet: Sequence[tuple[str, str]], unit_name: str) -> Requirements:
    """Interpret ``[X-Fleet]`` for the unit ``unit_name``, expanding specifiers in every value first.

    As in fleet, a metadata pair is split only after expansion (``hostname=%i`` in a unit that is not an
    instance is ``hostname=``, which fleet ignores), and a name that is not a unit name expands nothing.
    """
    try:
        info = name_info(unit_name)
    except InvalidUnit:
        return _interpret(xfleet)
    return _interpret(xfleet, lambda value: expand_specifiers(value, info))


def validate_requirements(xfleet: Sequence[tuple[str, str]]) -> None:
    """fleet's option-combination rules (§2.4) on the unexpanded values; raise ``InvalidUnit``."""
    raw = _interpret(xfleet)
    for peer in sorted(set(raw.peers)):
        for conflict in sorted(set(raw.conflicts)):
            if path_match(conflict, peer):
                raise InvalidUnit(
                    f"unresolvable requirements: peer {go_quote(peer)} matches conflict {go_quote(conflict)}"
                )
        for replace in sorted(set(raw.replaces)):
            if path_match(replace, peer):
                raise InvalidUnit(
                    f"unresolvable requirements: peer {go_quote(peer)} matches replace {go_quote(replace)}"
                )
    has_target = raw.machine_id is not None
    checks = (
        (has_target and bool(raw.peers), "MachineID cannot be used with Peers"),
        (has_target and bool(raw.conflicts), "MachineID cannot be used with Conflicts"),
        (has_target and raw.is_global, "MachineID cannot be used with Global"),
        (has_target and bool(raw.replaces), "MachineID cannot be used with Replaces"),
        (raw.is_global and bool(raw.peers), "Global cannot be used with Peers"),
        (raw.is_global and bool(raw.replaces), "Global cannot be used with Replaces"),
        (bool(raw.conflicts) and bool(raw.replaces), "Conflicts cannot be used with Replaces"),
    )
    for failed, message in checks:
        if failed:
            raise InvalidUnit(message)
    for rule in raw.metadata:
        if rule.op == "=~":
            try:
                re.compile(rule.value)
            except re.error as exc:
                raise InvalidUnit(f"invalid regular expression in MachineMetadata {rule.value!r}: {exc}") from None


def validate_unit(name: str, unit: UnitFile) -> None:
    """Everything fleet checks before it accepts a unit: its name, then its options."""
    validate_name(name)
    validate_requirements(unit.xfleet)


def unknown_requirement_warnings(name: str, unit: UnitFile) -> list[str]:
    """fleetctl's warnings for ``[X-Fleet]`` keys it does not know."""
    return [
        f"Unit {name}: unrecognized requirement in [X-Fleet] section: {go_quote(key)}"
        for key in _interpret(unit.xfleet).unknown
    ]
