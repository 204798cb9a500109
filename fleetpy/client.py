"""The HTTP client of fleet's API v1, as fleetpyctl uses it.

Endpoints are ``unix:///path/to.sock``, ``http://host:port`` or ``https://host:port``, as in fleetctl. JSON is
decoded into the records below at this edge; an API error comes out as ``ApiError`` with fleet's message, and
an endpoint that cannot be reached as ``EndpointUnavailable``. Lists follow ``nextPageToken`` to the end.

Of a comma-separated list of endpoints (fleetctl used only the first), a request goes to the first that
answers: it moves on to the next when a connection cannot be made (nothing was sent, so any request may be
repeated), or when the API answers that its fleetpyd cannot reach etcd before doing anything (fleet's 503
without a ``Server`` header). An endpoint that answered is used first for the following requests.
A bearer token, when given, goes with every request (``Authorization: Bearer``) for TCP listeners.

With a ``Tunnel`` (fleetpyctl's ``--tunnel``, ``cli/sshclient.py``), connections to an endpoint are made to a
local unix socket that carries their bytes unchanged to the endpoint. TLS to an https endpoint still runs here,
end to end, and verifies the server against the endpoint's own host name, never the local socket. An endpoint
whose carrier failed is reported with the carrier's reason (say, ssh's exit status and message) rather than
aiohttp's "Server disconnected"; it is not failed over from, because the request may have reached the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp.client_exceptions import UnixClientConnectorError
from aiohttp.client_proto import ResponseHandler
from aiohttp.tracing import Trace

from fleetpy.errors import FleetError
from fleetpy.model import DesiredState
from fleetpy.unit import UnitOption

log = logging.getLogger(__name__)
R = TypeVar("R")
API = "/fleet/v1"
FLEETPY_API = "/fleetpy/v1"  # fleetpy's own endpoints: status and journal, plan, batches, watch errors


class ApiError(FleetError):
    """The API answered with an error status. It reads as fleetctl's Go client (googleapi) words it, so that
    messages such as ``Error loading units: googleapi: Error 400: cannot activate template "a@.service"`` are
    fleet's."""

    def __init__(self, status: int, message: str, body: str = "") -> None:
        if message:
            text = f"googleapi: Error {status}: {message}"
        else:
            text = f"googleapi: got HTTP response code {status} with body: {body}"
        super().__init__(text)
        self.status = status
        self.message = message


class EndpointUnavailable(FleetError):
    """The API endpoint cannot be reached."""


@dataclass(frozen=True, slots=True)
class ApiMachine:
    id: str
    primary_ip: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # unit → why the machine will not run it


@dataclass(frozen=True, slots=True)
class ApiUnit:
    name: str
    desired: str
    current: str = ""
    machine: str = ""
    options: tuple[UnitOption, ...] = ()
    reason: str = ""  # fleetpy's: why the engine placed it nowhere

    @property
    def is_global(self) -> bool:
        from fleetpy.unit import is_global

        return is_global([(o.name, o.value) for o in self.options if o.section == "X-Fleet"])


@dataclass(frozen=True, slots=True)
class ApiUnitState:
    name: str
    machine: str
    hash: str = ""
    load: str = ""
    active: str = ""
    sub: str = ""


@dataclass(frozen=True, slots=True)
class ApiVerdict:
    """How one machine fares for a unit in a plan: ``rule`` and ``message`` say why it is ruled out."""

    machine: str
    load: int
    rule: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class ApiPlannedUnit:
    name: str
    machines: tuple[str, ...]
    kept: bool
    reason: str
    verdicts: tuple[ApiVerdict, ...]
    is_global: bool = False


@dataclass(frozen=True, slots=True)
class ApiPlannedAction:
    type: str  # Schedule, Unschedule or Update
    unit: str
    machine: str
    reason: str


@dataclass(frozen=True, slots=True)
class ApiPlan:
    units: tuple[ApiPlannedUnit, ...]
    actions: tuple[ApiPlannedAction, ...]


