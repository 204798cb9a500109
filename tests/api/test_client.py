"""The API over a real unix socket as fleetpyd serves it (``daemon.start_api``), through fleetpyctl's client."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator

import aiohttp
import pytest

from fleetpy.client import ApiError, Client, EndpointUnavailable, parse_endpoint
from fleetpy.config import Settings
from fleetpy.daemon import start_api
from fleetpy.model import DesiredState
from fleetpy.registry.store import EtcdRegistry
from fleetpy.unit import UnitFile
from tests.api.conftest import MakeApi
from tests.api.seeding import add_machine, report

HELLO = "[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/sleep 100\n"
TEMPLATE = "[Service]\nExecStart=/bin/echo %i\n"


@pytest.fixture
async def socket_path(registry: EtcdRegistry, workdir: str, prefix: str) -> AsyncIterator[str]:
    """fleetpyd's API listener on a unix socket of its own, with two items per page."""
    path = os.path.join(workdir, f"api-{prefix.strip('/')}.sock")
    runner = await start_api(registry, Settings(api_socket=path, token_limit=2), ready=lambda: True)
    try:
        yield path
    finally:
        await runner.cleanup()


@pytest.fixture
async def api_client(socket_path: str) -> AsyncIterator[Client]:
    async with Client(f"unix://{socket_path}") as unix_client:
        yield unix_client


async def test_the_socket_speaks_fleets_api(socket_path: str) -> None:
    assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o660
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket_path)) as http,
        http.get("http://fleet/fleet/v1/units?alt=json") as response,
    ):
        assert response.status == 200
        assert await response.read() == b"{}"
        assert response.headers["Server"].startswith("fleetpyd/")
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket_path)) as http,
        http.get("http://fleet/v1-alpha/units/nothing.service") as response,
    ):
        assert response.status == 404
        assert await response.read() == b'{"error":{"code":404,"message":"unit does not exist"}}'


async def test_units_round_trip_through_the_client(api_client: Client) -> None:
    options = UnitFile.from_text(HELLO).options
    await api_client.create_unit("hello.service", options)
    unit = await api_client.unit("hello.service")
    assert unit is not None
    assert (unit.name, unit.desired, unit.current, unit.machine, unit.options) == (
        "hello.service",
        "inactive",
        "inactive",
        "",
        options,
    )
    await api_client.set_desired("hello.service", DesiredState.LAUNCHED)
    unit = await api_client.unit("hello.service")
    assert unit is not None
    assert unit.desired == "launched"
    assert await api_client.destroy("hello.service")
    assert not await api_client.destroy("hello.service")
    assert await api_client.unit("hello.service") is None


async def test_instance_names_are_quoted_in_urls(api_client: Client) -> None:
    await api_client.create_unit("web@a\\x2db.service", UnitFile.from_text(TEMPLATE).options)
    unit = await api_client.unit("web@a\\x2db.service")
    assert unit is not None
    assert unit.name == "web@a\\x2db.service"


async def test_lists_follow_every_page(api_client: Client, registry: EtcdRegistry) -> None:
    for i in range(5):
        await api_client.create_unit(f"u{i}.service", UnitFile.from_text(HELLO).options)
    for machine in ("m3", "m1", "m2"):
        await add_machine(registry, machine, f"10.0.0.{machine[1]}")
        for i in range(3):
            await report(registry, machine, f"u{i}.service")
    assert [u.name for u in await api_client.units()] == [f"u{i}.service" for i in range(5)]
    assert [(m.id, m.primary_ip) for m in await api_client.machines()] == [
        ("m1", "10.0.0.1"),
        ("m2", "10.0.0.2"),
        ("m3", "10.0.0.3"),
    ]
    assert len(await api_client.states()) == 9
    assert [(s.name, s.machine) for s in await api_client.states(unit="u1.service")] == [
        ("u1.service", "m1"),
        ("u1.service", "m2"),
        ("u1.service", "m3"),
    ]
    assert [s.name for s in await api_client.states(machine="m2")] == ["u0.service", "u1.service", "u2.service"]
    state = await api_client.state("u1.service")
    assert state is not None
    assert (state.machine, state.load, state.active, state.sub) == ("m1", "loaded", "active", "running")
    assert await api_client.state("u4.service") is None


