"""The narrow protocols through which each consumer sees the registry.

The agent, the engine and the API each need a handful of operations, different ones; each depends on its own
protocol, not on one wide interface. ``registry.store.EtcdRegistry`` implements them all. Every method raises
``RegistryUnavailable`` when etcd cannot be reached.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Protocol

from fleetpy.model import Machine, MachineID, ScheduleEntry, UnitRecord, UnitState, UnitView
from fleetpy.plan import EngineAction
from fleetpy.registry.mirror import Mirror, Prefix
from fleetpy.registry.ops import Op
from fleetpy.relay import RelayRequest
from fleetpy.watchplan import WatchError


class LeaseRegistry(Protocol):
    async def grant_lease(self, ttl: int) -> int: ...

    async def keepalive_lease(self, lease: int) -> int:
        """The lease's new TTL, 0 if it no longer exists."""

    async def lease_ttl(self, lease: int) -> int:
        """Remaining TTL, -1 if the lease does not exist."""

    async def revoke_lease(self, lease: int) -> None: ...


class PresenceRegistry(LeaseRegistry, Protocol):
    async def register_machine(self, machine: Machine, lease: int) -> None:
        """Write the machine key on ``lease`` (overwriting any previous registration)."""

    async def machine_lease(self, machine: MachineID) -> int | None:
        """The lease of the machine's key, ``None`` if the machine is not registered."""

    async def deregister_machine(self, machine: MachineID) -> None:
        """Delete the machine key and every unit state the machine published."""


class AgentRegistry(Protocol):
    def schedule_prefix(self, machine: MachineID) -> Prefix[ScheduleEntry]:
        """A mirror prefix of this machine's schedule only."""

    def mirror(self, prefixes: Sequence[Prefix[Any]]) -> Mirror: ...

    async def get_body(self, unit_hash: str) -> str | None:
        """The canonical text with this hash, ``None`` if etcd has none."""

    async def get_bodies(self, hashes: Iterable[str]) -> dict[str, str]:
        """The bodies etcd has among these hashes, read in batches and cached."""

    async def list_states(self, machine: MachineID | None = None) -> list[UnitState]: ...

    async def publish_states(
        self, machine: MachineID, lease: int, states: Sequence[UnitState], removed: Sequence[str]
    ) -> None:
        """Put ``states`` on ``lease`` and delete the states of ``removed`` units, in batched transactions."""


class EngineRegistry(LeaseRegistry, Protocol):
    async def campaign(self, machine: MachineID, lease: int) -> int | None:
        """Create the leader key if absent; its create revision (the fence) on success, else ``None``."""

    async def leader(self) -> tuple[MachineID, int] | None: ...

    async def wait_for_vacancy(self, timeout: float) -> None:
        """Return once the leader key is gone, or after ``timeout``."""

    async def resign(self, fence: int) -> None:
        """Delete the leader key if it is still ours."""

    def engine_ops(self, action: EngineAction) -> list[Op]: ...

    def reason_ops(self, reasons: Mapping[str, str], cleared: Iterable[str]) -> list[Op]:
        """Operations that store why units are not placed, and delete the reasons of ``cleared`` units."""

    async def apply_fenced(self, ops: Sequence[Op], fence: int) -> list[int]:
        """Write ``ops`` in transactions fenced on the leader key; ``LeadershipLost`` if the fence broke."""

    def units_prefix(self) -> Prefix[UnitRecord]: ...

    def machines_prefix(self) -> Prefix[Machine]: ...

    def machine_meta_prefix(self) -> Prefix[str]: ...

    def all_schedule_prefix(self) -> Prefix[ScheduleEntry]: ...

    def states_presence_prefix(self) -> Prefix[None]: ...

    def unplaced_prefix(self) -> Prefix[str]:
        """A mirror prefix of the stored reasons: unit → why it is not placed."""

    def mirror(self, prefixes: Sequence[Prefix[Any]]) -> Mirror: ...


class RelayRegistry(LeaseRegistry, Protocol):
    """How an API process asks a machine for a unit's status or journal (``fleetpy.relay``)."""

    async def open_request(self, machine: MachineID, request: RelayRequest) -> tuple[str, int]:
        """Write ``request`` for ``machine`` on ``request.lease``; return its ID and the revision of the write."""

    def replies(self, request_id: str, start_revision: int) -> AsyncIterator[tuple[str, bytes]]:
        """The replies to a request as they are written, (key tail, value), from ``start_revision`` on."""


class InspectorRegistry(Protocol):
    """How a machine's inspector sees the requests addressed to it, and answers them."""

    def requests_prefix(self, machine: MachineID) -> Prefix[RelayRequest]:
        """A mirror prefix of this machine's requests only."""

    def mirror(self, prefixes: Sequence[Prefix[Any]]) -> Mirror: ...

    async def put_reply(self, request_id: str, tail: str, data: bytes, lease: int) -> None:
        """Write one reply on the request's lease; ``RegistryUnavailable`` also when the lease is gone."""


class ApiRegistry(RelayRegistry, Protocol):
    async def list_machines(self) -> list[Machine]:
        """Registered machines, dynamic metadata merged, sorted by ID."""

    async def set_machine_metadata(self, changes: Sequence[tuple[MachineID, str, str]]) -> None: ...

    async def list_units(self) -> list[UnitView]:
        """Every unit, sorted by name, with placements and states read at one revision."""

    async def get_unit(self, name: str) -> UnitView | None: ...

    async def get_body(self, unit_hash: str) -> str | None: ...

    async def get_bodies(self, hashes: Iterable[str]) -> dict[str, str]: ...

    async def create_unit(self, record: UnitRecord, body: str) -> bool:
        """Create unit and body; ``False`` (nothing written) if the name exists."""

    async def replace_unit(self, record: UnitRecord, body: str, revision: int) -> None:
        """Overwrite the unit if still at ``revision``; ``Conflict`` otherwise."""

    async def set_desired(self, record: UnitRecord, revision: int) -> None:
        """Write the record if still at ``revision``; ``Conflict`` otherwise."""

    async def unit_records(self) -> dict[str, tuple[UnitRecord, int]]:
        """Every unit record with its mod revision."""

    async def write_units(self, items: Sequence[tuple[UnitRecord, str, int]]) -> int:
        """Create or overwrite units in batched transactions, each unit compared on its revision; the number
        of transactions. ``InvalidUnit`` (nothing written) for a unit too large for one etcd request."""

    async def destroy_unit(self, name: str) -> bool:
        """Delete the unit; ``False`` if there was none."""

    async def list_states(self, machine: MachineID | None = None) -> list[UnitState]:
        """Published unit states sorted by (unit, machine)."""

    async def list_watch_errors(self) -> list[WatchError]:
        """The files watched directories could not apply, sorted by directory, file and watcher."""
