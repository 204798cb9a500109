"""``POST /fleetpy/v1/units``: many units in one request, each as ``PUT /fleet/v1/units/<name>`` would write it.

What a batch writes is compared with what the same requests made one by one with PUT write under another key
prefix: the same keys with the same values. A refused batch writes nothing, checked on etcd's revision, so this
module has an etcd of its own (a daemon of another module winding down on the shared etcd could move it).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fleetpy.api.app import MAX_REQUEST, make_app
from fleetpy.api.batch import MAX_UNITS
from fleetpy.devcluster import EtcdServer
from fleetpy.keys import Keys
from fleetpy.model import DesiredState
from fleetpy.registry.etcd import EtcdClient
from fleetpy.registry.ops import MAX_TXN_BYTES, MAX_TXN_OPS
from fleetpy.registry.store import EtcdRegistry
from tests.api.conftest import Api, Reply, hash_of, options_of
from tests.support import etcd_server

BATCH = "/fleetpy/v1/units"
HELLO = "[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/sleep 100\n"
OTHER = "[Unit]\nDescription=Other\n\n[Service]\nExecStart=/bin/sleep 200\n"
GLOBAL = "[Service]\nExecStart=/bin/sleep 100\n\n[X-Fleet]\nGlobal=true\n"
TEMPLATE = "[Service]\nExecStart=/bin/echo %i\n"
NOTHING = {"created": 0, "replaced": 0, "updated": 0, "unchanged": 0}


@pytest.fixture(scope="module")
def etcd(workdir: str) -> Iterator[EtcdServer]:
    """This module's own etcd (it replaces the session's for the ``client`` fixture)."""
    with etcd_server(os.path.join(workdir, f"etcd-batch-{uuid.uuid4().hex[:8]}")) as server:
        yield server


@pytest.fixture
async def twin(client: EtcdClient) -> AsyncIterator[Api]:
    """A second app on the same etcd under a key prefix of its own, to which the same units are PUT one by one."""
    prefix = f"/twin-{uuid.uuid4().hex[:10]}"
    registry = EtcdRegistry(client, Keys(prefix))
    http: TestClient[Any, Any] = TestClient(TestServer(make_app(registry)))
    await http.start_server()
    try:
        yield Api(http, registry, client, prefix)
    finally:
        await http.close()


def unit(name: str, text: str | None = None, desired: str | None = None) -> dict[str, Any]:
    """A batch item (and, without its name, the body of the PUT that does the same)."""
    item: dict[str, Any] = {"name": name}
    if text is not None:
        item["options"] = options_of(text)
    if desired is not None:
        item["desiredState"] = desired
    return item


async def post(api: Api, units: Any) -> Reply:
    return await api.call("POST", BATCH, json={"units": units})


async def put_each(api: Api, units: list[dict[str, Any]]) -> None:
    for item in units:
        reply = await api.put(item["name"], item)
        assert reply.status in (201, 204), (item["name"], reply.raw)


async def contents(api: Api) -> dict[str, bytes]:
    """What is stored under the app's prefix, keyed without the prefix."""
    return {key[len(api.prefix) :]: value for key, value, _ in await api.stored()}


@contextlib.asynccontextmanager
async def nothing_written(api: Api) -> AsyncIterator[None]:
    before = await api.etcd.status()
    yield
    assert await api.etcd.status() == before, "a refused batch wrote to etcd"


async def refused(api: Api, body: Any, status: int = 400) -> str:
    """Post ``body`` (bytes as they are, anything else as JSON), expect ``status`` and nothing written; the message."""
    kwargs: dict[str, Any] = {"json": body}
    if isinstance(body, bytes):
        kwargs = {"data": body, "headers": {"Content-Type": "application/json"}}
    async with nothing_written(api):
        reply = await api.call("POST", BATCH, **kwargs)
    assert reply.status == status, reply.raw
    code, message = reply.error
    assert code == status
    return message


