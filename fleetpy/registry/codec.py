"""The JSON values stored in etcd, to and from fleetpy's records.

Decoding is strict: a value that is not what fleetpy writes raises ``ValueError`` naming the problem, and the
adapter decides to skip it (a corrupt key must not stop the cluster) and log it once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fleetpy.model import DesiredState, Machine, MachineID, ScheduleEntry, UnitRecord, UnitState
from fleetpy.watchplan import Claim, WatchError


def _dumps(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _object(raw: bytes | str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _str(obj: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string")
    return value


def _str_map(obj: Mapping[str, Any], key: str) -> dict[str, str]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"field {key!r} must map strings to strings")
    return dict(value)


def _bool(obj: Mapping[str, Any], key: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"field {key!r} must be true or false")
    return value


def _state(obj: Mapping[str, Any], key: str) -> DesiredState:
    return DesiredState.parse(_str(obj, key))


# machines


def encode_machine(machine: Machine) -> bytes:
    body: dict[str, Any] = {
        "id": machine.id,
        "publicIP": machine.public_ip,
        "metadata": dict(machine.metadata),
        "version": machine.version,
        "capabilities": dict(machine.capabilities),
    }
    # fleetpy 0.x machines without these fields decode as allowing everything: written only when set
    if machine.unit_allow:
        body["unitAllow"] = list(machine.unit_allow)
    if machine.unit_deny:
        body["unitDeny"] = list(machine.unit_deny)
    if machine.refused:
        body["refused"] = dict(machine.refused)
    return _dumps(body)


def _str_list(obj: dict[str, Any], key: str) -> tuple[str, ...]:
    value = obj.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"field {key!r} must be a list of strings")
    return tuple(value)


def decode_machine(raw: bytes) -> Machine:
    obj = _object(raw)
    caps = obj.get("capabilities")
    if caps is None:
        caps = {}
    if not isinstance(caps, dict) or not all(isinstance(v, bool) for v in caps.values()):
        raise ValueError("field 'capabilities' must map names to true or false")
    return Machine(
        id=MachineID(_str(obj, "id")),
        public_ip=_str(obj, "publicIP", ""),
        metadata=_str_map(obj, "metadata"),
        version=_str(obj, "version", ""),
        capabilities=dict(caps),
        unit_allow=_str_list(obj, "unitAllow"),
        unit_deny=_str_list(obj, "unitDeny"),
        refused=_str_map(obj, "refused"),
    )


# units


def encode_unit(record: UnitRecord) -> bytes:
    return _dumps(
        {
            "hash": record.hash,
            "desired": record.desired.value,
            "global": record.is_global,
            "requirements": [list(pair) for pair in record.requirements],
        }
    )


def decode_unit(name: str, raw: bytes) -> UnitRecord:
    obj = _object(raw)
    reqs = obj.get("requirements")
    if reqs is None:
        reqs = []
    if not isinstance(reqs, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in reqs
    ):
        raise ValueError("field 'requirements' must be a list of [name, value] pairs")
    return UnitRecord(
        name=name,
        hash=_str(obj, "hash"),
        desired=_state(obj, "desired"),
        is_global=_bool(obj, "global"),
        requirements=tuple((k, v) for k, v in reqs),
    )


# schedule


def encode_entry(entry: ScheduleEntry) -> bytes:
    return _dumps({"hash": entry.hash, "desired": entry.desired.value})


def decode_entry(machine: MachineID, unit: str, raw: bytes) -> ScheduleEntry:
    obj = _object(raw)
    return ScheduleEntry(unit=unit, machine=machine, hash=_str(obj, "hash"), desired=_state(obj, "desired"))


# unit states


def encode_state(state: UnitState) -> bytes:
    return _dumps(
        {
            "load": state.load,
            "active": state.active,
            "sub": state.sub,
            "hash": state.hash,
            "achieved": state.achieved.value,
        }
    )


def decode_state(machine: MachineID, unit: str, raw: bytes) -> UnitState:
    obj = _object(raw)
    return UnitState(
        unit=unit,
        machine=machine,
        load=_str(obj, "load", ""),
        active=_str(obj, "active", ""),
        sub=_str(obj, "sub", ""),
        hash=_str(obj, "hash", ""),
        achieved=_state(obj, "achieved"),
    )


# watched directories


def encode_claim(claim: Claim) -> bytes:
    return _dumps({"hash": claim.hash, "file": claim.file})


def decode_claim(owner: str, raw: bytes) -> Claim:
    obj = _object(raw)
    return Claim(owner=owner, hash=_str(obj, "hash"), file=_str(obj, "file", ""))


def encode_owner(machine: str, directory: str) -> bytes:
    return _dumps({"machineID": machine, "directory": directory})


def encode_watch_error(error: WatchError) -> bytes:
    return _dumps(
        {
            "owner": error.owner,
            "machineID": error.machine,
            "directory": error.directory,
            "file": error.file,
            "message": error.message,
        }
    )


def decode_watch_error(raw: bytes) -> WatchError:
    obj = _object(raw)
    return WatchError(
        owner=_str(obj, "owner"),
        machine=_str(obj, "machineID", ""),
        directory=_str(obj, "directory", ""),
        file=_str(obj, "file"),
        message=_str(obj, "message", ""),
    )
