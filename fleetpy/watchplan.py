"""The watched directory's decisions, pure: which units a directory's files describe, and what to change in the
cluster so that it holds them.

A pass of the watcher (``fleetpy.watchdir``) reads the directory and the cluster, then calls two functions:

* ``read_directory(files, now=...)`` gives the units the files describe (``NAME.j2`` files rendered with Jinja2,
  ``StrictUndefined``, from ``values.yaml``), the files whose units must stay as they are (invalid, or still
  being written) and each invalid file's error;
* ``watch_plan(owner, directory, snapshot)`` gives the actions that bring the cluster to the directory, and
  conflicts to report against files.

Ownership. A directory owns only the units a watched directory created: such a unit carries a marker
(``P/watched/units/<unit>``) written in the same transaction that created it and never rewritten, so the
marker's revision is the unit's creation revision, and no watched directory ever changes or destroys a unit
without a marker of its own creation. A marker outlives a unit destroyed by other means (``fleetpyctl destroy``,
any etcd client deleting the key); a unit of that name submitted again by other means is created later than
the marker, so it is not the directory's. Every watcher (an *owner*: a machine and a directory) also keeps a claim
per unit (``P/watched/claims/<unit>/<owner>``: the hash its file wants and the file's name). Claims are
permanent, so a watcher that restarts knows which units its directory held and reconciles them (a file removed
meanwhile destroys its unit); whether an owner is *live* is a key on its lease (``P/watched/owners/<owner>``),
and only live owners' claims count against the others. The rules that keep watchers from fighting:

* a unit is created only if no unit of that name exists (compare-and-swap on its creation);
* a unit is changed only if **no other live owner wants it as it is**. Two directories with the same files want
  the same hash and write nothing after the first; while a change reaches the directories one after the other,
  the unit changes once every owner that wanted the old content has stopped wanting it, and a directory that
  wants something else meanwhile reports a conflict instead of overwriting;
* a unit is destroyed when its file is removed from the last live directory that has it.

Every write compares the unit's revision with the one the plan saw, so a pass that raced with another writer
changes nothing and the next pass looks again (level-based, like the engine and the agent).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jinja2
import yaml

from fleetpy.errors import InvalidUnit
from fleetpy.model import DesiredState, UnitRecord
from fleetpy.unit import UNIT_TYPES, UnitFile, name_info, validate_unit

VALUES_FILE = "values.yaml"
TEMPLATE_SUFFIX = ".j2"
UNITS_KEY = "units"  # in values.yaml: template file → the units it renders, each with its own variables
MAX_FILE = 1024 * 1024  # bytes; the API's limit for a request, too
SETTLE = 1.0  # seconds a file must stay unchanged before it is applied (a writer may still be at work)

# Editors' and tools' temporary files: written next to the real file and renamed over it, or left behind.
_TEMP_SUFFIXES = (
    "~", ".swp", ".swo", ".swx", ".tmp", ".temp", ".part", ".partial", ".bak", ".orig", ".rej", ".new",
    ".dpkg-new", ".dpkg-old", ".dpkg-dist", ".dpkg-tmp", ".rpmnew", ".rpmsave", ".ucf-new", ".ucf-old",
)  # fmt: skip


class FileKind(enum.Enum):
    IGNORED = "ignored"
    UNIT = "unit"  # a unit file: its name is the unit's name
    TEMPLATE = "template"  # NAME.j2: rendered with values.yaml into the unit NAME, or into the units it lists
    VALUES = "values"  # values.yaml: the variables of the templates


def classify(name: str) -> FileKind:
    """What a directory entry is to the watcher, by its name alone.

    Dotfiles, editors' and package managers' temporary files (``.x.swp``, ``x~``, ``#x#``, ``x.tmp``, vim's
    ``4913``) and files that do not end in a unit type (``README.md``) are ignored, so a file written to a
    temporary name and renamed into place is seen once, complete."""
    if not name or name.startswith((".", "#")) or name.endswith(_TEMP_SUFFIXES) or name == "4913":
        return FileKind.IGNORED
    if name == VALUES_FILE:
        return FileKind.VALUES
    if name.endswith(TEMPLATE_SUFFIX):
        base = name[: -len(TEMPLATE_SUFFIX)]
        return FileKind.TEMPLATE if _unit_type(base) in UNIT_TYPES else FileKind.IGNORED
    return FileKind.UNIT if _unit_type(name) in UNIT_TYPES else FileKind.IGNORED


def _unit_type(name: str) -> str:
    return name.rpartition(".")[2] if "." in name else ""


# ------------------------------------------------------------------------------------------------------------
# The directory


@dataclass(frozen=True, slots=True)
class DirectoryFile:
    """A file's content as read, and when it was last modified (seconds since the epoch)."""

    content: bytes
    mtime: float


