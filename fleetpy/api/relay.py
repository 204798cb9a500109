"""``GET /fleetpy/v1/units/<name>/status`` and ``.../journal``: a unit's ``systemctl status`` and journal, from
the machine that runs it, without SSH; ``POST .../restart``: ``systemctl restart`` there. These are fleetpy's
extensions of fleet's API; ``fleetpy.relay`` has the design.

Any API process can answer (a fleetpyd or the ``fleetpyd dev`` supervisor): it leaves a request for each machine
the unit is placed on and relays what their inspectors write back. The body is a stream of JSON lines, one
object per line, in this order for each machine::

    {"machineID": "<id>", "output": "<text>"}          zero or more, the command's output as it comes
    {"machineID": "<id>", "exitCode": <n>}             once, when the command ended ("error" added if it
                                                       could not run or the machine did not answer)

Without ``follow`` the machines answer one after the other (sorted by ID); with ``follow`` their lines are
interleaved as they arrive, and an empty line is sent every few seconds so that a client that went away is
noticed. When the response ends, for whatever reason, the request's lease is revoked: its keys go and every
command still running for it is stopped.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import dataclasses
import json
from typing import Any

from aiohttp import web

from fleetpy import __version__
from fleetpy.api.schema import FLEETPY_PREFIX, BadRequest
from fleetpy.errors import Conflict, FleetError, UnitNotFound
from fleetpy.model import MachineID
from fleetpy.registry.base import ApiRegistry
from fleetpy.relay import END, STARTED, BadRelayRequest, Kind, RelayRequest, decode_end

LEASE_TTL = 10  # seconds; kept alive while the response streams
ANSWER_TIMEOUT = 10.0  # a machine that has not started the command by then did not answer
HEARTBEAT = 5.0

RELAY: web.AppKey[ApiRegistry] = web.AppKey("relay-registry")

Event = dict[str, Any]


def _bool(raw: str, name: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on", "t"):
        return True
    if raw.lower() in ("", "0", "false", "no", "off", "f"):
        return False
    raise BadRequest(f"{name} must be true or false, got {raw!r}")


def parse_request(kind: Kind, name: str, query: Any) -> RelayRequest:
    try:
        lines = int(query.get("lines", "10"))
    except ValueError:
        raise BadRequest(f"lines must be a number, got {query.get('lines')!r}") from None
    request = RelayRequest(
        kind=kind,
        unit=name,
        lines=lines,
        follow=_bool(query.get("follow", ""), "follow"),
        output=query.get("output", "short"),
    )
    try:
        return request.check()
    except BadRelayRequest as exc:
        raise BadRequest(str(exc)) from None


async def _machines(registry: ApiRegistry, name: str, wanted: str) -> list[MachineID]:
    view = await registry.get_unit(name)
    if view is None:
        raise UnitNotFound("unit does not exist")
    machines = sorted(view.placements) if view.record.is_global else [m for m in [view.machine] if m is not None]
    if wanted:
        if wanted not in machines:
            raise Conflict(f"unit {name} is not placed on machine {wanted}")
        return [MachineID(wanted)]
    if not machines:
        raise Conflict(f"unit {name} is not placed on any machine")
    return machines


async def _collect(
    registry: ApiRegistry, machine: MachineID, request_id: str, revision: int, queue: asyncio.Queue[Event]
) -> None:
    """Put the replies of one machine on ``queue``, ending with its exit code (or why there is none)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        async with asyncio.timeout(ANSWER_TIMEOUT) as deadline:
            async for tail, value in registry.replies(request_id, revision + 1):
                if tail == STARTED:
                    deadline.reschedule(None)
                elif tail == END:
                    rest = decoder.decode(b"", final=True)
                    if rest:
                        await queue.put({"machineID": machine, "output": rest})
                    code, error = decode_end(value)
                    end: Event = {"machineID": machine, "exitCode": code}
                    if error:
                        end["error"] = error
                    await queue.put(end)
                    return
                else:
                    text = decoder.decode(value)
                    if text:
                        await queue.put({"machineID": machine, "output": text})
    except TimeoutError:
        error = f"machine {machine} did not answer within {ANSWER_TIMEOUT:.0f}s"
        await queue.put({"machineID": machine, "exitCode": 1, "error": error})
        return
    except FleetError as exc:
        await queue.put({"machineID": machine, "exitCode": 1, "error": str(exc)})
        return
    await queue.put({"machineID": machine, "exitCode": 1, "error": "the reply stream ended early"})


async def _keep_alive(registry: ApiRegistry, lease: int) -> None:
    while True:
        await asyncio.sleep(LEASE_TTL / 3)
        with contextlib.suppress(FleetError):
            await registry.keepalive_lease(lease)


def _line(event: Event) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


async def unit_output(request: web.Request) -> web.StreamResponse:
    registry = request.app[RELAY]
    name = request.match_info["name"]
    relay_request = parse_request(Kind(request.match_info["kind"]), name, request.query)
    machines = await _machines(registry, name, request.query.get("machineID", ""))
    lease = await registry.grant_lease(LEASE_TTL)
    try:
        opened = []
        for machine in machines:
            request_id, revision = await registry.open_request(machine, dataclasses.replace(relay_request, lease=lease))
            opened.append((machine, request_id, revision))
        response = web.StreamResponse(
            headers={"Content-Type": "application/x-ndjson", "Server": f"fleetpyd/{__version__}"}
        )
        await response.prepare(request)
        queue: asyncio.Queue[Event] = asyncio.Queue()
        async with asyncio.TaskGroup() as group:
            helpers = [group.create_task(_keep_alive(registry, lease))]
            helpers += [group.create_task(_collect(registry, *item, queue)) for item in opened]
            try:
                await _write(response, queue, machines, relay_request.follow)
            except ConnectionError:
                pass  # the client went away: stop (the lease goes below, and with it the commands)
            finally:
                for task in helpers:
                    task.cancel()
    finally:
        # Before the response ends: a client that has read it all finds the request gone from etcd.
        with contextlib.suppress(FleetError):
            await asyncio.shield(registry.revoke_lease(lease))
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


async def _next(response: web.StreamResponse, queue: asyncio.Queue[Event]) -> Event:
    """The next event; meanwhile an empty line every few seconds (a client that went away fails the write)."""
    while True:
        try:
            return await asyncio.wait_for(queue.get(), HEARTBEAT)
        except TimeoutError:
            await response.write(b"\n")


async def _write(
    response: web.StreamResponse, queue: asyncio.Queue[Event], machines: list[MachineID], follow: bool
) -> None:
    """Write the events: interleaved when following, otherwise machine after machine in ``machines`` order.
    Every machine's events end with exactly one ``exitCode``."""
    if follow:
        remaining = set(machines)
        while remaining:
            event = await _next(response, queue)
            await response.write(_line(event))
            if "exitCode" in event:
                remaining.discard(event["machineID"])
        return
    held: dict[str, list[Event]] = {m: [] for m in machines}
    for machine in machines:
        done = False
        for event in held.pop(machine):
            await response.write(_line(event))
            done = "exitCode" in event
        while not done:
            event = await _next(response, queue)
            if event["machineID"] != machine:
                held[event["machineID"]].append(event)
                continue
            await response.write(_line(event))
            done = "exitCode" in event


def add_routes(app: web.Application, registry: ApiRegistry) -> None:
    """Register the routes; call before any catch-all route."""
    app[RELAY] = registry
    app.router.add_route("GET", FLEETPY_PREFIX + "/units/{name}/{kind:status|journal}", unit_output)
    app.router.add_route("POST", FLEETPY_PREFIX + "/units/{name}/{kind:restart}", unit_output)
