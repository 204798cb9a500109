"""``PATCH /machines``: dynamic metadata as fleet's handler takes it (FLEET-SPEC §4.3), both value forms (§9.8).

Every refused request is checked to have written nothing under the test's prefix.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fleetpy.api.app import ApiSettings, make_app
from fleetpy.devcluster import free_port
from fleetpy.keys import Keys
from fleetpy.registry.etcd import EtcdClient
from fleetpy.registry.store import EtcdRegistry
from tests.api.conftest import V1, Api
from tests.api.seeding import add_machine

PATH = "/m1/metadata/region"


def op(kind: str, path: str = PATH, value: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"op": kind, "path": path}
    if value is not None:
        body["value"] = value
    return body


async def metadata(api: Api, machine: str = "m1") -> dict[str, str]:
    for listed in (await api.get(V1 + "/machines")).json.get("machines", []):
        if listed["id"] == machine:
            return dict(listed.get("metadata", {}))
    raise AssertionError(f"{machine} is not listed")


async def patch(api: Api, body: Any, *, base: str = V1) -> tuple[int, bytes, str]:
    reply = await api.call("PATCH", base + "/machines", json=body)
    return reply.status, reply.raw, reply.headers.get("Content-Type", "")


@pytest.mark.parametrize("base", ["/fleet/v1", "/v1-alpha"])
@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"value": "eu"}, id="an object as fleet wants it"),
        pytest.param({"Value": "eu"}, id="the inner key in any case"),
        pytest.param("eu", id="a plain string as fleet's documentation shows it"),
    ],
)
async def test_add_sets_a_key_and_answers_204_with_no_body(api: Api, base: str, value: Any) -> None:
    await add_machine(api.registry, "m1", metadata={"region": "us", "disk": "ssd"})
    assert await patch(api, [op("add", value=value)], base=base) == (204, b"", "application/json")
    assert await metadata(api) == {"disk": "ssd", "region": "eu"}


async def test_keys_of_an_operation_match_in_any_case(api: Api) -> None:
    await add_machine(api.registry, "m1")
    body = [{"OP": "replace", "Path": PATH, "VALUE": {"VALUE": "eu"}}]
    assert (await patch(api, body))[0] == 204
    assert await metadata(api) == {"region": "eu"}


async def test_remove_hides_a_configured_key_and_add_brings_it_back(api: Api) -> None:
    await add_machine(api.registry, "m1", metadata={"region": "us", "disk": "ssd"})
    assert (await patch(api, [op("remove")]))[0] == 204
    assert await metadata(api) == {"disk": "ssd"}
    kv = await api.etcd.get(Keys(api.prefix).machine_meta("m1", "region"))
    assert kv is not None
    assert kv.value == b"", "remove stores a tombstone that hides the configured value"
    assert (await patch(api, [op("add", value="ap")]))[0] == 204
    assert await metadata(api) == {"disk": "ssd", "region": "ap"}


async def test_operations_apply_in_order_and_the_last_on_a_key_wins(api: Api) -> None:
    await add_machine(api.registry, "m1")
    await add_machine(api.registry, "m2")
    body = [
        op("add", value="us"),
        op("add", "/m2/metadata/disk", {"value": "ssd"}),
        op("remove"),
        op("replace", value={"value": "eu"}),
        op("add", "/m1/metadata/cores", "8"),
    ]
    assert (await patch(api, body))[0] == 204
    assert await metadata(api, "m1") == {"cores": "8", "region": "eu"}
    assert await metadata(api, "m2") == {"disk": "ssd"}


async def test_metadata_of_a_machine_that_is_not_registered_waits_for_it(api: Api) -> None:
    assert (await patch(api, [op("add", "/later/metadata/role", "web")]))[0] == 204
    await add_machine(api.registry, "later", metadata={"role": "db"})
    assert await metadata(api, "later") == {"role": "web"}


@pytest.mark.parametrize("raw", [pytest.param(b"[]", id="an empty list"), pytest.param(b"null", id="null")])
async def test_no_operations_change_nothing(api: Api, raw: bytes) -> None:
    async with api.unchanged():
        assert (await api.call("PATCH", V1 + "/machines", data=raw)).status == 204


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param([op("set", value="eu")], "invalid op: expect add, remove, or replace", id="an unknown op"),
        pytest.param([op("ADD", value="eu")], "invalid op: expect add, remove, or replace", id="ops are lower case"),
        pytest.param([{"path": PATH, "value": "eu"}], "invalid op: expect add, remove, or replace", id="no op"),
        pytest.param([None], "invalid op: expect add, remove, or replace", id="a null operation"),
        pytest.param([op("add", "/m1/metadata/", "x")], "machine metadata path invalid", id="no key"),
        pytest.param([op("add", "m1/metadata/region", "x")], "machine metadata path invalid", id="no leading slash"),
        pytest.param([op("add", "/m1/meta/region", "x")], "machine metadata path invalid", id="not metadata"),
        pytest.param([op("add", "/m1/metadata/a b", "x")], "machine metadata path invalid", id="a space in the key"),
        pytest.param([op("add", "/m1/metadata/a/b", "x")], "machine metadata path invalid", id="a slash in the key"),
        pytest.param(
            [op("add", "/m1/metadata/region\n", "x")], "machine metadata path invalid", id="a trailing newline"
        ),
        pytest.param([op("remove", "//metadata/region")], "machine metadata path invalid", id="no machine"),
        pytest.param([op("add")], "invalid value: add and replace require a value", id="add without a value"),
        pytest.param(
            [op("replace", value={"value": ""})],
            "invalid value: add and replace require a value",
            id="replace with an empty value",
        ),
        pytest.param(
            [op("add", value={"other": "x"})], "invalid value: add and replace require a value", id="no inner value"
        ),
        pytest.param(
            [op("add", value="eu"), op("bogus")],
            "invalid op: expect add, remove, or replace",
            id="a bad operation after a good one applies neither",
        ),
        pytest.param(
            {"op": "add"},
            "json: cannot unmarshal object into Go value of type []api.machineMetadataOp",
            id="an object instead of a list",
        ),
        pytest.param(
            ["add"],
            "json: cannot unmarshal string into Go value of type api.machineMetadataOp",
            id="a string instead of an operation",
        ),
        pytest.param(
            [{"op": 1, "path": PATH}],
            "json: cannot unmarshal number into Go struct field machineMetadataOp.op of type string",
            id="a number as op",
        ),
        pytest.param(
            [op("add", value=["eu"])],
            "json: cannot unmarshal array into Go struct field machineMetadataOp.value of type struct { Value string }",
            id="a list as value",
        ),
        pytest.param(
            [op("add", value={"value": 3})],
            "json: cannot unmarshal number into Go struct field machineMetadataOp.value.value of type string",
            id="a number as the inner value",
        ),
    ],
)
async def test_invalid_operations_are_400_and_write_nothing(api: Api, body: Any, message: str) -> None:
    await add_machine(api.registry, "m1")
    async with api.unchanged():
        reply = await api.call("PATCH", V1 + "/machines", json=body)
    assert reply.status == 400
    assert reply.error == (400, message)


@pytest.mark.parametrize("raw", [pytest.param(b"[{", id="broken JSON"), pytest.param(b"", id="no body")])
async def test_a_body_that_is_not_json_is_400(api: Api, raw: bytes) -> None:
    async with api.unchanged():
        reply = await api.call("PATCH", V1 + "/machines", data=raw)
    assert reply.status == 400
    assert reply.error[1] != ""


async def test_a_storage_failure_is_500_with_the_error(prefix: str) -> None:
    dead = EtcdClient([f"http://127.0.0.1:{free_port()}"], timeout=1)
    http: TestClient[Any, Any] = TestClient(TestServer(make_app(EtcdRegistry(dead, Keys(prefix)), ApiSettings())))
    await http.start_server()
    try:
        response = await http.request("PATCH", V1 + "/machines", json=[op("add", value="eu")])
        body = await response.json()
        assert response.status == 500
        assert body["error"]["code"] == 500
        assert "etcd unavailable" in body["error"]["message"]
    finally:
        await http.close()
        await dead.close()