@dataclass(frozen=True, slots=True)
class WantedUnit:
    """A unit the directory describes: its name, the file it comes from, and the parsed unit."""

    name: str
    file: str
    unit: UnitFile

    @property
    def record(self) -> UnitRecord:
        """The record to write: launched, except a template (``foo@.service``), which cannot be."""
        desired = DesiredState.INACTIVE if name_info(self.name).is_template else DesiredState.LAUNCHED
        return UnitRecord(self.name, self.unit.hash, desired, self.unit.is_global, self.unit.xfleet)


@dataclass(frozen=True)
class DirectoryUnits:
    """What a directory describes.

    ``held``: files whose units stay in the cluster exactly as they are (invalid, or still being written);
    ``errors``: file → why it is invalid."""

    wanted: Mapping[str, WantedUnit] = field(default_factory=dict)
    held: frozenset[str] = frozenset()
    errors: Mapping[str, str] = field(default_factory=dict)


def _decode(content: bytes) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidUnit(f"not UTF-8 text ({exc})") from None


def parse_values(text: str) -> tuple[dict[str, Any], dict[str, dict[str, dict[str, Any]]]]:
    """``values.yaml``: (the variables every template sees, template file → unit name → its own variables).

    Raises ``InvalidUnit`` naming the problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidUnit(f"invalid YAML: {exc}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise InvalidUnit("expected a mapping of variable names to values at the top level")
    variables = {str(k): v for k, v in data.items() if k != UNITS_KEY}
    raw_units = data.get(UNITS_KEY) or {}
    if not isinstance(raw_units, dict):
        raise InvalidUnit(f"{UNITS_KEY!r} must map template files to the units they render")
    units: dict[str, dict[str, dict[str, Any]]] = {}
    for template, listing in raw_units.items():
        if not isinstance(listing, dict):
            raise InvalidUnit(f"{UNITS_KEY}.{template}: expected a mapping of unit names to their variables")
        units[str(template)] = {}
        for unit_name, own in listing.items():
            if own is not None and not isinstance(own, dict):
                raise InvalidUnit(f"{UNITS_KEY}.{template}.{unit_name}: expected a mapping of variables")
            units[str(template)][str(unit_name)] = {str(k): v for k, v in (own or {}).items()}
    return variables, units


def render_template(
    file: str, text: str, variables: Mapping[str, Any], listing: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, str]:
    """Render ``NAME.j2``: unit name → text. Without a listing it renders once, into the unit ``NAME``; with
    one, once per listed unit, with that unit's variables over the common ones. ``unit`` is the unit's name.

    Undefined variables are errors (``StrictUndefined``); raises ``InvalidUnit``."""
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    try:
        template = environment.from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidUnit(f"template syntax error on line {exc.lineno}: {exc.message}") from None
    targets = listing if listing is not None else {file[: -len(TEMPLATE_SUFFIX)]: {}}
    rendered = {}
    for unit_name, own in targets.items():
        try:
            rendered[unit_name] = template.render({**variables, **own, "unit": unit_name})
        except jinja2.UndefinedError as exc:
            raise InvalidUnit(f"rendering {unit_name}: {exc.message}") from None
        except jinja2.TemplateError as exc:
            raise InvalidUnit(f"rendering {unit_name}: {exc}") from None
    return rendered


def read_directory(files: Mapping[str, DirectoryFile], *, now: float, settle: float = SETTLE) -> DirectoryUnits:
    """The units that ``files`` (name → file, every entry of the directory) describe.

    A file modified less than ``settle`` seconds before ``now``, and an empty file, are held without an error:
    their writer is probably still at work. An invalid file is held with its error, and so is every file that
    describes a unit another file describes too."""
    errors: dict[str, str] = {}
    held: set[str] = set()
    sources: dict[str, list[tuple[str, str]]] = {}  # unit → [(file, text)]
    kinds = {name: classify(name) for name in files}
    variables: dict[str, Any] = {}
    listings: dict[str, dict[str, dict[str, Any]]] = {}
    values_ok = True
    values = files.get(VALUES_FILE)
    if values is not None:
        if abs(now - values.mtime) < settle:
            values_ok = False
        else:
            try:
                variables, listings = parse_values(_decode(values.content))
            except InvalidUnit as exc:
                errors[VALUES_FILE] = str(exc)
                values_ok = False
        for template in sorted(listings):
            if kinds.get(template) != FileKind.TEMPLATE:
                errors[VALUES_FILE] = f"{UNITS_KEY} lists {template}, which is not a template (NAME.j2) here"

    for name in sorted(files):
        kind = kinds[name]
        if kind not in (FileKind.UNIT, FileKind.TEMPLATE):
            continue
        entry = files[name]
        if not entry.content.strip() or abs(now - entry.mtime) < settle:
            held.add(name)
            continue
        if kind == FileKind.TEMPLATE and not values_ok:
            held.add(name)
            continue
        try:
            if len(entry.content) > MAX_FILE:
                raise InvalidUnit(f"larger than {MAX_FILE} bytes")
            text = _decode(entry.content)
            if kind == FileKind.UNIT:
                sources.setdefault(name, []).append((name, text))
            else:
                for unit_name, rendered in render_template(name, text, variables, listings.get(name)).items():
                    sources.setdefault(unit_name, []).append((name, rendered))
        except InvalidUnit as exc:
            errors[name] = str(exc)
            held.add(name)

    wanted: dict[str, WantedUnit] = {}
    parsed: dict[str, WantedUnit] = {}
    for unit_name, found in sorted(sources.items()):
        if len(found) > 1:
            names = sorted(f for f, _ in found)
            for file, _ in found:
                others = ", ".join(n for n in names if n != file) or file
                errors[file] = f"unit {unit_name} is also described by {others}"
                held.add(file)
            continue
        file, text = found[0]
        try:
            unit = UnitFile.from_text(text)
            validate_unit(unit_name, unit)
            parsed[unit_name] = WantedUnit(unit_name, file, unit)
        except InvalidUnit as exc:
            errors[file] = f"{unit_name}: {exc}" if file != unit_name else str(exc)
            held.add(file)
    for unit_name, found_unit in parsed.items():
        if found_unit.file not in held:  # a template with one bad unit holds all of its units
            wanted[unit_name] = found_unit
    return DirectoryUnits(wanted=wanted, held=frozenset(held), errors=errors)


# ------------------------------------------------------------------------------------------------------------
# The cluster, and the plan


@dataclass(frozen=True, slots=True)
class Claim:
    """An owner's claim on a unit: the hash its file wants, and the file."""

    owner: str
    hash: str
    file: str