@dataclass(frozen=True, slots=True)
class OutputEvent:
    """One event of a status or journal stream: output of ``machine``, or the end of it (``code`` set)."""

    machine: str
    output: str = ""
    code: int | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class ApiWatchError:
    file: str
    directory: str = ""
    machine: str = ""
    owner: str = ""
    message: str = ""


def _s(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key, "")
    return value if isinstance(value, str) else str(value)


def decode_unit(obj: dict[str, Any]) -> ApiUnit:
    options = tuple(
        UnitOption(_s(o, "section"), _s(o, "name"), _s(o, "value"))
        for o in obj.get("options") or []
        if isinstance(o, dict)
    )
    return ApiUnit(
        name=_s(obj, "name"),
        desired=_s(obj, "desiredState"),
        current=_s(obj, "currentState"),
        machine=_s(obj, "machineID"),
        options=options,
        reason=_s(obj, "reason"),
    )


def decode_state(obj: dict[str, Any]) -> ApiUnitState:
    return ApiUnitState(
        name=_s(obj, "name"),
        machine=_s(obj, "machineID"),
        hash=_s(obj, "hash"),
        load=_s(obj, "systemdLoadState"),
        active=_s(obj, "systemdActiveState"),
        sub=_s(obj, "systemdSubState"),
    )


def decode_machine(obj: dict[str, Any]) -> ApiMachine:
    metadata = obj.get("metadata") or {}
    refused = obj.get("refusedUnits") or {}
    return ApiMachine(
        id=_s(obj, "id"),
        primary_ip=_s(obj, "primaryIP"),
        metadata={str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {},
        refused={str(k): str(v) for k, v in refused.items()} if isinstance(refused, dict) else {},
    )


def _options(options: Sequence[UnitOption]) -> list[dict[str, str]]:
    return [{"section": o.section, "name": o.name, "value": o.value} for o in options]


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _int(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key, 0)
    return value if isinstance(value, int) else 0


def decode_plan(obj: dict[str, Any]) -> ApiPlan:
    units = tuple(
        ApiPlannedUnit(
            name=_s(u, "name"),
            machines=tuple(str(m) for m in u.get("machines") or []),
            kept=u.get("kept") is True,
            reason=_s(u, "reason"),
            verdicts=tuple(
                ApiVerdict(_s(v, "machineID"), _int(v, "load"), _s(v, "rule"), _s(v, "message"))
                for v in _dicts(u.get("verdicts"))
            ),
            is_global=u.get("global") is True,
        )
        for u in _dicts(obj.get("units"))
    )
    actions = tuple(
        ApiPlannedAction(_s(a, "type"), _s(a, "unit"), _s(a, "machineID"), _s(a, "reason"))
        for a in _dicts(obj.get("actions"))
    )
    return ApiPlan(units, actions)


def parse_endpoint(endpoint: str) -> tuple[str, str]:
    """(base URL, unix socket path or ``""``) of the first endpoint, with fleetctl's messages for endpoints it
    cannot use."""
    return _parse_one(endpoint.split(",")[0].strip())


def parse_endpoints(endpoints: str) -> list[tuple[str, str]]:
    """Every endpoint of a comma-separated list, as ``parse_endpoint`` reads one."""
    items = [e.strip() for e in endpoints.split(",") if e.strip()]
    return [_parse_one(e) for e in items] or [_parse_one("")]


def _parse_one(first: str) -> tuple[str, str]:
    parts = urlsplit(first)
    if not parts.scheme:
        raise EndpointUnavailable("Unable to initialize client: URL scheme undefined")
    if parts.scheme in ("unix", "file"):
        if parts.netloc:
            raise EndpointUnavailable(
                f'Unable to initialize client: unable to connect to host "{parts.netloc}" with scheme "{parts.scheme}"'
            )
        return "http://fleetpy", parts.path
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise EndpointUnavailable(f'Unable to initialize client: no host in endpoint "{first}"')
        return f"{parts.scheme}://{parts.netloc}", ""
    raise EndpointUnavailable(f'Unable to initialize client: unsupported URL scheme "{parts.scheme}"')


def _reason(exc: BaseException) -> str:
    """Why a request failed, without aiohttp's repetition of the address (``[Errno 2] ...`` → its text)."""
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "the request timed out"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS: {exc.os_error}"
    error = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)
    return str(exc) or type(exc).__name__


