"""``POST /fleetpy/v1/units``: many units in one request, a fleetpy extension of fleet's API.

fleet's API creates one unit per request; submitting 10,000 units that way costs 10,000 round trips and three
etcd operations each. This endpoint takes ``{"units": [{"name", "options", "desiredState"}, ...]}``, validates
every unit first (one invalid unit: 400 naming it, nothing written), then writes them in as few transactions as
etcd allows. Per unit it does what ``PUT /fleet/v1/units/<name>`` does: create it (desired state as given,
``inactive`` if empty), replace it when its options differ, or set its desired state. The answer counts what
happened: ``{"created": N, "replaced": N, "updated": N, "unchanged": N}``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from fleetpy.api import schema
from fleetpy.api.app import (
    MAX_REQUEST,
    REGISTRY,
    SETTINGS,
    _check_template,
    _desired,
    _read_json,
    _record,
    _unit_from_options,
    json_response,
    remember_options,
)
from fleetpy.api.schema import BadRequest
from fleetpy.errors import InvalidUnit
from fleetpy.model import DesiredState, UnitRecord
from fleetpy.unit import UnitFile, validate_name

MAX_UNITS = 100_000


def _parse(item: Any, index: int) -> tuple[str, UnitFile | None, DesiredState | None]:
    """The name, unit file (``None`` without options) and desired state of one item; ``BadRequest`` naming it."""
    if not isinstance(item, dict):
        raise BadRequest(f"units[{index}] must be an object")
    name = item.get("name")
    if not isinstance(name, str):
        raise BadRequest(f"units[{index}].name must be a string")
    try:
        validate_name(name)
    except InvalidUnit as exc:
        raise BadRequest(f"units[{index}] ({name!r}): {exc}") from None
    try:
        desired = item.get("desiredState")
        if desired is not None and not isinstance(desired, str):
            raise BadRequest("desiredState must be a string")
        options = schema.parse_options(item.get("options"))
        return name, _unit_from_options(options) if options else None, _desired(desired or "")
    except (BadRequest, InvalidUnit) as exc:
        raise BadRequest(f"units[{index}] ({name}): {exc}") from None


def _write(
    name: str, unit: UnitFile | None, desired: DesiredState | None, found: tuple[UnitRecord, int] | None
) -> tuple[str, tuple[UnitRecord, str, int] | None]:
    """What ``PUT /fleet/v1/units/<name>`` would do with one item: the count it adds to and what to write."""
    if found is None:
        if unit is None:
            raise BadRequest("unit does not exist and options field empty")
        state = desired or DesiredState.INACTIVE
        _check_template(name, state)
        return "created", (_record(name, unit, state), unit.text, 0)
    record, revision = found
    if unit is not None and unit.hash != record.hash:
        state = desired or DesiredState.INACTIVE
        _check_template(name, state)
        return "replaced", (_record(name, unit, state), unit.text, revision)
    if desired is not None and desired != record.desired:
        _check_template(name, desired)
        updated = UnitRecord(record.name, record.hash, desired, record.is_global, record.requirements)
        return "updated", (updated, "", revision)
    return "unchanged", None


async def post_units(request: web.Request) -> web.StreamResponse:
    registry = request.app[REGISTRY]
    body = await _read_json(request, limit=MAX_REQUEST)
    raw = body.get("units")
    if not isinstance(raw, list):
        raise BadRequest("unable to decode body: units must be a list")
    if len(raw) > MAX_UNITS:
        raise BadRequest(f"a batch holds at most {MAX_UNITS} units")
    existing = await registry.unit_records()
    writes: list[tuple[UnitRecord, str, int]] = []
    counts = {"created": 0, "replaced": 0, "updated": 0, "unchanged": 0}
    seen: set[str] = set()
    parsed: list[UnitFile] = []
    for index, item in enumerate(raw):
        name, unit, desired = _parse(item, index)
        if name in seen:
            raise BadRequest(f"units[{index}]: {name} appears twice in the batch")
        seen.add(name)
        try:
            kind, write = _write(name, unit, desired, existing.get(name))
        except BadRequest as exc:
            raise BadRequest(f"units[{index}] ({name}): {exc}") from None
        counts[kind] += 1
        if write is not None:
            writes.append(write)
        if unit is not None:
            parsed.append(unit)
    await registry.write_units(writes)
    settings = request.app[SETTINGS]
    for unit in parsed:
        remember_options(settings, unit)
    return json_response(counts)
