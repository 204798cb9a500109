"""fleet's HTTP API v1 as an aiohttp application (FLEET-SPEC §4), with the handler quirks of §9.8 fixed.

Handlers are thin: validate, call the registry, shape the JSON. Errors become fleet's error body
``{"error": {"code": N, "message": "..."}}`` in one middleware; a request that is refused changes nothing.
Paths are served under ``/fleet/v1`` and the legacy ``/v1-alpha``.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from fleetpy import __version__
from fleetpy.api import discovery, metrics, relay, schema
from fleetpy.api.auth import ApiAuth
from fleetpy.api.schema import BadRequest
from fleetpy.errors import Conflict, FleetError, InvalidUnit, RegistryUnavailable, Unauthorized, UnitNotFound
from fleetpy.metrics import Metrics, new_metrics
from fleetpy.model import DesiredState, MachineID, UnitRecord, UnitView
from fleetpy.registry.base import ApiRegistry
from fleetpy.unit import UnitFile, UnitOption, name_info, validate_name, validate_requirements

log = logging.getLogger(__name__)

PREFIXES = ("/fleet/v1", "/v1-alpha")
MAX_BODY = 1024 * 1024  # fleet's API requests
MAX_REQUEST = 64 * 1024 * 1024  # the batch endpoint's; every handler enforces its own limit
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REGISTRY: web.AppKey[ApiRegistry] = web.AppKey("registry")
SETTINGS: web.AppKey[ApiSettings] = web.AppKey("settings")


class HttpError(Exception):
    """Answer with this status and message (for statuses that have no FleetError of their own)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ApiSettings:
    """``auth``: the credentials TCP clients must present (``api.auth``); ``None`` serves whoever connects,
    which only in-process tests and the dev cluster's private socket use. fleetpyd always passes one."""

    def __init__(
        self,
        *,
        token_limit: int = 100,
        ready: Callable[[], bool] = lambda: True,
        metrics: Metrics | None = None,
        auth: ApiAuth | None = None,
    ) -> None:
        self.token_limit = token_limit
        self.ready = ready
        self.metrics = metrics or new_metrics(process=False)
        self.auth = auth
        self.options_cache: OrderedDict[str, tuple[UnitOption, ...]] = OrderedDict()
        self.listings: dict[tuple[str, ...], tuple[float, list[Any]]] = {}


LISTING_TTL = 5.0


async def _listing(request: web.Request, key: tuple[str, ...], build: Callable[[], Awaitable[list[Any]]]) -> list[Any]:
    """The items of a paged listing. Page 1 is read afresh; the later pages of the same listing are served from
    that read for a few seconds, so following the pages of 10,000 units costs one etcd read instead of one per
    page (fleet re-read everything for every page), and the pages agree with each other."""
    settings = request.app[SETTINGS]
    number = schema.decode_token(request.query.getall("nextPageToken", []), settings.token_limit)
    now = time.monotonic()
    cached = settings.listings.get(key)
    if number > 1 and cached is not None and now - cached[0] < LISTING_TTL:
        return cached[1]
    items = await build()
    settings.listings[key] = (now, items)
    return items


# Compact, as Go's json.Marshal writes it: fleet's clients and scripts see the same bytes.
_dumps = functools.partial(json.dumps, separators=(",", ":"))


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=_dumps)


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": {"code": status, "message": message}}, status=status)


