"""``POST /fleetpy/v1/plan``: where units would run, and why every other machine was not chosen. Writes nothing.

fleetpy's own endpoint (fleet has none like it), under its own prefix so that fleet's ``/fleet/v1`` stays
fleet's. The request names units, each with its options (a unit file not submitted yet, or a new version of
one) or without (a unit already in the cluster). The answer is the engine's own plan (``plan.preview``) run
on the cluster as etcd holds it now, as if those units were started: for each unit the machines it would run
on, the reason it would run nowhere, and every machine's verdict; and every write the plan would make, also
to other units (a ``Replaces`` moves the unit it replaces).

Request::

    {"units": [{"name": "web.service", "options": [{"section": "X-Fleet", "name": "Conflicts", "value": "..."}]},
               {"name": "db.service"}]}

Answer (200)::

    {"units": [{"name": "web.service", "global": false, "machines": ["<id>"], "kept": false, "reason": "",
                "verdicts": [{"machineID": "<id>", "load": 1},
                             {"machineID": "<id2>", "load": 0, "rule": "Conflicts", "message": "found ..."}]}],
     "actions": [{"type": "Schedule", "unit": "web.service", "machineID": "<id>", "reason": "..."}]}
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from fleetpy.api import schema
from fleetpy.api.app import REGISTRY, HttpError, _read_json, _unit_from_options, json_response
from fleetpy.api.schema import BadRequest
from fleetpy.errors import UnitNotFound
from fleetpy.model import DesiredState, Machine, MachineID, ScheduleEntry, UnitRecord, UnitView
from fleetpy.plan import ClusterSnapshot, Preview, preview
from fleetpy.unit import validate_name

PATH = f"{schema.FLEETPY_PREFIX}/plan"
MAX_UNITS = 1000


def snapshot_of(machines: list[Machine], views: list[UnitView]) -> ClusterSnapshot:
    """The engine's view of the cluster, built from what the API reads."""
    schedule: dict[MachineID, dict[str, ScheduleEntry]] = {}
    reported: dict[str, frozenset[MachineID]] = {}
    for view in views:
        for machine, entry in view.placements.items():
            schedule.setdefault(machine, {})[view.record.name] = entry
        if view.states:
            reported[view.record.name] = frozenset(view.states)
    return ClusterSnapshot(
        units={v.record.name: v.record for v in views},
        machines={m.id: m for m in machines},
        schedule=schedule,
        reported=reported,
    )


def preview_json(result: Preview) -> dict[str, Any]:
    units = []
    for unit in result.units:
        verdicts = []
        for verdict in unit.verdicts:
            item: dict[str, Any] = {"machineID": verdict.machine, "load": verdict.load}
            if verdict.rejection is not None:
                item["rule"] = verdict.rejection.rule.value
                item["message"] = verdict.rejection.message
            verdicts.append(item)
        units.append(
            {
                "name": unit.unit,
                "global": unit.is_global,
                "machines": list(unit.machines),
                "kept": unit.kept,
                "reason": unit.reason,
                "verdicts": verdicts,
            }
        )
    actions = [
        {"type": type(a).__name__, "unit": a.entry.unit, "machineID": a.entry.machine, "reason": a.reason}
        for a in result.actions
    ]
    return {"units": units, "actions": actions}


async def plan_units(request: web.Request) -> web.StreamResponse:
    registry = request.app[REGISTRY]
    body = await _read_json(request)
    requested = body.get("units")
    if not isinstance(requested, list) or not requested:
        raise BadRequest("units must be a non-empty list of {name, options}")
    if len(requested) > MAX_UNITS:
        raise BadRequest(f"at most {MAX_UNITS} units per plan")
    machines = await registry.list_machines()
    views = await registry.list_units()
    stored = {v.record.name: v.record for v in views}
    records: dict[str, UnitRecord] = {}
    for item in requested:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest("each unit must be an object with a name")
        name = item["name"]
        validate_name(name)
        options = schema.parse_options(item.get("options"))
        if options:
            unit = _unit_from_options(options)
            record = UnitRecord(name, unit.hash, DesiredState.LAUNCHED, unit.is_global, unit.xfleet)
        elif name in stored:
            old = stored[name]
            record = UnitRecord(name, old.hash, DesiredState.LAUNCHED, old.is_global, old.requirements)
        else:
            raise UnitNotFound(f"unit {name} does not exist and no options were given")
        records[name] = record
    result = preview(snapshot_of(machines, views), list(records.values()))
    return json_response(preview_json(result))


async def only_post(_request: web.Request) -> web.StreamResponse:
    raise HttpError(405, "only POST supported against this resource")


def add_routes(app: web.Application) -> None:
    app.router.add_route("POST", PATH, plan_units)
    app.router.add_route("*", PATH, only_post)
