"""Who may use the API of a real fleetpyd (docs/security.md): the unix socket by its mode and group, TCP
listeners only over TLS and only with a client certificate or a bearer token. Certificates are made by the
test (tests/pki.py); every refused request is checked to have written nothing."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import signal
import ssl
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from fleetpy.devcluster import EtcdServer, free_port
from fleetpy.registry.etcd import EtcdClient
from tests.cli.conftest import ApiProcess, Ctl, start_process, stop_process, wait_serving
from tests.pki import Issued, Pki
from tests.support import ROOT

TOKEN = "s3cret-token-0123456789abcdef"
GROUP = "adm"  # exists on Debian; the socket's group is configurable, any group will do


@dataclass
class Secured:
    api: ApiProcess
    url: str  # https://127.0.0.1:PORT
    ca: str  # the CA that signed the server's certificate
    client: Issued  # signed by the client CA the server trusts
    rogue: Issued  # signed by a CA the server does not know
    tokens_file: str
    prefix: str
    etcd: EtcdServer


@pytest.fixture(scope="module")
def secured(etcd: EtcdServer, workdir: str) -> Iterator[Secured]:
    name = uuid.uuid4().hex[:8]
    directory = os.path.join(workdir, f"auth-{name}")
    pki = Pki(directory)
    server_ca, client_ca, rogue_ca = pki.authority("server"), pki.authority("clients"), pki.authority("rogue")
    server = pki.issue(server_ca, "api", ips=("127.0.0.1",))
    tokens_file = os.path.join(directory, "tokens")
    with open(tokens_file, "w") as handle:
        handle.write(f"# the CI's token\n{TOKEN}\n")
    os.chmod(tokens_file, 0o600)
    port = free_port()
    sock = os.path.join(directory, "api.sock")
    prefix = f"/auth-{name}"
    command = [
        sys.executable, "-m", "fleetpy.cli.fleetpyd", "--disable-agent", "--disable-engine",
        "--api-socket", sock, "--api-listen", f"127.0.0.1:{port}",
        "--etcd-servers", etcd.endpoint, "--etcd-key-prefix", prefix,
    ]  # fmt: skip
    env = {
        **os.environ,
        "FLEETPY_CONFIG": "/dev/null",
        "FLEETPY_RUNTIME_DIRECTORY": directory,
        "FLEETPY_API_SOCKET_GROUP": GROUP,
        "FLEETPY_API_TLS_CERT_FILE": server.cert,
        "FLEETPY_API_TLS_KEY_FILE": server.key,
        "FLEETPY_API_TLS_CLIENT_CA_FILE": client_ca.cert,
        "FLEETPY_API_TOKENS_FILE": tokens_file,
    }
    api = start_process(command, sock, os.path.join(directory, "fleetpyd.log"), env=env)
    try:
        wait_serving(api)
        yield Secured(
            api,
            f"https://127.0.0.1:{port}",
            server_ca.cert,
            pki.issue(client_ca, "alice", ips=()),
            pki.issue(rogue_ca, "mallory", ips=()),
            tokens_file,
            prefix,
            etcd,
        )
    finally:
        stop_process(api)


async def stored(secured: Secured) -> list[tuple[str, int]]:
    client = EtcdClient([secured.etcd.endpoint])
    try:
        _, kvs = await client.get_prefix(secured.prefix + "/")
        return [(kv.key, kv.mod_revision) for kv in kvs]
    finally:
        await client.close()


def test_the_unix_socket_has_mode_0660_and_the_configured_group(secured: Secured) -> None:
    info = os.stat(secured.api.socket)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == grp.getgrnam(GROUP).gr_gid


async def test_a_tcp_client_without_credentials_is_refused_with_credentials_accepted(secured: Secured) -> None:
    context = ssl.create_default_context(cafile=secured.ca)
    before = await stored(secured)
    body = {"name": "x.service", "desiredState": "launched", "options": [{"section": "Service", "name": "ExecStart",
                                                                          "value": "/bin/true"}]}  # fmt: skip
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
        for method, path, headers in [
            ("GET", "/fleet/v1/machines", {}),
            ("GET", "/metrics", {}),
            ("PUT", "/fleet/v1/units/x.service", {}),
            ("PUT", "/fleet/v1/units/x.service", {"Authorization": "Bearer wrong-token-0123456789"}),
            ("PUT", "/fleet/v1/units/x.service", {"Authorization": f"Basic {TOKEN}"}),
        ]:
            async with http.request(method, secured.url + path, json=body, headers=headers) as response:
                assert response.status == 401, (method, path, headers)
                assert response.headers["WWW-Authenticate"] == 'Bearer realm="fleetpy"'
                error = json.loads(await response.read())["error"]
                assert error["code"] == 401
                assert error["message"]
        async with http.get(secured.url + "/fleet/v1/machines", headers={"Authorization": f"Bearer {TOKEN}"}) as ok:
            assert ok.status == 200
    assert await stored(secured) == before, "a refused request wrote to etcd"

    ctl = Ctl(secured.url)
    refused = await ctl("--ca-file", secured.ca, "list-machines")
    assert refused.code == 1
    assert "googleapi: Error 401: authentication required" in refused.err
    assert "The API refused fleetpyctl's credentials: give a token" in refused.err
    assert "etcd is unhealthy" not in refused.err, "not fleetctl's hints about etcd"
    with_env_token = await ctl("--ca-file", secured.ca, "list-machines", env={"FLEETPYCTL_TOKEN": TOKEN})
    assert (with_env_token.code, with_env_token.out) == (0, "MACHINE\tIP\tMETADATA\n")
    with_token_file = await ctl("--ca-file", secured.ca, "--token-file", secured.tokens_file, "list-machines")
    assert with_token_file.code == 1, "the file's first line is a comment, not the token"
    token_file = secured.tokens_file + ".client"
    with open(token_file, "w") as handle:
        handle.write(TOKEN + "\n")
    with_token_file = await ctl("--ca-file", secured.ca, "--token-file", token_file, "list-machines")
    assert with_token_file.code == 0, with_token_file.err
    with_cert = await ctl(
        "--ca-file", secured.ca, "--cert-file", secured.client.cert, "--key-file", secured.client.key, "list-machines"
    )
    assert (with_cert.code, with_cert.err) == (0, "")
    rogue = await ctl(
        "--ca-file", secured.ca, "--cert-file", secured.rogue.cert, "--key-file", secured.rogue.key, "list-machines"
    )
    assert rogue.code == 1, "a certificate the client CA did not sign must not get in"
    unverified = await ctl("list-machines", env={"FLEETPYCTL_TOKEN": TOKEN})
    assert unverified.code == 1
    assert "certificate verify failed" in unverified.err.lower()
    plain = await Ctl(secured.url.replace("https://", "http://"))("list-machines", env={"FLEETPYCTL_TOKEN": TOKEN})
    assert plain.code == 1, "the TCP listener speaks TLS only"
    over_unix = await Ctl(secured.api.endpoint)("list-machines")
    assert over_unix.code == 0, "the unix socket needs no credentials: its mode and group decide"


def _fleetpyd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "fleetpy.cli.fleetpyd", "--disable-agent", "--disable-engine", *args]
    full_env = {**os.environ, "FLEETPY_CONFIG": "/dev/null", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=60, check=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ("--api-listen", "192.0.2.1:8080"),
            "fleetpyd: api_listen 192.0.2.1:8080 would serve the API over plain TCP on an address that is not loopback",
            id="plain TCP on an address that is not loopback",
        ),
        pytest.param(
            ("--api-listen", "127.0.0.1:8080"),
            "fleetpyd: api_listen 127.0.0.1:8080 needs a way to authenticate clients",
            id="TCP without a way to authenticate",
        ),
    ],
)
def test_an_unsafe_tcp_listener_stops_the_daemon_before_it_listens(args: tuple[str, ...], message: str) -> None:
    result = _fleetpyd("--api-socket", "", *args)
    assert result.returncode == 1
    assert result.stderr.startswith(message), result.stderr


# ---------------------------------------------------------------------------------------------- rotation


async def _status(url: str, ca: str, client: Issued | None = None, token: str = "") -> int | str:
    """The status of GET /fleet/v1/machines, or the name of the error when the TLS handshake fails."""
    context = ssl.create_default_context(cafile=ca)
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, force_close=True)) as http,
            http.get(url + "/fleet/v1/machines", headers=headers) as response,
        ):
            return response.status
    except aiohttp.ClientError as exc:
        return type(exc).__name__


async def test_sighup_rotates_certificates_client_cas_and_tokens_without_closing_the_listener(
    etcd: EtcdServer, workdir: str
) -> None:
    name = uuid.uuid4().hex[:8]
    directory = os.path.join(workdir, f"rotate-{name}")
    pki = Pki(directory)
    server_ca = pki.authority("server")
    old_ca, new_ca = pki.authority("clients-old"), pki.authority("clients-new")
    old_server, new_server = pki.issue(server_ca, "api-old"), pki.issue(server_ca, "api-new")
    old_client, new_client = pki.issue(old_ca, "old-client", ips=()), pki.issue(new_ca, "new-client", ips=())
    # A CA the system trusts (SSL_CERT_FILE stands in for the system's bundle) vouches for no API client.
    public_ca = pki.authority("public")
    outsider = pki.issue(public_ca, "outsider", ips=())
    old_token, new_token = "old-token-0123456789abcdef", "new-token-0123456789abcdef"
    port = free_port()
    sock = os.path.join(directory, "api.sock")
    config = os.path.join(directory, "fleetpy.conf")

    def write(server: Issued, client_ca: str, token: str) -> None:
        tokens = os.path.join(directory, f"tokens-{token[:3]}")
        with open(tokens, "w") as handle:
            handle.write(token + "\n")
        os.chmod(tokens, 0o600)
        with open(config, "w") as handle:
            handle.write(
                f"etcd_servers = {etcd.endpoint}\netcd_key_prefix = /rotate-{name}\napi_socket = {sock}\n"
                f"api_listen = 127.0.0.1:{port}\napi_tls_cert_file = {server.cert}\n"
                f"api_tls_key_file = {server.key}\napi_tls_client_ca_file = {client_ca}\napi_tokens_file = {tokens}\n"
                f"runtime_directory = {directory}\n"
            )

    write(old_server, old_ca.cert, old_token)
    command = [sys.executable, "-m", "fleetpy.cli.fleetpyd", "--disable-agent", "--disable-engine", "--config", config]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPY_")}
    env["SSL_CERT_FILE"] = public_ca.cert
    api = start_process(command, sock, os.path.join(directory, "fleetpyd.log"), env=env)
    url = f"https://127.0.0.1:{port}"
    try:
        wait_serving(api)
        assert await _status(url, server_ca.cert, old_client) == 200
        assert await _status(url, server_ca.cert, token=old_token) == 200
        assert await _status(url, server_ca.cert, new_client) != 200
        assert await _status(url, server_ca.cert, outsider) != 200, "only api_tls_client_ca_file vouches for clients"

        write(new_server, new_ca.cert, new_token)
        api.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "SIGHUP: configuration reloaded" not in api.log_text():
            assert time.monotonic() < deadline, api.log_text()
            await asyncio.sleep(0.05)

        assert await _status(url, server_ca.cert, new_client) == 200, "the new client CA is trusted"
        assert await _status(url, server_ca.cert, old_client) != 200, "the old client CA no longer is"
        assert await _status(url, server_ca.cert, token=new_token) == 200
        assert await _status(url, server_ca.cert, token=old_token) == 401
        served = ssl.get_server_certificate(("127.0.0.1", port), ca_certs=server_ca.cert)
        with open(new_server.cert) as handle:
            assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(handle.read()), "the new certificate"
        assert api.process.poll() is None
    finally:
        stop_process(api)