def _message(exc: BaseException) -> str:
    return str(exc.args[0]) if exc.args else ""


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    try:
        if settings.auth is not None:
            settings.auth.check(request)
    except Unauthorized as exc:
        log.info("%s %s from %s refused: %s", request.method, request.path, request.remote or "-", exc)
        refused = error_response(401, _message(exc))
        refused.headers["WWW-Authenticate"] = 'Bearer realm="fleetpy"'
        return refused
    if not settings.ready():
        return error_response(503, "fleet server unable to communicate with etcd")
    response: web.StreamResponse
    try:
        response = await handler(request)
    except BadRequest as exc:
        response = error_response(400, _message(exc))
    except InvalidUnit as exc:
        response = error_response(400, _message(exc))
    except UnitNotFound as exc:
        response = error_response(404, _message(exc))
    except Conflict as exc:
        response = error_response(409, _message(exc))
    except RegistryUnavailable as exc:
        log.warning("%s %s: %s", request.method, request.path, exc)
        response = error_response(503, f"fleet server unable to communicate with etcd: {exc}")
    except HttpError as exc:
        response = error_response(exc.status, _message(exc))
    except web.HTTPRequestEntityTooLarge as exc:
        response = error_response(413, exc.text or "request body too large")
    except web.HTTPException as exc:
        response = error_response(exc.status, "")
    except FleetError as exc:
        log.error("%s %s: %s", request.method, request.path, exc)
        response = error_response(500, _message(exc))
    response.headers["Server"] = f"fleetpyd/{__version__}"
    return response


OPTIONS_CACHE_SIZE = 20000


def remember_options(settings: ApiSettings, unit: UnitFile) -> None:
    """Keep a unit's parsed options by hash (bodies never change), e.g. right after this process wrote it."""
    cache = settings.options_cache
    cache[unit.hash] = unit.options
    cache.move_to_end(unit.hash)
    if len(cache) > OPTIONS_CACHE_SIZE:
        cache.popitem(last=False)


async def _options_of(request: web.Request, view: UnitView) -> tuple[UnitOption, ...]:
    settings = request.app[SETTINGS]
    options = settings.options_cache.get(view.record.hash)
    if options is None:
        body = await request.app[REGISTRY].get_body(view.record.hash)
        if body is None:
            return ()
        unit = UnitFile.from_text(body)
        remember_options(settings, unit)
        options = unit.options
    return options


async def _unit_json(request: web.Request, view: UnitView) -> dict[str, Any]:
    return schema.unit_json(
        name=view.record.name,
        desired=view.record.desired,
        current=view.current,
        machine=view.machine,
        options=await _options_of(request, view),
        reason=view.reason if not view.placements else "",
    )


def _method_not_allowed(message: str, status: int = 405) -> Handler:
    async def handler(_request: web.Request) -> web.StreamResponse:
        return error_response(status, message)

    return handler


async def not_found(_request: web.Request) -> web.StreamResponse:
    return error_response(404, "")


# ---------------------------------------------------------------------------------------------- machines


def _page(request: web.Request, items: Sequence[Any], key: str) -> web.Response:
    # Every value of the parameter, not ``query[...]``: two tokens are an error, and a single token is a
    # string that must not be taken for a list of one-character values.
    query = {"nextPageToken": request.query.getall("nextPageToken", [])}
    return json_response(schema.page(items, key, query, request.app[SETTINGS].token_limit))


async def list_machines(request: web.Request) -> web.StreamResponse:
    async def build() -> list[Any]:
        return [schema.machine_json(m) for m in await request.app[REGISTRY].list_machines()]

    return _page(request, await _listing(request, ("machines",), build), "machines")


# ---------------------------------------------------------------------------------------------- units


async def list_units(request: web.Request) -> web.StreamResponse:
    async def build() -> list[Any]:
        registry = request.app[REGISTRY]
        views = await registry.list_units()
        cache = request.app[SETTINGS].options_cache
        await registry.get_bodies(v.record.hash for v in views if v.record.hash not in cache)  # a few reads
        return [await _unit_json(request, v) for v in views]

    return _page(request, await _listing(request, ("units",), build), "units")


async def get_unit(request: web.Request) -> web.StreamResponse:
    view = await request.app[REGISTRY].get_unit(request.match_info["name"])
    if view is None:
        raise UnitNotFound("unit does not exist")
    return json_response(await _unit_json(request, view))


async def delete_unit(request: web.Request) -> web.StreamResponse:
    if not await request.app[REGISTRY].destroy_unit(request.match_info["name"]):
        raise UnitNotFound("unit does not exist")
    return web.Response(status=204)


