"""A session of fleet's Go ``fleetctl`` (its API driver) replayed against a running fleetpyd.

Go fleetctl cannot be built on these machines (``scripts/check-go-fleetctl`` needs the Go module proxy), so this
test sends the requests its API driver sends, in the order one session sends them, as FLEET-SPEC gives them:
every request carries ``?alt=json`` (§4.1) and a body is JSON with ``Content-Type: application/json`` (§4.3);
listings follow ``nextPageToken`` to the end (§4.4); a unit is created by ``PUT /units/<name>`` with its options
and no desired state, and waited for until it is ``inactive`` (§1.6, §1.3); ``start`` and ``stop`` set the desired
state and poll ``GET /units/<name>``, ``start`` then ``GET /state/<name>`` (§1.3, §1.4); ``destroy`` resolves
its arguments against the unit list and ignores a 404 (§1.4). Every answer is decoded as Go's encoding/json fills
fleet's schema structs (§4.2): a field of another JSON type makes fleetctl fail, a field it does not know is
ignored (fleetpy's ``reason``).

Where the spec does not say which request or which spelling, the test says what it chose: a unit is looked up
with the single-unit GET, a 404 meaning "absent"; bodies name the unit as well (§4.3 allows both); the page
token is form-encoded in the query (``=`` as ``%3D``); names are percent-encoded in the path (``web%401.service``),
which is the same path segment as ``web@1.service`` (RFC 3986), the spelling that reaches the server from the
other tests (yarl turns ``%40`` back into ``@`` unless the URL is marked encoded). The spec names no request
header but Content-Type, so the test sets no other (aiohttp's defaults go out). The engine and the agents are
played by the test (``tests/api/seeding``), as in test_fleetpyd_api, whose table of every endpoint row this test
does not repeat.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

from yarl import URL

from fleetpy.model import DesiredState
from fleetpy.registry.store import EtcdRegistry
from fleetpy.unit import UnitFile, UnitOption, serialize
from tests.api.conftest import V1, Http, Reply, hash_of
from tests.api.seeding import add_machine, place, report
from tests.support import wait_for

M1, M2, M3 = "4d3895379ed84e6c9c4a2d5b9b6a1f01", "595989bb0b1c4d7e9f8a6b5c4d3e2f10", "e793afb9c0d14f8e8a5a3c2b1d0e9f12"
HELLO = "[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/sleep 100\n"
TEMPLATE = "[Unit]\nDescription=Web %i\n\n[Service]\nExecStart=/bin/sleep 300\n"

# fleet's schema structs as encoding/json sees them (§4.2): JSON key → the Go field's type. A list holds the
# element type; STRING_MAP is map[string]string.
STRING_MAP = "map[string]string"
MACHINE = {"id": str, "metadata": STRING_MAP, "primaryIP": str}
UNIT_OPTION = {"name": str, "section": str, "value": str}
UNIT = {"currentState": str, "desiredState": str, "machineID": str, "name": str, "options": [UNIT_OPTION]}
UNIT_STATE = dict.fromkeys(
    ("hash", "machineID", "name", "systemdActiveState", "systemdLoadState", "systemdSubState"), str
)
PAGES = {"machines": MACHINE, "units": UNIT, "state": UNIT_STATE}  # path → item type
PAGE_KEYS = {"machines": "machines", "units": "units", "state": "states"}  # path → the page's list key
ERROR = {"error": {"code": int, "message": str}}  # googleapi's errorReply, decoded from every status ≥ 300


def go_decode(value: Any, schema: Any, where: str = "body") -> Any:
    """``value`` as json.Unmarshal fills a Go value of type ``schema``: a struct keeps the keys it has fields
    for; a JSON value of another type fails the test, as it fails fleetctl. Keys are matched exactly (Go would
    also accept another case), so a misspelt field is missing from the result."""
    if schema is str or schema is int:
        assert type(value) is schema, f"{where}: {value!r} does not decode into a Go {schema.__name__}"
        return value
    if schema == STRING_MAP:
        assert isinstance(value, dict), f"{where}: {value!r} is not a JSON object"
        assert all(isinstance(v, str) for v in value.values()), f"{where}: {value!r} is not a map of strings"
        return value
    if isinstance(schema, list):
        assert isinstance(value, list), f"{where}: {value!r} is not a JSON array"
        return [go_decode(item, schema[0], f"{where}[{i}]") for i, item in enumerate(value)]
    assert isinstance(value, dict), f"{where}: {value!r} is not a JSON object"
    return {key: go_decode(item, schema[key], f"{where}.{key}") for key, item in value.items() if key in schema}


def go_options(text: str) -> list[dict[str, str]]:
    """A unit's options as fleetctl sends them: file order, each UnitOption's keys in Go's field order."""
    return [{"name": o.name, "section": o.section, "value": o.value} for o in UnitFile.from_text(text).options]