@dataclass(frozen=True, slots=True)
class WatchError:
    """A file of a watched directory that is not applied, and why (``P/watched/errors/<owner>/<file>``)."""

    owner: str
    machine: str
    directory: str
    file: str
    message: str


@dataclass(frozen=True, slots=True)
class ClusterUnit:
    hash: str
    revision: int  # the mod revision of P/units/<name>: every write compares it
    created: int  # its create revision: which unit of that name this is (destroyed and submitted again: another)


@dataclass(frozen=True)
class WatchSnapshot:
    """The cluster as a watcher sees it, read at one revision."""

    units: Mapping[str, ClusterUnit] = field(default_factory=dict)
    markers: Mapping[str, int] = field(default_factory=dict)  # unit → the revision its marker was written at
    claims: Mapping[str, Mapping[str, Claim]] = field(default_factory=dict)  # unit → owner → claim
    live: frozenset[str] = frozenset()  # owners whose watcher runs

    def marked(self, name: str) -> bool:
        """Whether the unit ``name`` exists and a watched directory created it: its marker was written in the
        transaction that created this unit, not for an earlier unit of that name (module docstring)."""
        current = self.units.get(name)
        return current is not None and self.markers.get(name) == current.created


@dataclass(frozen=True, slots=True)
class Create:
    """Create the unit with its marker (written anew: a marker left by a destroyed unit counts no more) and our
    claim, if no unit of that name exists."""

    wanted: WantedUnit
    reason: str

    @property
    def unit(self) -> str:
        return self.wanted.name