async def read_body(request: web.Request, limit: int = MAX_BODY) -> bytes:
    """The request's body, refused with 413 as soon as it is known to exceed ``limit`` bytes: by its
    Content-Length, or while reading a chunked body, which says no length (never more than ``limit`` + 1 bytes
    are held)."""
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    raw = bytearray()  # appending to bytes would copy everything read so far for every chunk
    while chunk := await request.content.read(limit + 1 - len(raw)):
        raw += chunk
        if len(raw) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(raw))
    return bytes(raw)


async def _read_json(request: web.Request, limit: int = MAX_BODY) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    content_types = request.headers.getall("Content-Type", [])
    if len(content_types) != 1:
        raise HttpError(415, f"expected 1 Content-Type, got {len(content_types)}")
    if content_types[0].split(";", 1)[0].strip().lower() != "application/json":
        raise HttpError(415, "only acceptable Content-Type is application/json")
    raw = await read_body(request, limit)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"unable to decode body: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("unable to decode body: expected a JSON object")
    return body


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"unable to decode body: {key} must be a string")
    return value


def _desired(raw: str) -> DesiredState | None:
    """The requested desired state, ``None`` when empty; an unknown value is a 400 (fleet: 500 or stored)."""
    if not raw:
        return None
    try:
        return DesiredState.parse(raw)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _check_template(name: str, desired: DesiredState) -> None:
    if desired != DesiredState.INACTIVE and name_info(name).is_template:
        raise BadRequest(f'cannot activate template "{name}"')


def _unit_from_options(options: list[UnitOption]) -> UnitFile:
    # What is stored is the canonical text, in which each section's options are grouped (FLEET-SPEC §2.6).
    # A file that repeats a section header arrives with its options in file order, and fleet accepts it:
    # group them (a stable sort, so the hash is unchanged) before the round-trip check.
    first_seen = {section: i for i, section in enumerate(dict.fromkeys(o.section for o in options))}
    unit = UnitFile.from_options(sorted(options, key=lambda o: first_seen[o.section]))
    validate_requirements(unit.xfleet)
    return unit


def _record(name: str, unit: UnitFile, desired: DesiredState) -> UnitRecord:
    """The record to store for ``unit`` (whose parsed options the caller is about to write)."""
    return UnitRecord(name=name, hash=unit.hash, desired=desired, is_global=unit.is_global, requirements=unit.xfleet)


async def put_unit(request: web.Request) -> web.StreamResponse:
    registry = request.app[REGISTRY]
    url_name = request.match_info["name"]
    # fleet's order (FLEET-SPEC §4.3): decode the whole body, compare the names, validate the name.
    body = await _read_json(request)
    body_name = _string(body, "name")
    raw_desired = _string(body, "desiredState")
    options = schema.parse_options(body.get("options"))
    if body_name and body_name != url_name:
        raise BadRequest(f'name in URL "{url_name}" differs from unit name in request body "{body_name}"')
    validate_name(url_name)
    desired = _desired(raw_desired)
    existing = await registry.get_unit(url_name)

    if existing is None:
        if not options:
            raise Conflict("unit does not exist and options field empty")
        unit = _unit_from_options(options)
        state = desired or DesiredState.INACTIVE
        _check_template(url_name, state)
        if not await registry.create_unit(_record(url_name, unit, state), unit.text):
            raise Conflict(f"unit {url_name} was created by another request at the same time")
        remember_options(request.app[SETTINGS], unit)
        return web.Response(status=201)

    if options:
        unit = _unit_from_options(options)
        if unit.hash != existing.record.hash:
            state = desired or DesiredState.INACTIVE
            _check_template(url_name, state)
            await registry.replace_unit(_record(url_name, unit, state), unit.text, existing.revision)
            remember_options(request.app[SETTINGS], unit)
            return web.Response(status=201)

    if desired is None:
        raise Conflict("must provide DesiredState to update existing unit")
    _check_template(url_name, desired)
    if desired != existing.record.desired:
        record = existing.record
        updated = UnitRecord(record.name, record.hash, desired, record.is_global, record.requirements)
        await registry.set_desired(updated, existing.revision)
    return web.Response(status=204)