def path(collection: str, name: str) -> str:
    return f"{collection}/{quote(name, safe='')}"


class GoFleetctl:
    """The HTTP requests of fleetctl's API driver, sent byte for byte as written (no normalising of the URL)."""

    def __init__(self, http: Http) -> None:
        self.session = http.session

    async def send(self, method: str, where: str, body: dict[str, Any] | None = None, *, token: str = "") -> Reply:
        query = urlencode([("alt", "json"), *([("nextPageToken", token)] if token else [])])
        url = URL(f"http://fleetpyd{V1}/{where}?{query}", encoded=True)
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        async with self.session.request(method, url, data=data, headers=headers) as response:
            return Reply(response.status, await response.read(), response.headers)

    async def ok(self, method: str, where: str, status: int, body: dict[str, Any] | None = None) -> None:
        """A write fleetctl checks only for its status (googleapi.CheckResponse); fleet sends no body."""
        reply = await self.send(method, where, body)
        assert (reply.status, reply.raw) == (status, b""), (method, where, reply)

    async def error(self, method: str, where: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
        """An error answer, decoded as googleapi decodes it: (status, message)."""
        reply = await self.send(method, where, body)
        assert reply.status >= 300, (method, where, reply)
        decoded = go_decode(reply.json, ERROR)
        assert decoded["error"]["code"] == reply.status, reply
        return reply.status, decoded["error"]["message"]

    async def unit(self, name: str) -> dict[str, Any] | None:
        """``Units.Get``; fleetctl reads a 404 as "no such unit"."""
        reply = await self.send("GET", path("units", name))
        if reply.status == 404:
            assert go_decode(reply.json, ERROR) == {"error": {"code": 404, "message": "unit does not exist"}}
            return None
        assert reply.status == 200, reply
        return dict(go_decode(reply.json, UNIT))

    async def state(self, name: str) -> dict[str, Any]:
        reply = await self.send("GET", path("state", name))
        assert reply.status == 200, reply
        return dict(go_decode(reply.json, UNIT_STATE))

    async def wait_unit(self, name: str, current: str) -> dict[str, Any]:
        """fleetctl's wait: ``GET /units/<name>`` every 250 ms until the unit's current state is ``current``."""

        async def reached() -> dict[str, Any] | None:
            unit = await self.unit(name)
            return unit if unit is not None and unit.get("currentState") == current else None

        return await wait_for(reached, timeout=10, interval=0.25, what=f"{name} to be {current}")

    async def list(self, collection: str) -> tuple[list[dict[str, Any]], int]:
        """A listing as fleetctl reads it, page after page while a ``nextPageToken`` comes: (items, pages)."""
        key = PAGE_KEYS[collection]
        items: list[dict[str, Any]] = []
        pages, token = 0, ""
        while True:
            reply = await self.send("GET", collection, token=token)
            assert reply.status == 200, reply
            page = go_decode(reply.json, {key: [PAGES[collection]], "nextPageToken": str})
            items += page.get(key, [])
            pages += 1
            token = page.get("nextPageToken", "")
            if not token:
                return items, pages


async def test_a_go_fleetctl_session_list_submit_start_stop_cat_destroy(fleetpyd: Http, registry: EtcdRegistry) -> None:
    """The fleetpyd fixture's page size is 2, so a listing of three items takes a page token. A listing that
    fills its pages exactly may end with a token and an empty page ``{}`` (fleet's behaviour, which §9.8 allows
    dropping); fleetctl follows it either way, so only the three-item listings count their pages."""
    go = GoFleetctl(fleetpyd)
    await add_machine(registry, M1, "10.0.0.1", {"region": "us-east", "disk": "ssd"})
    await add_machine(registry, M2, "10.0.0.2")
    await add_machine(registry, M3)

    # fleetctl list-machines
    machines, pages = await go.list("machines")
    assert machines == [
        {"id": M1, "metadata": {"disk": "ssd", "region": "us-east"}, "primaryIP": "10.0.0.1"},
        {"id": M2, "primaryIP": "10.0.0.2"},
        {"id": M3},
    ]
    assert pages == 2

    # fleetctl submit hello.service web@.service: look up, create with options only, wait for inactive
    for name, text in (("hello.service", HELLO), ("web@.service", TEMPLATE)):
        assert await go.unit(name) is None
        await go.ok("PUT", path("units", name), 201, {"name": name, "options": go_options(text)})
        assert await go.wait_unit(name, "inactive") == {
            "currentState": "inactive",
            "desiredState": "inactive",
            "name": name,
            "options": go_options(text),
        }

    # fleetctl list-unit-files
    units, _ = await go.list("units")
    assert [(u["name"], u["desiredState"], u["currentState"]) for u in units] == [
        ("hello.service", "inactive", "inactive"),
        ("web@.service", "inactive", "inactive"),
    ]
    await go.list("machines")  # for the TARGET column, once per invocation (§1.1)

    # fleetctl start web@1.service hello.service
    # create what is missing: the instance from the template in the cluster, with the template's options (§1.6)
    assert await go.unit("web@1.service") is None
    template = await go.unit("web@.service")
    assert template is not None
    await go.ok("PUT", path("units", "web@1.service"), 201, {"name": "web@1.service", "options": template["options"]})
    await go.wait_unit("web@1.service", "inactive")
    hello = await go.unit("hello.service")
    assert hello is not None
    assert hello["desiredState"] == "inactive"
    # every unit not launched yet gets its desired state
    for name in ("web@1.service", "hello.service"):
        await go.ok("PUT", path("units", name), 204, {"desiredState": "launched", "name": name})
    # the engine places them, the agents start them and report systemd's states
    placed = {"hello.service": (M1, hash_of(HELLO)), "web@1.service": (M2, hash_of(TEMPLATE))}
    for name, (machine, _) in placed.items():
        await place(registry, name, machine)
        await report(registry, machine, name)
    # the waits: the current state, the machine list for "Unit X launched on ...", then systemd's state (§1.3)
    for name, (machine, _) in placed.items():
        unit = await go.wait_unit(name, "launched")
        assert (unit["desiredState"], unit["machineID"]) == ("launched", machine)
    await go.list("machines")
    for name, (machine, unit_hash) in placed.items():
        assert await go.state(name) == {
            "hash": unit_hash,  # an instance has its template's content, so its hash (§1.6)
            "machineID": machine,
            "name": name,
            "systemdActiveState": "active",
            "systemdLoadState": "loaded",
            "systemdSubState": "running",
        }

    # fleetctl list-units: one row per published state
    states, _ = await go.list("state")
    assert [(s["name"], s["machineID"], s["systemdActiveState"], s["systemdSubState"]) for s in states] == [
        ("hello.service", M1, "active", "running"),
        ("web@1.service", M2, "active", "running"),
    ]
    await go.list("machines")

    # fleetctl cat hello.service: fleetctl prints the options in fleet's canonical form (§2.6)
    hello = await go.unit("hello.service")
    assert hello is not None
    assert serialize(UnitOption(o["section"], o["name"], o["value"]) for o in hello["options"]) == HELLO

    # fleetctl stop web@1.service: resolve against the unit list (three units, two pages), set loaded, wait
    units, pages = await go.list("units")
    assert [(u["name"], u.get("machineID", "")) for u in units] == [
        ("hello.service", M1),
        ("web@.service", ""),
        ("web@1.service", M2),
    ]
    assert pages == 2
    await go.ok("PUT", path("units", "web@1.service"), 204, {"desiredState": "loaded", "name": "web@1.service"})
    await report(registry, M2, "web@1.service", achieved=DesiredState.LOADED, active="inactive", sub="dead")
    await go.wait_unit("web@1.service", "loaded")

    # fleetctl destroy web@1.service web@.service hello.service
    units, _ = await go.list("units")
    assert len(units) == 3
    for name in ("web@1.service", "web@.service", "hello.service"):
        await go.ok("DELETE", path("units", name), 204)
    assert await go.list("units") == ([], 1)

    # what fleetctl meets when another session got there first: destroy's 404 (ignored), cat's "not found",
    # and start's desired state for a unit destroyed after its lookup
    assert await go.error("DELETE", path("units", "hello.service")) == (404, "unit does not exist")
    assert await go.unit("hello.service") is None
    assert await go.error(
        "PUT", path("units", "hello.service"), {"desiredState": "launched", "name": "hello.service"}
    ) == (409, "unit does not exist and options field empty")