# ---------------------------------------------------------------------------------------------- accepted


async def test_a_batch_writes_what_put_writes_one_by_one_and_counts_it(api: Api, twin: Api) -> None:
    first = [
        unit("a.service", HELLO, "launched"),
        unit("b.service", HELLO),
        unit("c.service", HELLO, "loaded"),
        unit("d.service", OTHER, "launched"),
        unit("t@.service", TEMPLATE, "inactive"),
        unit("g.service", GLOBAL, "launched"),
    ]
    second = [
        unit("a.service", OTHER),  # other options, no state: replaced, inactive
        unit("b.service", OTHER, "loaded"),  # other options and a state: replaced with that state
        unit("c.service", HELLO, "launched"),  # the same options, another state: updated
        unit("d.service", None, "loaded"),  # only a state: updated
        unit("t@.service", TEMPLATE, "inactive"),  # as stored: unchanged
        unit("g.service", None, "launched"),  # as stored: unchanged
        unit("e.service", GLOBAL),  # new: created, inactive
    ]
    reply = await post(api, first)
    assert (reply.status, reply.json) == (200, {**NOTHING, "created": 6})
    assert list(reply.json) == ["created", "replaced", "updated", "unchanged"]
    await put_each(twin, first)
    assert await contents(api) == await contents(twin)

    reply = await post(api, second)
    assert (reply.status, reply.json) == (200, {"created": 1, "replaced": 2, "updated": 2, "unchanged": 2})
    await put_each(twin, second)
    stored = await contents(api)
    assert stored == await contents(twin)
    assert {key for key in stored if key.startswith("/bodies/")} == {
        f"/bodies/{hash_of(text)}" for text in (HELLO, OTHER, GLOBAL, TEMPLATE)
    }
    views = {name: await api.registry.get_unit(f"{name}.service") for name in "abcdeg"}
    assert {name: (v.record.hash, v.record.desired) for name, v in views.items() if v is not None} == {
        "a": (hash_of(OTHER), DesiredState.INACTIVE),
        "b": (hash_of(OTHER), DesiredState.LOADED),
        "c": (hash_of(HELLO), DesiredState.LAUNCHED),
        "d": (hash_of(OTHER), DesiredState.LOADED),
        "e": (hash_of(GLOBAL), DesiredState.INACTIVE),
        "g": (hash_of(GLOBAL), DesiredState.LAUNCHED),
    }


async def test_the_same_batch_again_is_unchanged_and_writes_nothing(api: Api) -> None:
    batch = [unit("a.service", HELLO, "launched"), unit("t@.service", TEMPLATE), unit("b.service", OTHER, "loaded")]
    assert (await post(api, batch)).json == {**NOTHING, "created": 3}
    async with nothing_written(api):
        reply = await post(api, batch)
        assert (reply.status, reply.json) == (200, {**NOTHING, "unchanged": 3})
        # an existing unit named alone (PUT: 409 "must provide DesiredState") is left as it is
        assert (await post(api, [{"name": "a.service"}])).json == {**NOTHING, "unchanged": 1}
        assert (await post(api, [])).json == NOTHING


async def test_a_template_instance_can_be_launched(api: Api) -> None:
    reply = await post(api, [unit("t@.service", TEMPLATE), unit("t@1.service", TEMPLATE, "launched")])
    assert (reply.status, reply.json) == (200, {**NOTHING, "created": 2})
    view = await api.registry.get_unit("t@1.service")
    assert view is not None
    assert view.record.desired == DesiredState.LAUNCHED


# ---------------------------------------------------------------------------------------------- refused