# ---------------------------------------------------------------------------------------------- states


async def list_states(request: web.Request) -> web.StreamResponse:
    machine = request.query.get("machineID")
    unit = request.query.get("unitName")

    async def build() -> list[Any]:
        states = await request.app[REGISTRY].list_states(MachineID(machine) if machine else None)
        return [schema.state_json(s) for s in states if not unit or s.unit == unit]

    return _page(request, await _listing(request, ("states", machine or "", unit or ""), build), "states")


async def get_state(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    states = [s for s in await request.app[REGISTRY].list_states() if s.unit == name]
    if not states:
        raise UnitNotFound("unit state does not exist")
    return json_response(schema.state_json(states[0]))


# ---------------------------------------------------------------------------------------------- watched directories


async def list_watch_errors(request: web.Request) -> web.StreamResponse:
    """fleetpy's own (not in fleet's API): the files of watched directories that are not applied, and why."""
    errors = await request.app[REGISTRY].list_watch_errors()
    return _page(request, [schema.watch_error_json(e) for e in errors], "watchErrors")


# ---------------------------------------------------------------------------------------------- the app


def make_app(registry: ApiRegistry, settings: ApiSettings | None = None) -> web.Application:
    # Handlers in other modules of fleetpy.api use this module's keys and errors: imported here, not above.
    from fleetpy.api import batch, plan
    from fleetpy.api.machines import patch_machines

    app = web.Application(middlewares=[errors_middleware], client_max_size=MAX_REQUEST)
    app[REGISTRY] = registry
    app[SETTINGS] = settings or ApiSettings()
    for prefix in PREFIXES:
        app.router.add_route("GET", f"{prefix}/discovery", discovery.get_discovery)
        app.router.add_route(
            "*", f"{prefix}/discovery", _method_not_allowed("only HTTP GET supported against this resource", 400)
        )
        app.router.add_route("GET", f"{prefix}/machines", list_machines)
        app.router.add_route("PATCH", f"{prefix}/machines", patch_machines)
        app.router.add_route(
            "*", f"{prefix}/machines", _method_not_allowed("only GET and PATCH supported against this resource")
        )
        app.router.add_route("GET", f"{prefix}/units", list_units)
        app.router.add_route("*", f"{prefix}/units", _method_not_allowed("only GET supported against this resource"))
        app.router.add_route("GET", f"{prefix}/units/{{name}}", get_unit)
        app.router.add_route("PUT", f"{prefix}/units/{{name}}", put_unit)
        app.router.add_route("DELETE", f"{prefix}/units/{{name}}", delete_unit)
        app.router.add_route(
            "*",
            f"{prefix}/units/{{name}}",
            _method_not_allowed("only GET, PUT and DELETE supported against this resource"),
        )
        app.router.add_route("GET", f"{prefix}/state", list_states)
        app.router.add_route("*", f"{prefix}/state", _method_not_allowed("only GET supported against this resource"))
        app.router.add_route("GET", f"{prefix}/state/{{name}}", get_state)
        app.router.add_route(
            "*", f"{prefix}/state/{{name}}", _method_not_allowed("only GET supported against this resource")
        )
        app.router.add_route("*", prefix, _method_not_allowed(""))
    relay.add_routes(app, registry)
    metrics.add_routes(app, registry, app[SETTINGS].metrics)
    plan.add_routes(app)
    app.router.add_route("POST", f"{schema.FLEETPY_PREFIX}/units", batch.post_units)
    app.router.add_route("GET", f"{schema.FLEETPY_PREFIX}/watch-errors", list_watch_errors)
    app.router.add_route(
        "*", f"{schema.FLEETPY_PREFIX}/watch-errors", _method_not_allowed("only GET supported against this resource")
    )
    app.router.add_route("*", "/", _method_not_allowed(""))
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