NOT_READY = "fleet server unable to communicate with etcd"


class _TryNext(Exception):
    """This endpoint cannot serve the request and did nothing: try the next one."""

    def __init__(self, failure: BaseException) -> None:
        super().__init__(str(failure))
        self.failure = failure


def _unreachable(exc: BaseException) -> bool:
    """A connection that could not be made (no TLS failure: that is a configuration problem to report)."""
    return isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(exc, aiohttp.ClientSSLError)


class Tunnel(Protocol):
    """Another way to the endpoints than connecting to them: a local unix socket per endpoint whose connections
    carry bytes to it unchanged (fleetpyctl's ``--tunnel``)."""

    @property
    def name(self) -> str:
        """How error messages name the way, e.g. ``the SSH tunnel bastion:22``."""
        ...

    def socket(self, index: int) -> str:
        """The local unix socket that leads to endpoint ``index`` of the client's list."""
        ...

    def failure(self, index: int) -> str:
        """Why the last connection carried to endpoint ``index`` broke, ``""`` when none did."""
        ...


class _TunnelConnector(aiohttp.UnixConnector):
    """Connections through a ``Tunnel``'s socket. For https the TLS handshake runs over that socket with the
    URL's host as ``server_hostname``, so the certificate is checked against the endpoint, as without a tunnel
    (aiohttp's ``UnixConnector`` never speaks TLS)."""

    def __init__(self, path: str, ssl_context: ssl.SSLContext | None) -> None:
        super().__init__(path=path, limit=32)
        self._tls = ssl_context

    async def _create_connection(
        self, req: aiohttp.ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        if not req.is_ssl():
            return await super()._create_connection(req, traces, timeout)
        context = self._tls if self._tls is not None else ssl.create_default_context()
        try:
            async with asyncio.timeout(timeout.sock_connect):
                _, protocol = await self._loop.create_unix_connection(
                    self._factory, self.path, ssl=context, server_hostname=(req.host or "").rstrip(".")
                )
        except ssl.CertificateError as exc:
            raise aiohttp.ClientConnectorCertificateError(req.connection_key, exc) from exc
        except ssl.SSLError as exc:
            raise aiohttp.ClientConnectorSSLError(req.connection_key, exc) from exc
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                raise
            raise UnixClientConnectorError(self.path, req.connection_key, exc) from exc
        return protocol


class Client:
    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        token: str = "",
        tunnel: Tunnel | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.endpoints = parse_endpoints(endpoint)
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.token = token
        self.tunnel = tunnel
        self._current = 0
        self._sessions: dict[int, aiohttp.ClientSession] = {}

    @property
    def base(self) -> str:
        return self.endpoints[self._current][0]

    @property
    def socket_path(self) -> str:
        return self.endpoints[self._current][1]

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()

    def _http(self, index: int | None = None) -> aiohttp.ClientSession:
        index = self._current if index is None else index
        session = self._sessions.get(index)
        if session is None:
            socket_path = self.endpoints[index][1]
            connector: aiohttp.BaseConnector
            if self.tunnel is not None:
                connector = _TunnelConnector(self.tunnel.socket(index), self.ssl_context)
            elif socket_path:
                connector = aiohttp.UnixConnector(path=socket_path, limit=32)
            else:
                tls = self.ssl_context if self.ssl_context is not None else True
                connector = aiohttp.TCPConnector(limit=32, ssl=tls)
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
            session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout), headers=headers
            )
            self._sessions[index] = session
        return session

    def _where(self, index: int) -> str:
        base, socket_path = self.endpoints[index]
        where = f"unix://{socket_path}" if socket_path else base
        return f"{where} through {self.tunnel.name}" if self.tunnel is not None else where

    def _unavailable(self, index: int, exc: BaseException) -> EndpointUnavailable:
        """The error of a request to endpoint ``index`` that failed with ``exc``: the tunnel's reason first."""
        reason = (self.tunnel.failure(index) if self.tunnel is not None else "") or _reason(exc)
        return EndpointUnavailable(f"cannot reach the fleetpy API at {self._where(index)}: {reason}")

    @property
    def where(self) -> str:
        return self._where(self._current)

    async def _failover(self, attempt: Callable[[int], Awaitable[R]]) -> R:
        """``attempt(endpoint index)`` on the current endpoint, then on the others while they raise
        ``_TryNext``; ``EndpointUnavailable`` naming each one's failure when none could serve."""
        failures = []
        count = len(self.endpoints)
        for step in range(count):
            index = (self._current + step) % count
            try:
                result = await attempt(index)
            except _TryNext as exc:
                failures.append((index, exc.failure))
                if count > 1:
                    log.debug("endpoint %s: %s; trying the next", self._where(index), exc)
                continue
            self._current = index
            return result
        if len(failures) == 1:
            index, failure = failures[0]
            if isinstance(failure, ApiError):
                raise failure
            raise EndpointUnavailable(
                f"cannot reach the fleetpy API at {self._where(index)}: {_reason(failure)}"
            ) from failure
        details = "; ".join(f"{self._where(i)}: {f if isinstance(f, ApiError) else _reason(f)}" for i, f in failures)
        raise EndpointUnavailable(f"cannot reach the fleetpy API at any endpoint ({details})")

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | list[Any] | None = None,
        root: str = API,
    ) -> tuple[int, Any]:
        async def attempt(index: int) -> tuple[int, Any]:
            url = f"{self.endpoints[index][0]}{root}{path}"
            log.debug("%s %s %s", method, url, params or "")
            try:
                async with self._http(index).request(method, url, params=params, json=body) as response:
                    raw = await response.read()
                    payload: Any = None
                    if raw:
                        try:
                            payload = await response.json(content_type=None)
                        except ValueError:
                            payload = None
                    if response.status >= 400:
                        message = ""
                        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
                            message = str(payload["error"].get("message", ""))
                        error = ApiError(response.status, message, raw.decode(errors="replace").strip())
                        if response.status == 503 and message == NOT_READY:
                            raise _TryNext(error)
                        raise error
                    return response.status, payload
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                if _unreachable(exc):
                    raise _TryNext(exc) from exc
                raise self._unavailable(index, exc) from exc

        return await self._failover(attempt)

    async def _pages(
        self, path: str, key: str, params: dict[str, str] | None = None, root: str = API
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        query = dict(params or {})
        while True:
            _, payload = await self._request("GET", path, params=query, root=root)
            payload = payload if isinstance(payload, dict) else {}
            items.extend(i for i in payload.get(key) or [] if isinstance(i, dict))
            token = payload.get("nextPageToken")
            if not token:
                return items
            query["nextPageToken"] = token

    async def machines(self) -> list[ApiMachine]:
        return [decode_machine(m) for m in await self._pages("/machines", "machines")]

    async def units(self) -> list[ApiUnit]:
        return [decode_unit(u) for u in await self._pages("/units", "units")]

    async def unit(self, name: str) -> ApiUnit | None:
        try:
            _, payload = await self._request("GET", f"/units/{quote(name, safe='')}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return decode_unit(payload if isinstance(payload, dict) else {})

    async def create_unit(self, name: str, options: Sequence[UnitOption], desired: DesiredState | None = None) -> None:
        body: dict[str, Any] = {"name": name, "options": _options(options)}
        if desired is not None:
            body["desiredState"] = desired.value
        await self._request("PUT", f"/units/{quote(name, safe='')}", body=body)

    async def set_desired(self, name: str, desired: DesiredState) -> None:
        await self._request("PUT", f"/units/{quote(name, safe='')}", body={"name": name, "desiredState": desired.value})

    async def destroy(self, name: str) -> bool:
        try:
            await self._request("DELETE", f"/units/{quote(name, safe='')}")
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def states(self, *, unit: str = "", machine: str = "") -> list[ApiUnitState]:
        params = {}
        if unit:
            params["unitName"] = unit
        if machine:
            params["machineID"] = machine
        return [decode_state(s) for s in await self._pages("/state", "states", params)]

    async def state(self, name: str) -> ApiUnitState | None:
        try:
            _, payload = await self._request("GET", f"/state/{quote(name, safe='')}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return decode_state(payload if isinstance(payload, dict) else {})

    async def set_metadata(self, machine: str, values: Mapping[str, str], removed: Sequence[str] = ()) -> None:
        """Set dynamic metadata of ``machine`` (``PATCH /machines``), and remove the keys ``removed``."""
        ops: list[dict[str, Any]] = [
            {"op": "replace", "path": f"/{machine}/metadata/{key}", "value": {"value": value}}
            for key, value in values.items()
        ]
        ops += [{"op": "remove", "path": f"/{machine}/metadata/{key}"} for key in removed]
        await self._request("PATCH", "/machines", body=ops)

    async def plan(self, units: Sequence[tuple[str, Sequence[UnitOption] | None]]) -> ApiPlan:
        """fleetpy's ``POST /fleetpy/v1/plan``: where units would run and why (``api/plan.py``); units given
        without options are the cluster's."""
        body = {
            "units": [
                {"name": name} if options is None else {"name": name, "options": _options(options)}
                for name, options in units
            ]
        }
        _, payload = await self._request("POST", "/plan", body=body, root=FLEETPY_API)
        return decode_plan(payload if isinstance(payload, dict) else {})

    async def watch_errors(self) -> list[ApiWatchError]:
        """fleetpy's own endpoint: files of watched directories that are not applied, and why."""
        return [
            ApiWatchError(
                file=_s(e, "file"),
                directory=_s(e, "directory"),
                machine=_s(e, "machineID"),
                owner=_s(e, "owner"),
                message=_s(e, "message"),
            )
            for e in await self._pages("/watch-errors", "watchErrors", root=FLEETPY_API)
        ]

    async def unit_output(
        self, name: str, kind: str, *, lines: int = 10, follow: bool = False, output: str = "short", machine: str = ""
    ) -> AsyncIterator[OutputEvent]:
        """``kind`` (``status`` or ``journal``) of a unit from the machines that run it, as it streams in.
        A followed journal has no overall time limit; connecting and each answer still have the request timeout
        until the stream has started."""
        params = {"lines": str(lines), "output": output}
        if follow:
            params["follow"] = "true"
        if machine:
            params["machineID"] = machine
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_connect=self.timeout)
        method = "POST" if kind == "restart" else "GET"

        async def connect(index: int) -> aiohttp.ClientResponse:
            url = f"{self.endpoints[index][0]}{FLEETPY_API}/units/{quote(name, safe='')}/{kind}"
            try:
                response = await self._http(index).request(method, url, params=params, timeout=timeout)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                if _unreachable(exc):
                    raise _TryNext(exc) from exc
                raise self._unavailable(index, exc) from exc
            if response.status >= 400:
                async with response:
                    raw = await response.read()
                message = ""
                try:
                    payload = json.loads(raw)
                    message = str(payload["error"]["message"])
                except (ValueError, KeyError, TypeError):
                    pass
                error = ApiError(response.status, message, raw.decode(errors="replace").strip())
                if response.status == 503 and message == NOT_READY:
                    raise _TryNext(error)
                raise error
            return response

        response = await self._failover(connect)
        try:
            async with response:
                async for line in response.content:
                    if not line.strip():
                        continue  # the server's heartbeat
                    event = json.loads(line)
                    code = event.get("exitCode")
                    yield OutputEvent(
                        machine=_s(event, "machineID"),
                        output=_s(event, "output"),
                        code=int(code) if code is not None else None,
                        error=_s(event, "error"),
                    )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._unavailable(self._current, exc) from exc
