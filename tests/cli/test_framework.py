"""What every fleetpyctl command shares (FLEET-SPEC §1.1, §1.2, §9.1): version, help, command lookup, exit codes,
the endpoint and how it is chosen, and what the user sees when the API cannot be used."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer

from fleetpy import __version__
from fleetpy.api.app import ApiSettings, make_app
from fleetpy.registry.store import EtcdRegistry
from tests.cli.conftest import Ctl
from tests.support import write_unit

HELLO = "[Unit]\nDescription=Hello World\n\n[Service]\nExecStart=/bin/sleep 100\n"
VERSION = f"fleetpyctl version {__version__}\n"


@pytest.mark.parametrize("args", [["version"], ["--version"], ["-v"]])
async def test_version(args: list[str]) -> None:
    ctl = Ctl("unix:///nonexistent/fleetpy.sock")  # no API is needed
    result = await ctl(*args)
    assert (result.code, result.out, result.err) == (0, VERSION, "")


async def test_version_as_a_process_needs_no_api() -> None:
    result = await Ctl("not an endpoint").process("version")
    assert (result.code, result.out, result.err) == (0, VERSION, "")


@pytest.mark.parametrize("args", [[], ["help"], ["--help"], ["-h"]])
async def test_help(args: list[str]) -> None:
    result = await Ctl("unix:///nonexistent.sock")(*args)
    assert result.code == 0
    assert "list-unit-files" in result.out
    assert "Usage: fleetpyctl" in result.out


@pytest.mark.parametrize("args", [["help", "list-units"], ["list-units", "--help"], ["list-units", "-h"]])
async def test_command_help(args: list[str]) -> None:
    result = await Ctl("unix:///nonexistent.sock")(*args)
    assert result.code == 0
    assert "Usage: fleetpyctl list-units" in result.out
    assert "--fields" in result.out


async def test_a_unique_prefix_names_a_command(ctl: Ctl) -> None:
    result = await ctl("list-m")
    assert (result.code, result.out) == (0, "MACHINE\tIP\tMETADATA\n")
    assert (await ctl("vers")).out == VERSION


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["foo"], 'Error: unknown command "foo" for "fleetpyctl"', id="unknown command"),
        pytest.param(
            ["list-u"],
            'Error: unknown command "list-u" for "fleetpyctl"\n\nDid you mean this?\n\tlist-unit-files\n\tlist-units',
            id="an ambiguous prefix",
        ),
        pytest.param(["help", "foo"], 'Error: unknown command "foo" for "fleetpyctl"', id="help of nothing"),
        pytest.param(["list-units", "--bogus"], "Error: No such option '--bogus'", id="unknown flag"),
        pytest.param(
            ["start", "--block-attempts", "x", "a"], "Error: Invalid value for '--block-attempts'", id="bad flag value"
        ),
    ],
)
async def test_usage_errors_exit_non_zero(args: list[str], message: str) -> None:
    result = await Ctl("unix:///nonexistent.sock")(*args)  # fleetctl exits 0 here (§9.1)
    assert result.code == 2
    assert result.out == ""
    assert message in result.err


async def test_an_unknown_command_fails_as_a_process() -> None:
    result = await Ctl("unix:///nonexistent.sock").process("foo")
    assert result.code == 2
    assert 'Error: unknown command "foo" for "fleetpyctl"' in result.err


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        pytest.param("/run/fleetpy.sock", "Unable to initialize client: URL scheme undefined", id="no scheme"),
        pytest.param(
            "unix://var/x",
            'Unable to initialize client: unable to connect to host "var" with scheme "unix"',
            id="unix with a host",
        ),
        pytest.param("ftp://h/x", 'Unable to initialize client: unsupported URL scheme "ftp"', id="ftp"),
    ],
)
@pytest.mark.parametrize("command", [["list-units"], ["cat", "a"], ["submit", "a"], ["destroy", "a"]])
async def test_an_endpoint_that_cannot_be_used(endpoint: str, message: str, command: list[str]) -> None:
    result = await Ctl("unix:///unused.sock")("--endpoint", endpoint, *command)
    assert (result.code, result.out, result.err) == (1, "", message + "\n")


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["submit", "a"], "cannot reach the fleetpy API at unix://{sock}: No such file or directory"),
        (["destroy", "a"], "cannot reach the fleetpy API at unix://{sock}: No such file or directory"),
        (["stop", "a"], "cannot reach the fleetpy API at unix://{sock}: No such file or directory"),
    ],
)
async def test_an_api_that_cannot_be_reached(workdir: str, command: list[str], message: str) -> None:
    sock = f"{workdir}/nobody-listens.sock"
    result = await Ctl(f"unix://{sock}").process(*command)
    assert (result.code, result.out, result.err) == (1, "", message.format(sock=sock) + "\n")


async def test_the_endpoint_flag_wins_over_the_environment(ctl: Ctl, workdir: str, files: str) -> None:
    path = write_unit(files, "hello.service", HELLO)
    wrong = Ctl(f"unix://{workdir}/wrong.sock")
    result = await wrong.process("--endpoint", ctl.endpoint, "submit", path)
    assert (result.code, result.out, result.err) == (0, "Unit hello.service inactive\n", "")
    # and the environment is used when there is no flag
    cat = await ctl.process("cat", "hello.service")
    assert (cat.code, cat.out, cat.err) == (0, HELLO, "")
    failed = await wrong.process("cat", "hello.service")
    assert failed.code == 1
    assert f"unix://{workdir}/wrong.sock" in failed.err


async def test_only_the_first_of_several_endpoints_is_used(ctl: Ctl, workdir: str) -> None:
    result = await ctl("--endpoint", f"{ctl.endpoint},unix://{workdir}/other.sock", "list-units")
    assert (result.code, result.out) == (0, "UNIT\tMACHINE\tACTIVE\tSUB\n")


@pytest.fixture
async def not_ready(registry: EtcdRegistry) -> AsyncIterator[str]:
    """An API that answers 503 to everything (over TCP, served by the test's own event loop)."""
    server = TestServer(make_app(registry, ApiSettings(ready=lambda: False)))
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["list-units"], "Error retrieving list of units from repository: googleapi: Error 503: {m}"),
        (["cat", "a"], "Error retrieving Unit a.service: googleapi: Error 503: {m}"),
        (["destroy", "a"], "googleapi: Error 503: {m}"),
    ],
)
async def test_an_api_that_is_not_ready(not_ready: str, command: list[str], message: str) -> None:
    result = await Ctl(not_ready)(*command)
    m = "fleet server unable to communicate with etcd"
    assert (result.code, result.out, result.err) == (1, "", message.format(m=m) + "\n")


async def test_the_request_timeout_applies_to_every_request(workdir: str) -> None:
    """An API that accepts connections but never answers: fleetpyctl gives up after --request-timeout."""
    sock = f"{workdir}/silent.sock"
    connections: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_unix_server(accept, sock)
    try:
        result = await Ctl(f"unix://{sock}")("--request-timeout", "0.5", "cat", "a")
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()
    assert (result.code, result.out) == (1, "")
    assert (
        result.err
        == f"Error retrieving Unit a.service: cannot reach the fleetpy API at unix://{sock}: the request timed out\n"
    )
