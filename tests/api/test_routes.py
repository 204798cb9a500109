"""Routing of fleet's API v1 (FLEET-SPEC §4.1, §4.3): prefixes, 404 and 405 bodies, the Server header, 503."""

from __future__ import annotations

import pytest

from fleetpy import __version__
from tests.api.conftest import V1, Api, MakeApi

HELLO = "[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/sleep 100\n"
ONLY_GET = "only GET supported against this resource"
UNIT_METHODS = "only GET, PUT and DELETE supported against this resource"
MACHINE_METHODS = "only GET and PATCH supported against this resource"


@pytest.mark.parametrize("base", ["/fleet/v1", "/v1-alpha"])
@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/units/", id="a unit path without a name"),
        pytest.param("/units/a.service/b", id="a unit path with two segments"),
        pytest.param("/machines/abc", id="a single machine"),
        pytest.param("/state/a.service/b", id="a state path with two segments"),
        pytest.param("/nothing", id="an unknown resource"),
        pytest.param("/watch-errors", id="fleetpy's own endpoint, which lives under /fleetpy/v1"),
    ],
)
async def test_unknown_paths_are_404_with_an_empty_message(api: Api, base: str, path: str) -> None:
    async with api.unchanged():
        for method in ("GET", "PUT", "DELETE"):
            reply = await api.call(method, base + path)
            assert reply.status == 404
            assert reply.raw == b'{"error":{"code":404,"message":""}}'
            assert reply.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("path", ["/fleet/v2/units", "/fleet", "/metricsx", "/fleet/v1units"])
async def test_paths_outside_the_api_are_404(api: Api, path: str) -> None:
    reply = await api.get(path)
    assert reply.status == 404
    assert reply.error == (404, "")


@pytest.mark.parametrize("base", ["/fleet/v1", "/v1-alpha"])
@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        pytest.param("POST", "/units", ONLY_GET, id="POST units"),
        pytest.param("PUT", "/units", ONLY_GET, id="PUT units"),
        pytest.param("DELETE", "/units", ONLY_GET, id="DELETE units"),
        pytest.param("POST", "/units/a.service", UNIT_METHODS, id="POST a unit"),
        pytest.param("PATCH", "/units/a.service", UNIT_METHODS, id="PATCH a unit"),
        pytest.param("POST", "/machines", MACHINE_METHODS, id="POST machines"),
        pytest.param("DELETE", "/machines", MACHINE_METHODS, id="DELETE machines"),
        pytest.param("PUT", "/state", ONLY_GET, id="PUT state"),
        pytest.param("DELETE", "/state/a.service", ONLY_GET, id="DELETE a state"),
        pytest.param("POST", "/state/a.service", ONLY_GET, id="POST a state"),
        pytest.param("GET", "", "", id="GET the prefix itself"),
        pytest.param("PUT", "", "", id="PUT the prefix itself"),
    ],
)
async def test_other_methods_are_405_with_fleets_messages(
    api: Api, base: str, method: str, path: str, message: str
) -> None:
    await api.put_text("a.service", HELLO)
    async with api.unchanged():
        reply = await api.call(method, base + path, json={"desiredState": "launched"})
    assert reply.status == 405
    assert reply.error == (405, message)


async def test_fleetpys_own_listing_lives_under_its_own_prefix(api: Api) -> None:
    assert (await api.get("/fleetpy/v1/watch-errors")).status == 200
    reply = await api.call("POST", "/fleetpy/v1/watch-errors")
    assert reply.error == (405, ONLY_GET)


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_the_root_is_405(api: Api, method: str) -> None:
    reply = await api.call(method, "/")
    assert reply.status == 405
    assert reply.raw == b'{"error":{"code":405,"message":""}}'


async def test_v1_alpha_is_the_same_api(api: Api) -> None:
    created = await api.put(
        "a.service", {"options": [{"section": "Service", "name": "ExecStart", "value": "/x"}]}, base="/v1-alpha"
    )
    assert created.status == 201
    for path in ("/units", "/units/a.service", "/machines", "/state"):
        alpha, v1 = await api.get("/v1-alpha" + path), await api.get(V1 + path)
        assert (alpha.status, alpha.raw) == (v1.status, v1.raw) == (200, v1.raw)
    deleted = await api.call("DELETE", "/v1-alpha/units/a.service")
    assert deleted.status == 204
    assert (await api.get(V1 + "/units")).raw == b"{}"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", V1 + "/units"), ("GET", V1 + "/units/missing.service"), ("GET", "/nothing"), ("POST", V1 + "/units")],
)
async def test_every_answer_carries_the_server_header(api: Api, method: str, path: str) -> None:
    reply = await api.call(method, path)
    assert reply.headers["Server"] == f"fleetpyd/{__version__}"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", V1 + "/units"),
        ("GET", V1 + "/machines"),
        ("GET", V1 + "/state"),
        ("GET", V1 + "/units/a.service"),
        ("PUT", V1 + "/units/b.service"),
        ("DELETE", V1 + "/units/a.service"),
        ("GET", "/nothing"),
        ("GET", "/"),
    ],
)
async def test_a_server_that_is_not_ready_answers_503_and_writes_nothing(
    make_api: MakeApi, method: str, path: str
) -> None:
    ready = [True]
    api = await make_api(ready=lambda: ready[0])
    assert (await api.put_text("a.service", HELLO)).status == 201
    ready[0] = False
    async with api.unchanged():
        reply = await api.call(method, path, json={"options": [{"section": "Service", "name": "A", "value": "b"}]})
    assert reply.status == 503
    assert reply.raw == b'{"error":{"code":503,"message":"fleet server unable to communicate with etcd"}}'
    assert "fleetpyd" not in reply.headers.get("Server", "")  # fleet's 503 lacks its Server header too
    ready[0] = True
    assert (await api.get(V1 + "/units/a.service")).status == 200
