"""The records fleetpy keeps, and the words for them (the glossary of docs/architecture.md).

Everything here is an immutable value: the pure core computes with these, the registry adapter encodes them
into etcd values (``registry/codec.py``), the API turns them into fleet's JSON shapes. States are ``str``
enums so that they print and serialise as fleet's words.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NewType

MachineID = NewType("MachineID", str)


class DesiredState(enum.StrEnum):
    """fleet's target state, also used for the current (achieved) state of a unit."""

    INACTIVE = "inactive"
    LOADED = "loaded"
    LAUNCHED = "launched"

    @classmethod
    def parse(cls, value: str) -> DesiredState:
        """Return the state named by ``value``; raise ``ValueError`` naming the valid ones otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"invalid value {value!r} for desired state: expected inactive, loaded or launched"
            ) from None


def short_id(machine_id: str) -> str:
    """The 8-character form of a machine ID that fleet accepts wherever an ID is asked for."""
    return machine_id[:8]


@dataclass(frozen=True, slots=True)
class Machine:
    """A host that runs fleetpyd and is registered in etcd (its key lives on the machine lease)."""

    id: MachineID
    public_ip: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    version: str = ""
    capabilities: Mapping[str, bool] = field(default_factory=dict)
    # What this machine will not run (docs/security.md): its configured unit-name globs, and the units its agent
    # refused because the host already has a unit of that name that fleetpy did not write (unit → why).
    unit_allow: tuple[str, ...] = ()
    unit_deny: tuple[str, ...] = ()
    refused: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UnitRecord:
    """A unit submitted to the cluster: ``P/units/<name>``.

    ``requirements`` holds the raw ``[X-Fleet]`` options of the body, in file order, so that the engine can
    schedule without fetching bodies; they are derived from the body and written with it.
    """

    name: str
    hash: str
    desired: DesiredState
    is_global: bool = False
    requirements: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    """A placement: the unit ``unit`` should be in state ``desired`` with body ``hash`` on ``machine``."""

    unit: str
    machine: MachineID
    hash: str
    desired: DesiredState


@dataclass(frozen=True, slots=True)
class UnitState:
    """What systemd on ``machine`` says of ``unit``, published by that machine's agent.

    ``achieved`` is what the agent has done to the unit: ``loaded`` (file written and linked) or
    ``launched`` (also started). It is the unit's current state as fleet defines it.
    """

    unit: str
    machine: MachineID
    load: str
    active: str
    sub: str
    hash: str
    achieved: DesiredState


def merge_metadata(machine: Machine, overrides: Mapping[str, str]) -> Machine:
    """Dynamic metadata (set through the API) over the machine's own: a value ``""`` removes the key."""
    if not overrides:
        return machine
    metadata = dict(machine.metadata)
    for key, value in overrides.items():
        if value == "":
            metadata.pop(key, None)
        else:
            metadata[key] = value
    return dataclasses.replace(machine, metadata=metadata)


@dataclass(frozen=True)
class UnitView:
    """A unit as the API shows it: its record, where it is placed, and the states its machines report."""

    record: UnitRecord
    placements: Mapping[MachineID, ScheduleEntry]
    states: Mapping[MachineID, UnitState]
    revision: int  # the mod revision of the unit record, for compare-and-swap updates
    reason: str = ""  # why the engine placed it nowhere (P/unplaced/<name>), "" when placed or not wanted

    @property
    def machine(self) -> MachineID | None:
        """The machine a non-global unit is placed on."""
        if self.record.is_global or not self.placements:
            return None
        return sorted(self.placements)[0]

    @property
    def current(self) -> DesiredState | None:
        """fleet's current state; ``None`` for global units, which have one per machine."""
        if self.record.is_global:
            return None
        machine = self.machine
        state = self.states.get(machine) if machine is not None else None
        if state is None or state.hash != self.record.hash:
            return DesiredState.INACTIVE
        return state.achieved
