"""fleetctl's global flags in fleetpyctl (FLEET-SPEC §1.2, §9.7, §9.14): environment variables, TLS that always
verifies, the driver, --debug, and ``-o json`` on the listings, through a real API process."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from fleetpy.api.app import ApiSettings, make_app
from fleetpy.devcluster import free_port
from fleetpy.model import DesiredState, UnitRecord
from fleetpy.registry.store import EtcdRegistry
from fleetpy.unit import UnitFile
from tests.api.seeding import add_machine, place, report
from tests.cli.conftest import Ctl

M1 = "4d3895379ed84e6c9c4a2d5b9b6a1f01"
HELLO = "[Unit]\nDescription=Hello World\n\n[Service]\nExecStart=/bin/sleep 100\n"
GLOBAL = "[Service]\nExecStart=/bin/sleep 100\n\n[X-Fleet]\nGlobal=true\n"


async def test_fleetctls_environment_variables_work_too(ctl: Ctl) -> None:
    result = await ctl.process("list-units", env={"FLEETPYCTL_ENDPOINT": "", "FLEETCTL_ENDPOINT": ctl.endpoint})
    assert (result.code, result.out, result.err) == (0, "UNIT\tMACHINE\tACTIVE\tSUB\n", "")
    # FLEETPYCTL_ wins over FLEETCTL_, and the flag over both
    wrong = "unix:///nonexistent/x.sock"
    ours = await ctl.process("list-units", env={"FLEETCTL_ENDPOINT": wrong})
    assert ours.code == 0
    flag = await ctl.process("--endpoint", ctl.endpoint, "list-units", env={"FLEETPYCTL_ENDPOINT": wrong})
    assert flag.code == 0


@pytest.mark.parametrize(
    ("driver", "message"),
    [
        ("etcd", "Unable to initialize client: the etcd driver is not supported; use the API endpoint"),
        ("foo", 'Unable to initialize client: unrecognized driver "foo"'),
    ],
)
async def test_only_the_api_driver(ctl: Ctl, driver: str, message: str) -> None:
    result = await ctl("--driver", driver, "list-units")
    assert result.code == 2
    assert message in result.err
    assert (await ctl("--driver", "api", "list-units")).code == 0


async def test_debug_on_the_command_line_logs_requests(ctl: Ctl) -> None:
    result = await ctl.process("--debug", "list-units")  # fleetctl honoured only FLEETCTL_DEBUG (§9.7)
    assert result.code == 0
    assert "GET http://fleetpy/fleet/v1/state" in result.err
    quiet = await ctl.process("list-units")
    assert quiet.err == ""


async def test_listings_as_json(ctl: Ctl, registry: EtcdRegistry) -> None:
    await add_machine(registry, M1, "10.0.0.1", {"region": "us-east"})
    hello = UnitFile.from_text(HELLO)
    glob = UnitFile.from_text(GLOBAL)
    await registry.create_unit(UnitRecord("hello.service", hello.hash, DesiredState.LAUNCHED), hello.text)
    await registry.create_unit(UnitRecord("g.service", glob.hash, DesiredState.LAUNCHED, True), glob.text)
    await place(registry, "hello.service", M1)
    await report(registry, M1, "hello.service")
    machines = json.loads((await ctl("list-machines", "-o", "json")).out)
    assert machines == [{"machine": M1, "ip": "10.0.0.1", "metadata": {"region": "us-east"}}]
    assert json.loads((await ctl("list-machines", "--output", "json", "--fields", "ip")).out) == [{"ip": "10.0.0.1"}]
    files = json.loads(
        (await ctl("list-unit-files", "-o", "json", "--fields", "unit,hash,dstate,state,target,global")).out
    )
    assert files == [
        {
            "unit": "g.service",
            "hash": glob.hash,
            "dstate": "launched",
            "state": None,
            "target": "global",
            "global": True,
        },
        {
            "unit": "hello.service",
            "hash": hello.hash,
            "dstate": "launched",
            "state": "launched",
            "target": M1,
            "global": False,
        },
    ]
    units = json.loads((await ctl("list-units", "-o", "json", "--fields", "unit,machine,load,active,sub,hash")).out)
    assert units == [
        {
            "unit": "hello.service",
            "machine": M1,
            "load": "loaded",
            "active": "active",
            "sub": "running",
            "hash": hello.hash,
        }
    ]
    bad = await ctl("list-units", "-o", "yaml")
    assert bad.code == 2


# ---------------------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (its own CA), and its key."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
async def https_api(registry: EtcdRegistry, certificate: tuple[str, str]) -> AsyncIterator[str]:
    """The API over TLS that also asks for a client certificate signed by the same CA."""
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cert)
    context.verify_mode = ssl.CERT_OPTIONAL
    runner = web.AppRunner(make_app(registry, ApiSettings()))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_tls_verifies_the_server_whenever_it_can(https_api: str, certificate: tuple[str, str]) -> None:
    cert, key = certificate
    unverified = await Ctl(https_api)("list-machines")  # fleetctl skipped verification here (§9.14)
    assert unverified.code == 1
    assert "certificate verify failed" in unverified.err or "CERTIFICATE_VERIFY_FAILED" in unverified.err
    with_ca = await Ctl(https_api)("--ca-file", cert, "list-machines")
    assert (with_ca.code, with_ca.out) == (0, "MACHINE\tIP\tMETADATA\n")
    with_client_cert = await Ctl(https_api)("list-machines", env={
        "FLEETPYCTL_CA_FILE": cert, "FLEETPYCTL_CERT_FILE": cert, "FLEETPYCTL_KEY_FILE": key,
    })  # fmt: skip
    assert (with_client_cert.code, with_client_cert.out) == (0, "MACHINE\tIP\tMETADATA\n")
    missing = await Ctl(https_api)("--ca-file", os.path.join(os.path.dirname(cert), "nope.pem"), "list-machines")
    assert missing.code == 1
    assert missing.err.startswith("Unable to initialize client: cannot load TLS files:")


@pytest.mark.parametrize("command", ["submit", "load", "start"])
async def test_sign_fails_as_fleetctl_meant_it_to(ctl: Ctl, command: str) -> None:
    result = await ctl(command, "--sign", "a.service")  # fleetctl accepted it silently (§9.7)
    assert (result.code, result.out) == (2, "")
    assert result.err == "WARNING: The signed/verified units feature is DEPRECATED and cannot be used.\n"


async def test_status_accepts_no_block_as_fleetctls_tests_pass_it(ctl: Ctl) -> None:
    result = await ctl("status", "--no-block", "a.service")
    assert (result.code, result.out, result.err) == (1, "", "Unit a.service does not exist.\n")


async def test_every_listing_speaks_json_even_when_empty(ctl: Ctl) -> None:
    for command in ("list-machines", "list-unit-files", "list-units", "list-watch-errors"):
        result = await ctl(command, "-o", "json")
        assert (result.code, json.loads(result.out), result.err) == (0, [], ""), command
