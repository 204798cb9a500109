"""``GET /fleet/v1/discovery``: the Google API discovery document of fleet's API v1 (FLEET-SPEC §4.3).

Generated clients (fleet's Go client was one) read it to learn the resources and methods. Its content follows
fleet's: id ``fleet:v1``, ``rootUrl`` ``$ENDPOINT/``, ``servicePath`` ``fleet/v1/``, the Machine, Unit and
UnitState schemas and their pages, and the methods Machines.List, Units.List/Get/Delete/Set,
UnitState.List/Get. Any other method on the resource is a 400, as in fleet.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

STATES = ["inactive", "loaded", "launched"]


def _string(**extra: Any) -> dict[str, Any]:
    return {"type": "string", **extra}


def _page(item: str, key: str) -> dict[str, Any]:
    return {
        "id": f"{item}Page",
        "type": "object",
        "properties": {key: {"type": "array", "items": {"$ref": item}}, "nextPageToken": _string()},
    }


def _method(resource: str, verb: str, http: str, path: str, description: str, **extra: Any) -> dict[str, Any]:
    method: dict[str, Any] = {
        "id": f"fleet.{resource}.{verb}",
        "description": description,
        "httpMethod": http,
        "path": path,
    }
    method.update(extra)
    return method


_PAGE_TOKEN = {"nextPageToken": _string(location="query")}
_UNIT_NAME = {"unitName": _string(location="path", required=True)}


def document() -> dict[str, Any]:
    return {
        "kind": "discovery#restDescription",
        "discoveryVersion": "v1",
        "id": "fleet:v1",
        "name": "schema",
        "version": "v1",
        "title": "fleet API",
        "description": "",
        "documentationLink": "https://github.com/coreos/fleet",
        "protocol": "rest",
        "icons": {"x16": "", "x32": ""},
        "labels": [],
        "baseUrl": "$ENDPOINT/fleet/v1/",
        "basePath": "/fleet/v1/",
        "rootUrl": "$ENDPOINT/",
        "servicePath": "fleet/v1/",
        "batchPath": "batch",
        "parameters": {},
        "auth": {},
        "schemas": {
            "Machine": {
                "id": "Machine",
                "type": "object",
                "properties": {
                    "id": _string(),
                    "primaryIP": _string(),
                    "metadata": {"type": "object", "properties": {}, "additionalProperties": _string()},
                },
            },
            "MachinePage": _page("Machine", "machines"),
            "UnitOption": {
                "id": "UnitOption",
                "type": "object",
                "properties": {"section": _string(), "name": _string(), "value": _string()},
            },
            "Unit": {
                "id": "Unit",
                "type": "object",
                "properties": {
                    "name": _string(),
                    "options": {"type": "array", "items": {"$ref": "UnitOption"}},
                    "desiredState": _string(enum=STATES),
                    "currentState": _string(enum=STATES),
                    "machineID": _string(required=True),
                },
            },
            "UnitPage": _page("Unit", "units"),
            "UnitState": {
                "id": "UnitState",
                "type": "object",
                "properties": {
                    "name": _string(),
                    "hash": _string(),
                    "machineID": _string(),
                    "systemdLoadState": _string(),
                    "systemdActiveState": _string(),
                    "systemdSubState": _string(),
                },
            },
            "UnitStatePage": _page("UnitState", "states"),
        },
        "resources": {
            "Machines": {
                "methods": {
                    "List": _method(
                        "Machine",
                        "List",
                        "GET",
                        "machines",
                        "Retrieve a page of Machine objects.",
                        parameters=_PAGE_TOKEN,
                        response={"$ref": "MachinePage"},
                    ),
                }
            },
            "Units": {
                "methods": {
                    "List": _method(
                        "Unit",
                        "List",
                        "GET",
                        "units",
                        "Retrieve a page of Unit objects.",
                        parameters=_PAGE_TOKEN,
                        response={"$ref": "UnitPage"},
                    ),
                    "Get": _method(
                        "Unit",
                        "Get",
                        "GET",
                        "units/{unitName}",
                        "Retrieve a single Unit object.",
                        parameters=_UNIT_NAME,
                        parameterOrder=["unitName"],
                        response={"$ref": "Unit"},
                    ),
                    "Delete": _method(
                        "Unit",
                        "Delete",
                        "DELETE",
                        "units/{unitName}",
                        "Delete the referenced Unit object.",
                        parameters=_UNIT_NAME,
                        parameterOrder=["unitName"],
                    ),
                    "Set": _method(
                        "Unit",
                        "Set",
                        "PUT",
                        "units/{unitName}",
                        "Create or update a Unit.",
                        parameters=_UNIT_NAME,
                        parameterOrder=["unitName"],
                        request={"$ref": "Unit"},
                    ),
                }
            },
            "UnitState": {
                "methods": {
                    "List": _method(
                        "UnitState",
                        "List",
                        "GET",
                        "state",
                        "Retrieve a page of UnitState objects.",
                        parameters={
                            **_PAGE_TOKEN,
                            "unitName": _string(location="query"),
                            "machineID": _string(location="query"),
                        },
                        response={"$ref": "UnitStatePage"},
                    ),
                    "Get": _method(
                        "UnitState",
                        "Get",
                        "GET",
                        "state/{unitName}",
                        "Retrieve the state of a single unit.",
                        parameters=_UNIT_NAME,
                        parameterOrder=["unitName"],
                        response={"$ref": "UnitState"},
                    ),
                }
            },
        },
    }


async def get_discovery(_request: web.Request) -> web.StreamResponse:
    return web.json_response(document())
