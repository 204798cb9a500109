"""fleet API v1 JSON shapes (FLEET-SPEC §4.2) and page tokens (§4.4).

Pure code shared by the server (``api.app``) and the client (``fleetpy.client``): what a Unit, UnitState and
Machine look like on the wire, key order as fleet's Go encoder emits it, empty fields omitted.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from fleetpy.model import DesiredState, Machine, UnitState
from fleetpy.unit import UnitOption
from fleetpy.watchplan import WatchError

FLEETPY_PREFIX = "/fleetpy/v1"  # fleetpy's own endpoints, so that fleet's paths stay fleet's


class BadRequest(ValueError):
    """A request the API answers with 400 and this message."""


def options_json(options: Sequence[UnitOption]) -> list[dict[str, str]]:
    return [{"name": o.name, "section": o.section, "value": o.value} for o in options]


def unit_json(
    *,
    name: str,
    desired: DesiredState,
    current: DesiredState | None,
    machine: str | None,
    options: Sequence[UnitOption],
    reason: str = "",
) -> dict[str, Any]:
    """fleet's Unit; ``reason`` (why the engine placed it nowhere) is fleetpy's, after fleet's fields, and
    omitted when empty: fleet's clients ignore it."""
    body: dict[str, Any] = {}
    if current is not None:
        body["currentState"] = current.value
    body["desiredState"] = desired.value
    if machine:
        body["machineID"] = machine
    body["name"] = name
    if options:
        body["options"] = options_json(options)
    if reason:
        body["reason"] = reason
    return body


def state_json(state: UnitState) -> dict[str, str]:
    body = {
        "hash": state.hash,
        "machineID": state.machine,
        "name": state.unit,
        "systemdActiveState": state.active,
        "systemdLoadState": state.load,
        "systemdSubState": state.sub,
    }
    return {k: v for k, v in body.items() if v}


def machine_json(machine: Machine) -> dict[str, Any]:
    body: dict[str, Any] = {"id": machine.id}
    if machine.metadata:
        body["metadata"] = dict(sorted(machine.metadata.items()))
    if machine.public_ip:
        body["primaryIP"] = machine.public_ip
    # fleetpy's own, after fleet's fields and only when set: what the machine will not run (docs/security.md)
    if machine.unit_allow:
        body["unitAllow"] = list(machine.unit_allow)
    if machine.unit_deny:
        body["unitDeny"] = list(machine.unit_deny)
    if machine.refused:
        body["refusedUnits"] = dict(sorted(machine.refused.items()))
    return body


def watch_error_json(error: WatchError) -> dict[str, Any]:
    return {
        "file": error.file,
        "directory": error.directory,
        "machineID": error.machine,
        "owner": error.owner,
        "message": error.message,
    }


def parse_options(raw: Any) -> list[UnitOption]:
    """The ``options`` field of a request: a list of ``{"section", "name", "value"}`` string triples."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest("unable to decode body: options must be a list")
    options = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise BadRequest(f"unable to decode body: options[{i}] must be an object")
        values = {}
        for key in ("section", "name", "value"):
            value = item.get(key, "")
            if not isinstance(value, str):
                raise BadRequest(f"unable to decode body: options[{i}].{key} must be a string")
            values[key] = value
        options.append(UnitOption(values["section"], values["name"], values["value"]))
    return options


# Page tokens: URL-safe base64 of uint16 limit (little-endian) ‖ uint16 page (little-endian).

_URL_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_DECODE = {char: value for value, char in enumerate(_URL_ALPHABET)}
_NEWLINES = b"\r\n"


def encode_token(limit: int, page: int) -> str:
    return base64.urlsafe_b64encode(struct.pack("<HH", limit, page)).decode()


def _corrupt(offset: int) -> BadRequest:
    return BadRequest(f"illegal base64 data at input byte {offset}")


def go_urlsafe_b64decode(text: str) -> bytes:
    """Go's ``base64.URLEncoding.DecodeString``: strict padding, ``\\r`` and ``\\n`` skipped, anything else
    outside the URL-safe alphabet refused with Go's message and byte offset (Python's decoder is lenient
    and silently drops such characters)."""
    src = text.encode("utf-8", "surrogatepass")
    out = bytearray()
    si = 0
    while si < len(src):
        quantum = [0, 0, 0, 0]
        size = 4
        j = 0
        while j < 4:
            if si == len(src):
                if j == 0:
                    return bytes(out)
                raise _corrupt(si - j)
            char = src[si]
            si += 1
            if char in _DECODE:
                quantum[j] = _DECODE[char]
                j += 1
                continue
            if char in _NEWLINES:
                continue
            if char != ord("=") or j < 2:
                raise _corrupt(si - 1)
            if j == 2:  # "==" expected: the second "=" must follow, newlines aside
                while si < len(src) and src[si] in _NEWLINES:
                    si += 1
                if si == len(src):
                    raise _corrupt(len(src))
                if src[si] != ord("="):
                    raise _corrupt(si - 1)
                si += 1
            while si < len(src) and src[si] in _NEWLINES:
                si += 1
            if si < len(src):
                raise _corrupt(si)  # data after the padding
            size = j
            break
        value = quantum[0] << 18 | quantum[1] << 12 | quantum[2] << 6 | quantum[3]
        out += value.to_bytes(3, "big")[: size - 1]
    return bytes(out)


def decode_token(values: Sequence[str], limit: int) -> int:
    """The page a ``nextPageToken`` asks for (1 when there is none); ``BadRequest`` with fleet's messages."""
    if not values:
        return 1
    if len(values) > 1:
        raise BadRequest("too many values for page token")
    raw = go_urlsafe_b64decode(values[0])
    if not raw:
        raise BadRequest("EOF")  # Go's binary.Read of nothing
    if len(raw) < 4:
        raise BadRequest("unexpected EOF")
    token_limit, page = struct.unpack("<HH", raw[:4])
    if token_limit != limit:
        raise BadRequest(f"token limit must be {limit}")
    if page == 0:
        raise BadRequest("token page must be greater than zero")
    return int(page)


def page(items: Sequence[Any], key: str, query: Mapping[str, Sequence[str]], limit: int) -> dict[str, Any]:
    """One page of ``items`` as fleet returns it: ``{}`` when empty, a token whenever the page is full."""
    number = decode_token(query.get("nextPageToken", []), limit)
    start = (number - 1) * limit
    chunk = list(items[start : start + limit])
    body: dict[str, Any] = {}
    if chunk:
        body[key] = chunk
    if len(chunk) == limit:
        body["nextPageToken"] = encode_token(limit, number + 1)
    return body
