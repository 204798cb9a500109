"""Bad input, thousands of times: the unit parser, unit names and every API endpoint's body and query, driven by
hypothesis against the API app in-process on a real etcd (2,000 examples per target, seconds each).

What must hold for every request: an answer below 500; a refusal (4xx) has fleet's JSON error body with its own
status as ``code``; and a refused request wrote nothing to etcd (the store's revision did not move). Bodies over
the size limit are refused with 413 before anything is read into a handler.

The examples run on an event loop of this module (the tests are synchronous, so hypothesis drives them
directly), against one app and one etcd client that all examples share.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from fleetpy.api.app import MAX_BODY, ApiSettings, make_app
from fleetpy.devcluster import EtcdServer, free_port
from fleetpy.errors import InvalidUnit
from fleetpy.keys import Keys
from fleetpy.registry.etcd import EtcdClient
from fleetpy.registry.store import EtcdRegistry
from fleetpy.systemd.unitdir import UnitDirectory
from fleetpy.unit import UNIT_TYPES, UnitFile, validate_name
from tests.api.conftest import options_of
from tests.support import etcd_server

EXAMPLES = 2000
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
SEEDED = "seeded.service"


@dataclass
class Fuzz:
    loop: asyncio.AbstractEventLoop
    http: aiohttp.ClientSession
    base: str
    etcd: EtcdClient
    prefix: str
    revision: int = 0
    statuses: Counter[int] = field(default_factory=Counter)

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def request(
        self, method: str, path: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> int:
        """Send one request (``path`` exactly as given, percent-escapes and all) and check the invariants;
        the status."""
        return self.call(method, path, data=data, headers=headers)[0]

    def call(
        self, method: str, path: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """``request``, answering the status and the body."""
        status, raw = self.run(self._request(method, path, data, headers or {}))
        return int(status), bytes(raw)

    async def _request(self, method: str, path: str, data: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        url = URL(self.base + path, encoded=True)
        async with self.http.request(method, url, data=data, headers=headers) as response:
            raw = await response.read()
            status = response.status
        self.statuses[status] += 1
        assert status < 500, f"{method} {path} {data[:300] if data else b''!r} → {status}: {raw[:500]!r}"
        revision = await self.etcd.status()
        if status >= 400 and method != "HEAD":  # a HEAD answer has no body
            body = json.loads(raw)
            assert list(body) == ["error"], raw
            assert body["error"]["code"] == status, raw
            assert isinstance(body["error"]["message"], str), raw
            assert revision == self.revision, f"{method} {path} was refused with {status} but wrote to etcd"
        self.revision = revision
        return status, raw


@pytest.fixture(scope="module")
def fuzz_etcd(workdir: str) -> Iterator[EtcdServer]:
    """An etcd of the fuzz tests' own: "nothing was written" is checked on etcd's revision, which a daemon of
    another test module still winding down on the shared etcd could move."""
    with etcd_server(os.path.join(workdir, f"etcd-fuzz-{uuid.uuid4().hex[:8]}")) as server:
        yield server


@pytest.fixture(scope="module")
def fuzz(fuzz_etcd: EtcdServer) -> Iterator[Fuzz]:
    etcd = fuzz_etcd
    loop = asyncio.new_event_loop()
    prefix = f"/fuzz-{uuid.uuid4().hex[:8]}"

    async def start() -> tuple[web.AppRunner, aiohttp.ClientSession, str, EtcdClient]:
        client = EtcdClient([etcd.endpoint], timeout=5)
        registry = EtcdRegistry(client, Keys(prefix))
        from fleetpy.model import DesiredState, UnitRecord

        unit = UnitFile.from_text("[Service]\nExecStart=/bin/sleep 100\n")
        await registry.create_unit(UnitRecord(SEEDED, unit.hash, DesiredState.INACTIVE), unit.text)
        runner = web.AppRunner(make_app(registry, ApiSettings(token_limit=3)), access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner, aiohttp.ClientSession(), f"http://127.0.0.1:{port}", client

    runner, http, base, client = loop.run_until_complete(start())
    fuzz = Fuzz(loop, http, base, client, prefix)
    fuzz.revision = fuzz.run(client.status())
    try:
        yield fuzz
    finally:

        async def stop() -> None:
            await http.close()
            await runner.cleanup()
            await client.close()

        loop.run_until_complete(stop())
        loop.close()


def counted(figure: Callable[[str, object], None], what: str, count: int, fuzz: Fuzz | None = None) -> None:
    figure(f"{what}: examples", count)
    if fuzz is not None:
        figure(f"{what}: statuses", dict(sorted(fuzz.statuses.items())))
        figure(f"{what}: 5xx", sum(n for s, n in fuzz.statuses.items() if s >= 500))
        fuzz.statuses.clear()
    assert count >= EXAMPLES


# ---------------------------------------------------------------------------------------------- strategies

json_leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
XFLEET = ["MachineID", "MachineOf", "MachineMetadata", "Conflicts", "Global", "Replaces", "X-ConditionMachineID"]
option_values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["a=~(", "a=~.*", "cores>=x", "k!=", "=v", "true", "%n", "%i", "*", "../x.service", "\x00"]),
)
options = st.lists(
    st.fixed_dictionaries(
        {
            "section": st.sampled_from(["Unit", "Service", "X-Fleet", "Install", ""]) | st.text(max_size=8),
            "name": st.sampled_from(["ExecStart", "Description", *XFLEET]) | st.text(max_size=12),
            "value": option_values,
        }
    )
    | json_values,
    max_size=6,
)
states = st.sampled_from(["inactive", "loaded", "launched", "", "LAUNCHED", "running"]) | json_values
unit_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={"name": st.text(max_size=20) | json_values, "desiredState": states, "options": options | json_values},
    ),
)
names = st.one_of(
    st.sampled_from(
        [
            "../x.service",
            "..",
            ".",
            "/",
            "a/b.service",
            "x.service/..",
            "\x00.service",
            "a\x00b.service",
            ".service",
            "é.service",
            "日本.service",
            "a" * 300 + ".service",
            "%2e%2e%2fx.service",
            "foo@.service",
            "foo@bar.service",
            "con\nflict.service",
            "a b.service",
            "-rf.service",
            "--help.service",
            "$(id).service",
        ]
    ),
    st.text(max_size=40),
    st.builds(lambda stem, kind: f"{stem}.{kind}", st.text(max_size=30), st.sampled_from([*UNIT_TYPES, "", "exe"])),
)
query_keys = st.sampled_from(["nextPageToken", "machineID", "unitName", "lines", "follow", "output", "alt"])
queries = st.lists(st.tuples(query_keys | st.text(max_size=6), st.text(max_size=40)), max_size=4)


def encode_query(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)


# ---------------------------------------------------------------------------------------------- the pure core


def test_the_unit_parser_refuses_with_invalid_unit_and_nothing_else(figure) -> None:
    seen = Counter[str]()
    lines = st.one_of(
        st.text(max_size=60),
        st.sampled_from(["[Unit]", "[Service]", "[X-Fleet]", "[", "]", "[]", "\\", "=", "#c", ";c", "a=b\\"]),
        st.builds(
            lambda k, v: f"{k}={v}", st.sampled_from(["ExecStart", *XFLEET]) | st.text(max_size=8), option_values
        ),
    )

    @FUZZ
    @given(st.lists(lines, max_size=12).map("\n".join) | st.text(max_size=400))
    def parse(text: str) -> None:
        seen["examples"] += 1
        try:
            unit = UnitFile.from_text(text)
        except InvalidUnit:
            seen["refused"] += 1
            return
        assert len(unit.hash) == 40
        assert UnitFile.from_options(unit.options).hash == unit.hash, "the options make the same unit"

    parse()
    figure("refused as invalid", seen["refused"])
    counted(figure, "unit parser", seen["examples"])


def test_unit_names_are_refused_or_safe_as_file_names(figure, tmp_path) -> None:
    directory = UnitDirectory(str(tmp_path))
    seen = Counter[str]()

    @FUZZ
    @given(names)
    def check(name: str) -> None:
        seen["examples"] += 1
        try:
            validate_name(name)
        except InvalidUnit:
            seen["refused"] += 1
            with pytest.raises(InvalidUnit):
                directory.path_of(name)
            return
        assert "/" not in name
        assert "\x00" not in name
        assert name not in (".", "..")
        assert len(name.encode()) <= 256
        assert os.path.dirname(directory.path_of(name)) == directory.path

    check()
    figure("refused", seen["refused"])
    counted(figure, "unit names", seen["examples"])


# ---------------------------------------------------------------------------------------------- the API


def test_unit_names_in_the_api(fuzz: Fuzz, figure) -> None:
    seen = Counter[str]()
    body = json.dumps({"options": [{"section": "Service", "name": "ExecStart", "value": "/bin/true"}]}).encode()
    headers = {"Content-Type": "application/json"}

    @FUZZ
    @given(names, st.sampled_from(["GET", "PUT", "DELETE"]), st.sampled_from(["units", "state"]))
    def call(name: str, method: str, collection: str) -> None:
        seen["examples"] += 1
        status = fuzz.request(method, f"/fleet/v1/{collection}/{quote(name, safe='')}", data=body, headers=headers)
        if collection == "units" and method == "PUT" and status < 300:
            validate_name(name)  # only a valid name may be created
            seen["created"] += 1

    call()
    figure("valid names created", seen["created"])
    counted(figure, "unit names in the API", seen["examples"], fuzz)


def test_unit_names_on_the_relay_paths(fuzz: Fuzz, figure) -> None:
    seen = Counter[str]()
    kinds = st.sampled_from([("GET", "status"), ("GET", "journal"), ("POST", "restart"), ("POST", "status")])

    @FUZZ
    @given(names | st.just(SEEDED), kinds)
    def call(name: str, kind: tuple[str, str]) -> None:
        seen["examples"] += 1
        method, what = kind
        status = fuzz.request(method, f"/fleetpy/v1/units/{quote(name, safe='')}/{what}")
        try:
            validate_name(name)
        except InvalidUnit:
            assert status in (400, 404, 405), status  # refused before the registry is asked, or no such route
            return
        seen["valid"] += 1
        assert status in (404, 405, 409), status  # no such unit, no such route, or a unit on no machine

    call()
    figure("valid names", seen["valid"])
    counted(figure, "unit names on the relay paths", seen["examples"], fuzz)


def test_unit_bodies(fuzz: Fuzz, figure) -> None:
    seen = Counter[str]()
    content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", ""])

    @FUZZ
    @given(
        st.one_of(unit_bodies.map(lambda b: json.dumps(b).encode()), st.binary(max_size=200)),
        content_types,
        st.sampled_from(["fuzz.service", "fuzz@.service", "fuzz@1.service", SEEDED]),
    )
    def put(raw: bytes, content_type: str, name: str) -> None:
        seen["examples"] += 1
        headers = {"Content-Type": content_type} if content_type else {}
        fuzz.request("PUT", f"/fleet/v1/units/{name}", data=raw, headers=headers)

    put()
    counted(figure, "PUT /fleet/v1/units", seen["examples"], fuzz)


def test_machine_metadata_patches(fuzz: Fuzz, figure) -> None:
    seen = Counter[str]()
    operation = st.fixed_dictionaries(
        {},
        optional={
            "op": st.sampled_from(["add", "remove", "replace", "ADD", ""]) | json_values,
            "path": st.sampled_from(["/m1/metadata/k", "/m1/metadata/", "/../metadata/k", "/m1/x/k"])
            | st.text(max_size=30)
            | json_values,
            "value": st.text(max_size=10) | st.fixed_dictionaries({"value": json_values}) | json_values,
        },
    )

    @FUZZ
    @given(st.one_of(st.lists(operation | json_values, max_size=4).map(json.dumps), json_values.map(json.dumps),
                     st.text(max_size=50)))  # fmt: skip
    def patch(text: str) -> None:
        seen["examples"] += 1
        fuzz.request("PATCH", "/fleet/v1/machines", data=text.encode(), headers={"Content-Type": "application/json"})

    patch()
    counted(figure, "PATCH /fleet/v1/machines", seen["examples"], fuzz)


def test_plans(fuzz: Fuzz, figure) -> None:
    seen = Counter[str]()
    planned = st.one_of(
        st.fixed_dictionaries(
            {"name": st.sampled_from(["p.service", "p@1.service", SEEDED, "g.service"]), "options": options}
        ),
        st.fixed_dictionaries({}, optional={"name": names | json_values, "options": options | json_values}),
    )

    @FUZZ
    @given(
        st.one_of(
            st.fixed_dictionaries({"units": st.lists(planned, min_size=1, max_size=3)}),
            st.fixed_dictionaries({"units": st.lists(planned | json_values, max_size=3) | json_values}),
            json_values,
        )
    )
    def plan(body: Any) -> None:
        seen["examples"] += 1
        status = fuzz.request(
            "POST", "/fleetpy/v1/plan", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        assert status in (200, 400, 404, 409, 415), status

    plan()
    counted(figure, "POST /fleetpy/v1/plan", seen["examples"], fuzz)


def test_batches(fuzz: Fuzz, figure) -> None:
    seen = Counter[str]()
    texts = ["[Service]\nExecStart=/bin/true\n", "[Service]\nExecStart=/bin/false\n", "[X-Fleet]\nGlobal=true\n"]
    valid_options = st.sampled_from(texts).map(options_of)
    pool = st.sampled_from(["b1.service", "b2.service", "b@.service", "b@1.service", SEEDED])
    well_formed = st.fixed_dictionaries(
        {"name": pool},
        optional={"options": valid_options, "desiredState": st.sampled_from(["inactive", "loaded", "launched", ""])},
    )
    # JSON leaves, not nested values, inside the items: generating nested ones in lists doubled the target's time
    item = st.one_of(
        well_formed,
        st.fixed_dictionaries({"name": pool}, optional={"options": valid_options | options, "desiredState": states}),
        st.fixed_dictionaries(
            {}, optional={"name": names | json_leaves, "options": options | json_leaves, "desiredState": states}
        ),
        json_leaves,
    )

    @FUZZ
    @given(
        st.one_of(
            st.fixed_dictionaries({"units": st.lists(well_formed, min_size=1, max_size=4)}),
            st.fixed_dictionaries({"units": st.lists(item, max_size=4) | json_leaves}),
            json_values,
        ).map(lambda body: json.dumps(body).encode())
        | st.binary(max_size=100)
    )
    def post(raw: bytes) -> None:
        seen["examples"] += 1
        before = fuzz.revision
        status, answer = fuzz.call("POST", "/fleetpy/v1/units", data=raw, headers={"Content-Type": "application/json"})
        assert status in (200, 400), (status, answer)
        if status == 200:
            counts = json.loads(answer)
            assert sum(counts.values()) == len(json.loads(raw)["units"]), (raw, answer)
            written = counts["created"] + counts["replaced"] + counts["updated"]
            assert (fuzz.revision > before) == (written > 0), (raw, answer)
            seen["written"] += written

    post()
    figure("units written", seen["written"])
    counted(figure, "POST /fleetpy/v1/units", seen["examples"], fuzz)


def test_queries_of_every_endpoint(fuzz: Fuzz, figure) -> None:
    seen = Counter[str]()
    paths = [
        "/fleet/v1/machines", "/fleet/v1/units", f"/fleet/v1/units/{SEEDED}", "/fleet/v1/state",
        f"/fleet/v1/state/{SEEDED}", "/fleetpy/v1/watch-errors", "/fleet/v1/discovery", "/v1-alpha/units", "/metrics",
        f"/fleetpy/v1/units/{SEEDED}/status", f"/fleetpy/v1/units/{SEEDED}/journal", "/fleetpy/v1/units/x/status",
    ]  # fmt: skip

    @FUZZ
    @given(st.sampled_from(paths), queries, st.sampled_from(["GET", "GET", "HEAD", "OPTIONS", "POST", "PROPFIND"]))
    def get(path: str, query: list[tuple[str, str]], method: str) -> None:
        seen["examples"] += 1
        fuzz.request(method, f"{path}?{encode_query(query)}" if query else path)

    get()
    counted(figure, "queries", seen["examples"], fuzz)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("PUT", "/fleet/v1/units/big.service", id="PUT a unit"),
        pytest.param("PATCH", "/fleet/v1/machines", id="PATCH machines"),
        pytest.param("POST", "/fleetpy/v1/plan", id="POST a plan"),
    ],
)
@pytest.mark.parametrize("chunked", [False, True], ids=["with a length", "chunked"])
def test_bodies_over_the_limit_are_refused_with_413(fuzz: Fuzz, method: str, path: str, chunked: bool) -> None:
    for size in (MAX_BODY + 1, 8 * MAX_BODY):
        padding = b" " * (size - 2)
        body = b"{" + padding + b"}"

        async def chunks(body: bytes = body) -> Any:
            for start in range(0, len(body), 65536):
                yield body[start : start + 65536]

        async def send(body: bytes = body) -> int:
            data: Any = chunks(body) if chunked else body
            url = URL(fuzz.base + path, encoded=True)
            async with fuzz.http.request(
                method, url, data=data, headers={"Content-Type": "application/json"}
            ) as response:
                raw = await response.read()
                assert json.loads(raw)["error"]["code"] == response.status, raw
                return response.status

        before = fuzz.run(fuzz.etcd.status())
        assert fuzz.run(send()) == 413
        assert fuzz.run(fuzz.etcd.status()) == before