VALID_NEW = unit("new.service", HELLO, "launched")
VALID_UPDATE = unit("old.service", None, "launched")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        pytest.param(unit("foo", HELLO), 'unit name must contain "."', id="a name without a dot"),
        pytest.param(unit("a/b.service", HELLO), "invalid character '/' in unit name", id="a slash in a name"),
        pytest.param(unit("", HELLO), "unit name cannot be empty", id="an empty name"),
        pytest.param({"options": options_of(HELLO)}, "name must be a string", id="no name"),
        pytest.param({**unit("x.service", HELLO), "name": 5}, "name must be a string", id="a name not a string"),
        pytest.param({**unit("x.service"), "options": "x"}, "options must be a list", id="options not a list"),
        pytest.param({**unit("x.service"), "options": ["x"]}, "options[0] must be an object", id="an option a string"),
        pytest.param(
            {**unit("x.service"), "options": [{"section": "Service", "name": "ExecStart", "value": 1}]},
            "options[0].value must be a string",
            id="an option's value not a string",
        ),
        pytest.param(
            unit("x.service", "[Service]\nExecStart=/x\n\n[X-Fleet]\nMachineID=abc\nGlobal=true\n"),
            "MachineID cannot be used with Global",
            id="conflicting X-Fleet options",
        ),
        pytest.param(
            {**unit("x.service"), "options": [{"section": "Service", "name": "ExecStart", "value": "x" * 2100}]},
            "line too long (max 2048 bytes)",
            id="a line too long",
        ),
        pytest.param(unit("x.service", HELLO, "bogus"), "for desired state", id="an unknown desired state"),
        pytest.param(unit("x.service", HELLO, "LAUNCHED"), "for desired state", id="a desired state in capitals"),
        pytest.param({**unit("x.service", HELLO), "desiredState": 5}, "must be a string", id="a number as state"),
        pytest.param({**unit("x.service", HELLO), "desiredState": False}, "must be a string", id="false as state"),
        pytest.param({**unit("x.service", HELLO), "desiredState": []}, "must be a string", id="a list as state"),
        pytest.param(unit("x.service"), "unit does not exist and options field empty", id="a new unit, no options"),
        pytest.param(unit("x.service", None, "launched"), "options field empty", id="a new unit, only a state"),
        pytest.param(unit("x@.service", TEMPLATE, "launched"), 'cannot activate template "x@.service"', id="template"),
        pytest.param(unit("t@.service", None, "loaded"), 'cannot activate template "t@.service"', id="template load"),
        pytest.param(
            unit("t@.service", OTHER, "launched"), 'cannot activate template "t@.service"', id="template replaced"
        ),
        pytest.param("x.service", "must be an object", id="a name instead of an object"),
        pytest.param(None, "must be an object", id="null"),
        pytest.param(unit("new.service", OTHER), "new.service appears twice in the batch", id="a name twice"),
        pytest.param(unit("old.service", None, "loaded"), "old.service appears twice", id="an update twice"),
    ],
)
async def test_one_invalid_unit_refuses_the_batch_naming_it_and_nothing_is_written(
    api: Api, bad: Any, message: str
) -> None:
    assert (await post(api, [unit("old.service", HELLO), unit("t@.service", TEMPLATE)])).status == 200
    # enough valid units before it to fill several of etcd's transactions
    before = [unit(f"u{i}.service", HELLO) for i in range(3 * MAX_TXN_OPS)]
    text = await refused(api, {"units": [*before, VALID_NEW, VALID_UPDATE, bad, unit("z.service", OTHER)]})
    assert text.startswith(f"units[{len(before) + 2}]"), text
    assert message in text


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{x", id="not JSON"),
        pytest.param(b"[]", id="an array"),
        pytest.param(b"{}", id="no units"),
        pytest.param(b'{"units":{"name":"a.service"}}', id="units an object"),
        pytest.param(b'{"units":"a.service"}', id="units a string"),
        pytest.param(b'{"units":null}', id="units null"),
        pytest.param(b"\xff\xfe{", id="not UTF-8"),
    ],
)
async def test_a_body_that_does_not_decode_is_400(api: Api, body: bytes) -> None:
    assert (await refused(api, body)).startswith("unable to decode body: ")


