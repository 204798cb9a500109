"""systemd over D-Bus with dbus-next: the only module that imports dbus_next.

It speaks raw method calls to ``org.freedesktop.systemd1`` instead of introspected proxies: no introspection
round trips, one call per operation, and unit objects are never materialised. Unit state comes from
``PropertiesChanged`` signals on unit objects, which systemd sends only after ``Manager.Subscribe()``; the
signal says *which* unit changed and the agent asks for its state (level-based: payloads are not trusted).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import BusType, MessageType
from dbus_next.message import Message

from fleetpy.errors import SystemdError, SystemdUnavailable
from fleetpy.systemd.base import UnitOrigin, UnitStatus

log = logging.getLogger(__name__)

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT_PATH_PREFIX = "/org/freedesktop/systemd1/unit/"
_SIGNAL_RULE = (
    "type='signal',sender='org.freedesktop.systemd1',interface='org.freedesktop.DBus.Properties',"
    "member='PropertiesChanged',path_namespace='/org/freedesktop/systemd1/unit'"
)
_CALL_TIMEOUT = 30.0


def unescape_path(segment: str) -> str:
    """systemd's bus-path escaping reversed: ``t1_2eservice`` → ``t1.service``."""
    out = []
    i = 0
    while i < len(segment):
        if segment[i] == "_" and _is_hex(segment[i + 1 : i + 3]):
            out.append(chr(int(segment[i + 1 : i + 3], 16)))
            i += 3
        else:
            out.append(segment[i])
            i += 1
    return "".join(out)


def _is_hex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789abcdefABCDEF" for c in text)


def bus_address(user: bool) -> str | None:
    """The bus to reach systemd on: the session bus of a user manager, else the system bus (``None``)."""
    if not user:
        return None
    address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if address:
        return address
    runtime = os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}")
    return f"unix:path={runtime}/bus"


class DbusSystemd:
    """The ``Systemd`` protocol over a real D-Bus connection."""

    def __init__(self, address: str | None = None, *, user: bool = False) -> None:
        self.address = address if address is not None else bus_address(user)
        self._bus: MessageBus | None = None
        self._callbacks: list[Callable[[str], None]] = []
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._bus is not None and self._bus.connected

    async def connect(self) -> None:
        async with self._lock:
            if self.connected:
                return
            try:
                async with asyncio.timeout(_CALL_TIMEOUT):
                    if self.address:
                        bus = await MessageBus(bus_address=self.address).connect()
                    else:
                        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            except Exception as exc:  # dbus-next raises many kinds; all mean "not reachable now"
                raise SystemdUnavailable(
                    f"cannot connect to the D-Bus of systemd ({self.address or 'system bus'}): {exc}"
                ) from exc
            bus.add_message_handler(self._on_message)
            self._bus = bus
            await self._call_raw(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "AddMatch",
                "s",
                [_SIGNAL_RULE],
            )
            await self._manager("Subscribe")

    async def close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
            try:
                async with asyncio.timeout(2):
                    await bus.wait_for_disconnect()
            except Exception as exc:  # a bus that is already gone may report its own error
                log.debug("closing the D-Bus connection: %s", exc)

    def on_change(self, callback: Callable[[str], None]) -> None:
        self._callbacks.append(callback)

    def _on_message(self, msg: Message) -> bool:
        if (
            msg.message_type == MessageType.SIGNAL
            and msg.member == "PropertiesChanged"
            and msg.path
            and msg.path.startswith(UNIT_PATH_PREFIX)
        ):
            name = unescape_path(msg.path[len(UNIT_PATH_PREFIX) :])
            for callback in self._callbacks:
                callback(name)
        return False

    async def _call_raw(
        self,
        destination: str,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
    ) -> list[Any]:
        bus = self._bus
        if bus is None or not bus.connected:
            self._bus = None
            raise SystemdUnavailable("not connected to systemd's D-Bus")
        message = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
        try:
            async with asyncio.timeout(_CALL_TIMEOUT):
                reply = await bus.call(message)
        except (TimeoutError, OSError, EOFError) as exc:
            self._bus = None
            raise SystemdUnavailable(f"D-Bus call {member} failed: {exc or type(exc).__name__}") from exc
        except Exception as exc:
            if not bus.connected:
                self._bus = None
                raise SystemdUnavailable(f"D-Bus connection lost during {member}: {exc}") from exc
            raise
        if reply is None:
            return []
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise SystemdError(reply.error_name or "unknown D-Bus error", text)
        return list(reply.body)

    async def _manager(self, member: str, signature: str = "", *args: Any) -> list[Any]:
        return await self._call_raw(SYSTEMD, MANAGER_PATH, MANAGER, member, signature, list(args))

    async def link(self, paths: Sequence[str]) -> None:
        await self._manager("LinkUnitFiles", "asbb", list(paths), True, True)

    async def enable(self, paths: Sequence[str]) -> None:
        await self._manager("EnableUnitFiles", "asbb", list(paths), True, True)

    async def disable(self, names: Sequence[str]) -> None:
        await self._manager("DisableUnitFiles", "asb", list(names), True)

    async def reload(self) -> None:
        await self._manager("Reload")

    async def start(self, name: str) -> None:
        await self._manager("StartUnit", "ss", name, "replace")

    async def stop(self, name: str) -> None:
        try:
            await self._manager("StopUnit", "ss", name, "replace")
        except SystemdError as exc:
            if exc.name != "org.freedesktop.systemd1.NoSuchUnit":
                raise

    async def reset_failed(self, name: str) -> None:
        try:
            await self._manager("ResetFailedUnit", "s", name)
        except SystemdError as exc:
            if exc.name not in ("org.freedesktop.systemd1.NoSuchUnit", "org.freedesktop.systemd1.LoadFailed"):
                raise

    async def statuses(self, names: Sequence[str]) -> Mapping[str, UnitStatus]:
        if not names:
            return {}
        (units,) = await self._manager("ListUnitsByNames", "as", list(names))
        return {u[0]: UnitStatus(load=u[2], active=u[3], sub=u[4]) for u in units}

    async def origin(self, name: str) -> UnitOrigin:
        (path,) = await self._manager("LoadUnit", "s", name)
        values = []
        for prop in ("LoadState", "FragmentPath"):
            (variant,) = await self._call_raw(
                SYSTEMD, path, "org.freedesktop.DBus.Properties", "Get", "ss", ["org.freedesktop.systemd1.Unit", prop]
            )
            values.append(str(variant.value))
        return UnitOrigin(load=values[0], fragment=values[1])

    # Used by tests and tools to look at a host without going through fleetpy.

    async def unit_property(self, name: str, interface: str, prop: str) -> Any:
        (path,) = await self._manager("LoadUnit", "s", name)
        (variant,) = await self._call_raw(
            SYSTEMD, path, "org.freedesktop.DBus.Properties", "Get", "ss", [interface, prop]
        )
        return variant.value

    async def main_pid(self, name: str) -> int:
        return int(await self.unit_property(name, "org.freedesktop.systemd1.Service", "MainPID"))

    async def manager_property(self, prop: str) -> Any:
        (variant,) = await self._call_raw(
            SYSTEMD, MANAGER_PATH, "org.freedesktop.DBus.Properties", "Get", "ss", [MANAGER, prop]
        )
        return variant.value
