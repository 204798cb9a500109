"""The etcd adapter against a real etcd that demands TLS with client certificates, and one that demands a
username and password: with the right credentials it works, without them it is refused with a clear error, and
the server's certificate is always verified against the configured CA. The certificates are made by the test.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from fleetpy.devcluster import etcd_binary, free_port
from fleetpy.errors import ConfigError, RegistryAccessDenied, RegistryUnavailable
from fleetpy.registry.etcd import EtcdClient, EtcdTls
from tests.pki import Authority, Issued, Pki


@dataclass
class Etcd:
    endpoint: str
    process: subprocess.Popen[bytes]
    log: str


def _start(directory: str, *, tls: tuple[Authority, Issued] | None = None) -> Etcd:
    os.makedirs(directory, exist_ok=True)
    scheme = "https" if tls else "http"
    client, peer = free_port(), free_port()
    endpoint = f"{scheme}://127.0.0.1:{client}"
    command = [
        etcd_binary(), "--name", "sec", "--data-dir", os.path.join(directory, "data"),
        "--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
        "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"sec=http://127.0.0.1:{peer}",
    ]  # fmt: skip
    if tls:
        authority, server = tls
        command += [
            "--cert-file", server.cert, "--key-file", server.key,
            "--client-cert-auth", "--trusted-ca-file", authority.cert,
        ]  # fmt: skip
    log = os.path.join(directory, "etcd.log")
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=out, start_new_session=True)
    etcd = Etcd(endpoint, process, log)
    deadline = time.monotonic() + 30
    while b"ready to serve client requests" not in open(log, "rb").read():  # noqa: SIM115
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(etcd)
            with open(log, errors="replace") as handle:
                raise AssertionError(f"etcd did not start:\n{handle.read()[-2000:]}")
        time.sleep(0.05)
    return etcd


def _stop(etcd: Etcd) -> None:
    if etcd.process.poll() is None:
        etcd.process.kill()
    etcd.process.wait()


@dataclass
class TlsSetup:
    etcd: Etcd
    ca: Authority
    client: Issued
    stranger_ca: Authority
    stranger: Issued


@pytest.fixture(scope="module")
def tls_etcd(workdir: str) -> Iterator[TlsSetup]:
    pki = Pki(os.path.join(workdir, "etcd-pki"))
    ca = pki.authority("etcd")
    server = pki.issue(ca, "etcd-server", ips=("127.0.0.1",), dns=("localhost",))
    client = pki.issue(ca, "fleetpy-client", ips=())
    stranger_ca = pki.authority("stranger")
    stranger = pki.issue(stranger_ca, "stranger-client", ips=())
    etcd = _start(os.path.join(workdir, "etcd-tls"), tls=(ca, server))
    try:
        yield TlsSetup(etcd, ca, client, stranger_ca, stranger)
    finally:
        _stop(etcd)


async def _round_trip(client: EtcdClient, key: str) -> bytes:
    try:
        await client.put(key, b"hello")
        kv = await client.get(key)
        assert kv is not None
        return kv.value
    finally:
        await client.close()


async def test_tls_with_the_ca_and_a_client_certificate_works(tls_etcd: TlsSetup) -> None:
    tls = EtcdTls(ca_file=tls_etcd.ca.cert, cert_file=tls_etcd.client.cert, key_file=tls_etcd.client.key)
    assert await _round_trip(EtcdClient([tls_etcd.etcd.endpoint], tls=tls), "/sec/tls") == b"hello"


@pytest.mark.parametrize(
    "which",
    [
        pytest.param("no client certificate", id="without a client certificate"),
        pytest.param("a client certificate from another CA", id="with a certificate etcd does not trust"),
        pytest.param("a CA that did not sign the server", id="verifying the server against the wrong CA"),
    ],
)
async def test_tls_without_the_right_credentials_is_refused(tls_etcd: TlsSetup, which: str) -> None:
    tls = {
        "no client certificate": EtcdTls(ca_file=tls_etcd.ca.cert),
        "a client certificate from another CA": EtcdTls(
            ca_file=tls_etcd.ca.cert, cert_file=tls_etcd.stranger.cert, key_file=tls_etcd.stranger.key
        ),
        "a CA that did not sign the server": EtcdTls(
            ca_file=tls_etcd.stranger_ca.cert, cert_file=tls_etcd.client.cert, key_file=tls_etcd.client.key
        ),
    }[which]
    client = EtcdClient([tls_etcd.etcd.endpoint], tls=tls, timeout=2)
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable) as caught:
        await _round_trip(client, "/sec/refused")
    assert time.monotonic() - started < 30, "refused promptly, not after endless retries"
    assert "etcd unavailable" in str(caught.value)
    assert "the TLS handshake failed: check etcd_cafile, etcd_certfile and etcd_keyfile" in str(caught.value)


def test_tls_options_need_https_endpoints_and_both_certificate_and_key(tls_etcd: TlsSetup) -> None:
    with pytest.raises(ConfigError, match="use https:// endpoints for TLS"):
        EtcdClient(["http://127.0.0.1:2379"], tls=EtcdTls(ca_file=tls_etcd.ca.cert))
    with pytest.raises(ConfigError, match="etcd_certfile and etcd_keyfile must be given together"):
        EtcdClient([tls_etcd.etcd.endpoint], tls=EtcdTls(ca_file=tls_etcd.ca.cert, cert_file=tls_etcd.client.cert))
    with pytest.raises(ConfigError, match="cannot read etcd_cafile"):
        EtcdClient([tls_etcd.etcd.endpoint], tls=EtcdTls(ca_file="/nonexistent/ca.pem"))


# ---------------------------------------------------------------------------------------------- username


def _gateway(endpoint: str, path: str, body: dict[str, object], token: str = "") -> dict[str, object]:
    """etcd's own JSON gateway: how an operator's tool would set up users, without etcdctl."""
    request = urllib.request.Request(
        f"{endpoint}/v3/{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    if token:
        request.add_header("Authorization", token)
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.load(response))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def auth_etcd(workdir: str) -> Iterator[Etcd]:
    """An etcd with authentication on: ``root``, and ``fleetpy`` who may read and write only under /allowed/."""
    etcd = _start(os.path.join(workdir, "etcd-auth"))
    try:
        for name, password in (("root", "root-secret"), ("fleetpy", "fleetpy-secret")):
            _gateway(etcd.endpoint, "auth/user/add", {"name": name, "password": password})
        _gateway(etcd.endpoint, "auth/role/add", {"name": "root"})
        _gateway(etcd.endpoint, "auth/user/grant", {"user": "root", "role": "root"})
        _gateway(etcd.endpoint, "auth/role/add", {"name": "fleetpy"})
        permission = {"permType": "READWRITE", "key": _b64("/allowed/"), "range_end": _b64("/allowed0")}
        _gateway(etcd.endpoint, "auth/role/grant", {"name": "fleetpy", "perm": permission})
        _gateway(etcd.endpoint, "auth/user/grant", {"user": "fleetpy", "role": "fleetpy"})
        _gateway(etcd.endpoint, "auth/enable", {})
        yield etcd
    finally:
        _stop(etcd)


async def test_username_and_password_work_within_the_users_permissions(auth_etcd: Etcd) -> None:
    client = EtcdClient([auth_etcd.endpoint], username="fleetpy", password="fleetpy-secret")
    assert await _round_trip(client, "/allowed/key") == b"hello"


@pytest.mark.parametrize(
    ("username", "password", "key"),
    [
        pytest.param("fleetpy", "wrong", "/allowed/key", id="a wrong password"),
        pytest.param("nobody", "x", "/allowed/key", id="an unknown user"),
        pytest.param("", "", "/allowed/key", id="no credentials"),
        pytest.param("fleetpy", "fleetpy-secret", "/elsewhere/key", id="a key outside the user's permissions"),
    ],
)
async def test_etcd_refusing_the_credentials_is_a_clear_error(
    auth_etcd: Etcd, username: str, password: str, key: str
) -> None:
    client = EtcdClient([auth_etcd.endpoint], username=username, password=password, timeout=2)
    started = time.monotonic()
    with pytest.raises(RegistryAccessDenied, match="etcd refused the request"):
        await _round_trip(client, key)
    assert time.monotonic() - started < 10, "refused at once: retrying cannot help"


async def test_a_password_over_plain_http_off_loopback_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    for endpoints in (["http://127.0.0.1:2379"], ["http://192.0.2.1:2379"]):
        await EtcdClient(endpoints, username="fleetpy", password="secret").close()
    warnings = [r.getMessage() for r in caplog.records if "sent in clear" in r.getMessage()]
    assert warnings == ["etcd_password is sent in clear over http:// to http://192.0.2.1:2379: use https:// endpoints"]