async def test_a_body_that_is_not_json_content_is_415(api: Api) -> None:
    async with nothing_written(api):
        reply = await api.call(
            "POST", BATCH, data=json.dumps({"units": [VALID_NEW]}), headers={"Content-Type": "text/plain"}
        )
    assert reply.error == (415, "only acceptable Content-Type is application/json")


async def test_more_than_max_units_is_400(api: Api) -> None:
    options = options_of(HELLO)
    units = [{"name": f"u{i}.service", "options": options} for i in range(MAX_UNITS + 1)]
    assert await refused(api, {"units": units}) == f"a batch holds at most {MAX_UNITS} units"


@pytest.mark.parametrize("chunked", [False, True], ids=["with a length", "chunked"])
async def test_a_body_over_the_size_limit_is_413_and_one_at_the_limit_is_read(api: Api, chunked: bool) -> None:
    def padded(size: int) -> bytes:
        start = b'{"units":[' + json.dumps(VALID_NEW).encode() + b"]"
        return start + b" " * (size - len(start) - 1) + b"}"

    async def chunks(body: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1024 * 1024):
            yield body[start : start + 1024 * 1024]

    async def send(body: bytes) -> Reply:
        data: Any = chunks(body) if chunked else body
        return await api.call("POST", BATCH, data=data, headers={"Content-Type": "application/json"})

    async with nothing_written(api):
        reply = await send(padded(MAX_REQUEST + 1))
    assert reply.status == 413, reply.raw
    assert reply.error[0] == 413
    reply = await send(padded(MAX_REQUEST))
    assert (reply.status, reply.json) == (200, {**NOTHING, "created": 1})


# ---------------------------------------------------------------------------------------------- transactions


@pytest.mark.parametrize("count", [1, MAX_TXN_OPS // 2, MAX_TXN_OPS // 2 + 1, 1000])
async def test_a_batch_is_written_in_as_few_transactions_as_etcds_limit_allows(api: Api, count: int) -> None:
    # Every unit has a body of its own: a transaction holds a unit's record and body, at most 128 operations.
    per_transaction = MAX_TXN_OPS // 2
    units = [unit(f"u{i}.service", f"[Service]\nExecStart=/bin/sleep {i}\n", "launched") for i in range(count)]
    before = await api.etcd.status()
    assert (await post(api, units)).json == {**NOTHING, "created": count}
    assert await api.etcd.status() - before == math.ceil(count / per_transaction)
    assert len(await contents(api)) == 2 * count

    before = await api.etcd.status()
    assert (await post(api, [unit(u["name"], None, "loaded") for u in units])).json == {**NOTHING, "updated": count}
    assert await api.etcd.status() - before == math.ceil(count / per_transaction)


def large(index: int, size: int) -> str:
    """A unit file of about ``size`` bytes, its own for each ``index`` (lines stay under fleet's 2,048 bytes)."""
    line = f"Environment=X={'x' * 1000}\n"
    return f"[Service]\nExecStart=/bin/sleep {index}\n" + line * (size // len(line))


async def test_large_units_are_written_in_transactions_etcd_accepts(api: Api) -> None:
    # 40 units of 40 KB: fewer than a transaction's 64, but more than etcd's request size limit (1.5 MiB)
    units = [unit(f"big{i}.service", large(i, 40_000), "launched") for i in range(40)]
    before = await api.etcd.status()
    reply = await post(api, units)
    assert (reply.status, reply.json) == (200, {**NOTHING, "created": 40}), reply.raw
    assert await api.etcd.status() - before == math.ceil(40 / (MAX_TXN_BYTES // 40_000))
    assert len(await contents(api)) == 2 * 40


async def test_a_unit_too_large_for_one_etcd_request_is_400_and_nothing_is_written(api: Api) -> None:
    units = [unit("small.service", HELLO), unit("big.service", large(0, MAX_TXN_BYTES + 2000))]
    assert (await refused(api, {"units": units})).startswith("unit big.service is too large to store")