@dataclass(frozen=True, slots=True)
class Replace:
    """Replace the unit's content (and launch it) and record our claim, if it is still at ``revision``. The
    marker stays as it was written when the unit was created."""

    wanted: WantedUnit
    revision: int
    reason: str

    @property
    def unit(self) -> str:
        return self.wanted.name


@dataclass(frozen=True, slots=True)
class PutClaim:
    """Record our claim only, if the unit is still at ``revision``."""

    unit: str
    claim: Claim
    revision: int
    reason: str


@dataclass(frozen=True, slots=True)
class Release:
    """Delete our claim; other owners keep the unit. ``forget`` when the unit is gone and no live owner
    claims it: its marker and every claim on it go too."""

    unit: str
    forget: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Destroy:
    """Destroy the unit, its marker and every claim on it, if it is still at ``revision``."""

    unit: str
    revision: int
    reason: str


WatchAction = Create | Replace | PutClaim | Release | Destroy


@dataclass(frozen=True)
class WatchPlan:
    actions: tuple[WatchAction, ...] = ()
    conflicts: Mapping[str, str] = field(default_factory=dict)  # file → why its unit was not applied


def watch_plan(owner: str, directory: DirectoryUnits, snapshot: WatchSnapshot) -> WatchPlan:
    """What ``owner`` changes so that the cluster holds what its directory describes (module docstring)."""
    actions: list[WatchAction] = []
    conflicts: dict[str, str] = {}
    mine = {unit: claims[owner] for unit, claims in snapshot.claims.items() if owner in claims}
    for name, wanted in sorted(directory.wanted.items()):
        current = snapshot.units.get(name)
        claim = mine.get(name)
        want = Claim(owner, wanted.unit.hash, wanted.file)
        if current is None:
            actions.append(Create(wanted, "its file is in the directory and the cluster has no such unit"))
        elif not snapshot.marked(name):
            conflicts[wanted.file] = (
                f"unit {name} exists in the cluster and was not created by a watched directory: "
                "it is left as it is (destroy it with fleetpyctl to let the directory manage it)"
            )
            if claim is not None:
                actions.append(Release(name, False, "the unit is not ours to manage"))
        elif current.hash == want.hash:
            if claim != want:
                actions.append(PutClaim(name, want, current.revision, "the cluster already has this content"))
        else:
            claims = _live_others(owner, name, snapshot)
            keepers = sorted(o for o, c in claims.items() if c.hash == current.hash)
            if not keepers:
                actions.append(Replace(wanted, current.revision, f"its file {wanted.file} changed"))
                continue
            conflicts[wanted.file] = (
                f"unit {name} differs from the file in the watched directory of {', '.join(keepers)}, "
                "which still wants the unit as it is; it changes once the directories agree"
            )
            if claim != want:  # tell the others what we want, so that they can let the unit change
                actions.append(PutClaim(name, want, current.revision, "its file wants other content"))
    for name, claim in sorted(mine.items()):
        if name in directory.wanted or claim.file in directory.held:
            continue  # a held file is invalid or being written: its units stay exactly as they are
        current = snapshot.units.get(name)
        others = _live_others(owner, name, snapshot)
        if current is not None and snapshot.marked(name) and not others:
            actions.append(Destroy(name, current.revision, f"its file {claim.file} is gone"))
        else:
            forget = current is None and not others
            kept = "; other watched directories keep the unit" if others else ""
            actions.append(Release(name, forget, f"its file {claim.file} is gone{kept}"))
    return WatchPlan(tuple(actions), conflicts)


def _live_others(owner: str, unit: str, snapshot: WatchSnapshot) -> dict[str, Claim]:
    return {o: c for o, c in snapshot.claims.get(unit, {}).items() if o != owner and o in snapshot.live}
