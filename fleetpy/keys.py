"""The etcd key layout (docs/architecture.md, "etcd keyspace"), in one place.

Every key fleetpy reads or writes is built here, so the layout can be read (and changed) at a glance. Per-machine
prefixes are the point of the layout: an agent watches only ``schedule/<its id>/`` and is never woken by other
machines' work.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetpy.model import MachineID

DEFAULT_PREFIX = "/fleetpy"


def normalize_prefix(prefix: str) -> str:
    """``fleetpy``, ``/fleetpy`` and ``/fleetpy/`` all name the same prefix ``/fleetpy``."""
    return "/" + prefix.strip("/") if prefix.strip("/") else ""


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds and splits the keys under one prefix ``P``."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", normalize_prefix(self.prefix))

    # machines: P/machines/<id> on the machine lease; P/machine-meta/<id>/<key> permanent overrides
    @property
    def machines(self) -> str:
        return f"{self.prefix}/machines/"

    def machine(self, machine: str) -> str:
        return f"{self.machines}{machine}"

    @property
    def machine_meta_all(self) -> str:
        return f"{self.prefix}/machine-meta/"

    def machine_meta(self, machine: str, key: str = "") -> str:
        return f"{self.machine_meta_all}{machine}/{key}"

    # units: P/units/<name> (record), P/bodies/<hash> (canonical text)
    @property
    def units(self) -> str:
        return f"{self.prefix}/units/"

    def unit(self, name: str) -> str:
        return f"{self.units}{name}"

    @property
    def bodies(self) -> str:
        return f"{self.prefix}/bodies/"

    def body(self, unit_hash: str) -> str:
        return f"{self.bodies}{unit_hash}"

    # schedule: P/schedule/<machine>/<unit> (what the agent runs), P/placed/<unit>/<machine> (its index by unit)
    @property
    def schedule_all(self) -> str:
        return f"{self.prefix}/schedule/"

    def schedule(self, machine: str, unit: str = "") -> str:
        return f"{self.schedule_all}{machine}/{unit}"

    @property
    def placed_all(self) -> str:
        return f"{self.prefix}/placed/"

    def placed(self, unit: str, machine: str = "") -> str:
        return f"{self.placed_all}{unit}/{machine}"

    # unit states: P/states/<machine>/<unit> on the machine lease
    @property
    def states_all(self) -> str:
        return f"{self.prefix}/states/"

    def state(self, machine: str, unit: str = "") -> str:
        return f"{self.states_all}{machine}/{unit}"

    # status and journal relay (fleetpy.relay): P/requests/<machine>/<id> for that machine's inspector,
    # P/replies/<id>/<chunk> back; both on the requesting API's lease
    @property
    def requests_all(self) -> str:
        return f"{self.prefix}/requests/"

    def request(self, machine: str, request_id: str = "") -> str:
        return f"{self.requests_all}{machine}/{request_id}"

    def replies(self, request_id: str, tail: str = "") -> str:
        return f"{self.prefix}/replies/{request_id}/{tail}"

    # engine
    @property
    def leader(self) -> str:
        return f"{self.prefix}/engine/leader"

    @property
    def unplaced_all(self) -> str:
        return f"{self.prefix}/unplaced/"

    def unplaced(self, unit: str) -> str:
        return f"{self.unplaced_all}{unit}"

    # watched directories: P/watched/units/<unit> marks a unit a watched directory created (put only with the
    # unit, so its mod revision is the unit's create revision; deleted with it by a watcher, left behind by other
    # ways of destroying it); P/watched/claims/<unit>/<owner> is what each watcher's directory wants of it (permanent);
    # P/watched/owners/<owner> and P/watched/errors/<owner>/<file> live on their watcher's lease
    @property
    def watched_units(self) -> str:
        return f"{self.prefix}/watched/units/"

    def watched_unit(self, unit: str) -> str:
        return f"{self.watched_units}{unit}"

    @property
    def watched_claims(self) -> str:
        return f"{self.prefix}/watched/claims/"

    def watched_claim(self, unit: str, owner: str = "") -> str:
        return f"{self.watched_claims}{unit}/{owner}"

    @property
    def watched_owners(self) -> str:
        return f"{self.prefix}/watched/owners/"

    def watched_owner(self, owner: str) -> str:
        return f"{self.watched_owners}{owner}"

    @property
    def watched_errors(self) -> str:
        return f"{self.prefix}/watched/errors/"

    def watched_error(self, owner: str, file: str = "") -> str:
        return f"{self.watched_errors}{owner}/{file}"

    # splitting
    @staticmethod
    def tail(key: str, prefix: str) -> str:
        """The part of ``key`` after ``prefix``; ``ValueError`` if ``key`` is not under it."""
        if not key.startswith(prefix):
            raise ValueError(f"key {key!r} is not under {prefix!r}")
        return key[len(prefix) :]

    @staticmethod
    def split_pair(key: str, prefix: str) -> tuple[str, str]:
        """``prefix + a/b`` → ``(a, b)``."""
        first, _, second = Keys.tail(key, prefix).partition("/")
        return first, second

    def schedule_key_parts(self, key: str) -> tuple[MachineID, str]:
        machine, unit = self.split_pair(key, self.schedule_all)
        return MachineID(machine), unit