async def test_api_errors_read_as_fleetctls(api_client: Client) -> None:
    await api_client.create_unit("t@.service", UnitFile.from_text(TEMPLATE).options)
    with pytest.raises(ApiError) as refused:
        await api_client.set_desired("t@.service", DesiredState.LAUNCHED)
    assert (refused.value.status, refused.value.message) == (400, 'cannot activate template "t@.service"')
    assert str(refused.value) == 'googleapi: Error 400: cannot activate template "t@.service"'
    with pytest.raises(ApiError) as missing:
        await api_client.set_desired("missing.service", DesiredState.LAUNCHED)
    assert str(missing.value) == "googleapi: Error 409: unit does not exist and options field empty"


async def test_the_client_also_speaks_http(make_api: MakeApi) -> None:
    api = await make_api()
    async with Client(f"http://127.0.0.1:{api.http.port}") as http_client:
        await http_client.create_unit("hello.service", UnitFile.from_text(HELLO).options)
        assert [u.name for u in await http_client.units()] == ["hello.service"]


async def test_a_missing_socket_is_reported_as_unreachable(workdir: str) -> None:
    path = os.path.join(workdir, "no-such.sock")
    async with Client(f"unix://{path}") as missing:
        with pytest.raises(EndpointUnavailable) as failed:
            await missing.units()
    assert str(failed.value) == f"cannot reach the fleetpy API at unix://{path}: No such file or directory"


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        pytest.param("unix:///run/fleetpy/fleetpy.sock", ("http://fleetpy", "/run/fleetpy/fleetpy.sock"), id="unix"),
        pytest.param("file:///tmp/a.sock", ("http://fleetpy", "/tmp/a.sock"), id="file"),
        pytest.param("http://10.0.0.1:49153", ("http://10.0.0.1:49153", ""), id="http"),
        pytest.param("https://h:1,http://other:2", ("https://h:1", ""), id="only the first of several"),
    ],
)
def test_endpoints(endpoint: str, expected: tuple[str, str]) -> None:
    assert parse_endpoint(endpoint) == expected


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        pytest.param("/run/fleetpy.sock", "Unable to initialize client: URL scheme undefined", id="no scheme"),
        pytest.param("", "Unable to initialize client: URL scheme undefined", id="empty"),
        pytest.param(
            "unix://var/x",
            'Unable to initialize client: unable to connect to host "var" with scheme "unix"',
            id="a unix endpoint with a host",
        ),
        pytest.param("ftp://x", 'Unable to initialize client: unsupported URL scheme "ftp"', id="ftp"),
        pytest.param("http://", 'Unable to initialize client: no host in endpoint "http://"', id="no host"),
    ],
)
def test_endpoints_that_cannot_be_used(endpoint: str, message: str) -> None:
    with pytest.raises(EndpointUnavailable) as failed:
        parse_endpoint(endpoint)
    assert str(failed.value) == message


async def test_of_several_endpoints_each_request_goes_to_the_first_that_answers(
    make_api: MakeApi, workdir: str
) -> None:
    api = await make_api()
    not_ready = await make_api(ready=lambda: False)  # its fleetpyd cannot reach etcd: fleet's 503
    dead = f"unix://{workdir}/dead-{api.prefix.strip('/')}.sock"
    live = f"http://127.0.0.1:{api.http.port}"
    async with Client(f"{dead},http://127.0.0.1:{not_ready.http.port},{live}") as client:
        await client.create_unit("hello.service", UnitFile.from_text(HELLO).options)
        assert [u.name for u in await client.units()] == ["hello.service"]
        assert client.where == live, "the endpoint that answered is used first from then on"
    async with Client(f"{dead},{dead}x") as nowhere:
        with pytest.raises(EndpointUnavailable) as failed:
            await nowhere.units()
    assert str(failed.value) == (
        f"cannot reach the fleetpy API at any endpoint ({dead}: No such file or directory; "
        f"{dead}x: No such file or directory)"
    )
