"""``PATCH /fleet/v1/machines``: dynamic machine metadata, exactly as fleet's handler takes it (FLEET-SPEC §4.3).

The body is a JSON array of operations ``{"op": "add"|"replace"|"remove", "path": "/<machine>/metadata/<key>",
"value": {"value": "<string>"}}``. fleet decodes it into Go structs, so keys match case-insensitively (``Value``
works) and a wrongly typed field is a 400 naming the Go type; fleetpy says the same. fleet wanted ``value`` as
an object although its documentation shows a plain string; fleetpy takes both (§9.8). Every operation is
checked before any is applied; ``add`` and ``replace`` set the key, ``remove`` stores ``""``, which hides a key
the machine's own configuration sets. Any machine ID is accepted, also of machines not (yet) registered.

Dynamic metadata counts for scheduling at once: the engine mirrors it and moves units whose requirements it
changes.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from fleetpy.api.app import REGISTRY, HttpError, read_body
from fleetpy.api.schema import BadRequest
from fleetpy.errors import RegistryUnavailable
from fleetpy.model import MachineID

OPS = ("add", "remove", "replace")
PATH = re.compile(r"/([^/]+)/metadata/([A-Za-z0-9_.-]+)")
_OP_TYPE = "api.machineMetadataOp"
_GO_TYPES = {dict: "object", list: "array", str: "string", bool: "bool", int: "number", float: "number"}


def _go_type(value: Any) -> str:
    return _GO_TYPES.get(type(value), "value")


def _unmarshal_error(value: Any, target: str) -> BadRequest:
    return BadRequest(f"json: cannot unmarshal {_go_type(value)} into {target}")


def _fields(obj: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """Go's field matching: each JSON key goes to the field whose name it equals ignoring case; the last
    key for a field wins; unknown keys are ignored."""
    found: dict[str, Any] = {}
    for key, value in obj.items():
        for name in names:
            if key.lower() == name:
                found[name] = value
    return found


def _string(value: Any, field: str, go_type: str = "string") -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _unmarshal_error(value, f"Go struct field machineMetadataOp.{field} of type {go_type}")
    return value


def _value(raw: Any) -> str:
    """``{"value": "x"}`` as fleet wants it, or the plain ``"x"`` its documentation shows."""
    if raw is None or isinstance(raw, str):
        return raw or ""
    if isinstance(raw, dict):
        inner = _fields(raw, ("value",)).get("value")
        return _string(inner, "value.value")
    raise _unmarshal_error(raw, "Go struct field machineMetadataOp.value of type struct { Value string }")


def parse_metadata_ops(body: Any) -> list[tuple[MachineID, str, str]]:
    """(machine, key, value) for each operation in order, ``""`` for ``remove``; ``BadRequest`` with fleet's
    message for the first operation that is not valid (nothing is applied then)."""
    if body is None:
        return []  # Go decodes null into an empty slice
    if not isinstance(body, list):
        raise _unmarshal_error(body, f"Go value of type []{_OP_TYPE}")
    decoded = []
    for item in body:
        if item is None:
            item = {}
        if not isinstance(item, dict):
            raise _unmarshal_error(item, f"Go value of type {_OP_TYPE}")
        fields = _fields(item, ("op", "path", "value"))
        decoded.append(
            (_string(fields.get("op"), "op"), _string(fields.get("path"), "path"), _value(fields.get("value")))
        )
    changes = []
    for op, path, value in decoded:
        if op not in OPS:
            raise BadRequest("invalid op: expect add, remove, or replace")
        match = PATH.fullmatch(path)
        if match is None:
            raise BadRequest("machine metadata path invalid")
        if op != "remove" and not value:
            raise BadRequest("invalid value: add and replace require a value")
        changes.append((MachineID(match.group(1)), match.group(2), "" if op == "remove" else value))
    return changes


async def patch_machines(request: web.Request) -> web.StreamResponse:
    raw = await read_body(request)  # fleet reads the body whatever its Content-Type: not _read_json
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(str(exc)) from None
    changes = parse_metadata_ops(body)
    # Applied in order: the last operation on a key wins (and etcd refuses a transaction naming a key twice).
    last = {(machine, key): value for machine, key, value in changes}
    try:
        await request.app[REGISTRY].set_machine_metadata([(m, k, v) for (m, k), v in last.items()])
    except RegistryUnavailable as exc:
        raise HttpError(500, str(exc)) from exc  # fleet: a storage failure is a 500 with the error text
    return web.Response(status=204, content_type="application/json")
