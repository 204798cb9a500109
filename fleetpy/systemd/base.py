"""What the agent needs from systemd, as a narrow protocol.

The D-Bus implementation is ``systemd.dbus.DbusSystemd``; the scale benchmark's hollow machines implement the
same protocol in memory. Every method raises ``SystemdUnavailable`` when the manager cannot be reached and
``SystemdError`` when it refuses a request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class UnitStatus:
    """systemd's view of one unit."""

    load: str
    active: str
    sub: str

    @property
    def running(self) -> bool:
        """Active or on its way there: a unit the agent should treat as launched when it adopts it."""
        return self.active in ("active", "activating", "reloading")


@dataclass(frozen=True, slots=True)
class UnitOrigin:
    """Where systemd has a unit from: its load state and the file it was loaded from (``""`` for units that
    have none, such as scopes and slices)."""

    load: str
    fragment: str


class Systemd(Protocol):
    async def connect(self) -> None:
        """Connect and subscribe to unit signals; callable again after the connection broke."""

    async def close(self) -> None: ...

    def on_change(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(unit name)`` whenever systemd signals a change of that unit's properties."""

    async def link(self, paths: Sequence[str]) -> None:
        """Link unit files into the manager's runtime unit directory (replacing existing links)."""

    async def enable(self, paths: Sequence[str]) -> None:
        """Enable unit files at runtime (for units with an ``[Install]`` section)."""

    async def disable(self, names: Sequence[str]) -> None:
        """Remove runtime links and enablement of these units; units that have none are fine."""

    async def reload(self) -> None:
        """daemon-reload: make the manager read unit files again."""

    async def start(self, name: str) -> None:
        """Queue a start job (mode ``replace``); does not wait for it to finish."""

    async def stop(self, name: str) -> None:
        """Queue a stop job (mode ``replace``); does not wait for it to finish."""

    async def reset_failed(self, name: str) -> None:
        """Forget a unit's failed state; a unit that is not failed (or unknown) is fine."""

    async def statuses(self, names: Sequence[str]) -> Mapping[str, UnitStatus]:
        """Load, active and sub state of each named unit (``not-found`` for unknown names)."""

    async def origin(self, name: str) -> UnitOrigin:
        """The load state and fragment path of ``name`` (``not-found`` and ``""`` when systemd has none)."""
