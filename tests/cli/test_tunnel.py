"""``fleetpyctl --tunnel`` (FLEET-SPEC §1.2) against a real fleetpyd API, through a real sshd.

The module starts its own ``sshd -D`` on a free 127.0.0.1 port with a host key and an authorized key it
generates. The key is handed to ssh by an ``ssh-agent`` of the module's own (ssh looks for keys in the passwd home
directory, not in $HOME), known hosts go to the test directory (``--known-hosts-file``,
``--strict-host-key-checking=false``), and the tunnel's far end runs this virtualenv's fleetpyctl
(``FLEETPYCTL_TUNNEL_COMMAND``), since sshd's sessions have the system's PATH. The tunnel host is this machine,
so each test also checks in sshd's log that its commands really went through sshd. sshd and the agent are stopped
by PID when the module ends, also when a test fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from fleetpy.devcluster import EtcdServer, free_port, terminate
from fleetpy.model import DesiredState
from fleetpy.registry.store import EtcdRegistry
from tests.api.seeding import add_machine, place, report
from tests.cli.conftest import ApiProcess, Ctl, start_process, stop_process, wait_serving
from tests.pki import Pki
from tests.support import CtlResult, wait_for, write_unit

M1 = "4d3895379ed84e6c9c4a2d5b9b6a1f01"
HELLO = "[Unit]\nDescription=Hello World\n\n[Service]\nExecStart=/bin/sleep 100\n"
TOKEN = "tunnel-token-0123456789abcdef"
FLEETPYCTL = os.path.join(os.path.dirname(sys.executable), "fleetpyctl")


@dataclass
class Sshd:
    port: int
    log: str
    known_hosts: str
    agent_socket: str

    def flags(self, port: int | None = None) -> list[str]:
        """fleetpyctl's global flags for a tunnel through this sshd (or through ``port``)."""
        return [
            "--tunnel", f"127.0.0.1:{port or self.port}", "--ssh-username", "root",
            "--known-hosts-file", self.known_hosts, "--strict-host-key-checking=false", "--ssh-timeout", "5",
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        return {"SSH_AUTH_SOCK": self.agent_socket, "FLEETPYCTL_TUNNEL_COMMAND": FLEETPYCTL}

    def sessions(self) -> int:
        """How many sessions sshd has accepted so far."""
        with open(self.log, errors="replace") as handle:
            return handle.read().count("Accepted publickey for root")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stop(process: subprocess.Popen[bytes]) -> None:
    terminate(process, 5)


@pytest.fixture(scope="module")
def sshd(workdir: str) -> Iterator[Sshd]:
    sshd_binary = shutil.which("sshd", path=f"/usr/sbin:/usr/local/sbin:{os.environ.get('PATH', '')}")
    assert sshd_binary, "sshd is not installed (apt-get install openssh-server; scripts/install-deps does it)"
    directory = os.path.join(workdir, f"sshd-{uuid.uuid4().hex[:6]}")
    os.makedirs(directory)
    for key in ("host", "user"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(directory, key)],
            check=True, capture_output=True,
        )  # fmt: skip
    shutil.copy(os.path.join(directory, "user.pub"), os.path.join(directory, "authorized_keys"))
    port = free_port()
    config = os.path.join(directory, "sshd_config")
    with open(config, "w") as handle:
        handle.write(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {directory}/host\n"
            f"AuthorizedKeysFile {directory}/authorized_keys\nPidFile none\nUsePAM no\nStrictModes no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "AllowTcpForwarding yes\nMaxStartups 100\n"
        )
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege separation directory
    log = os.path.join(directory, "sshd.log")
    agent_socket = os.path.join(directory, "agent.sock")
    with open(log, "wb") as out:
        server = subprocess.Popen([sshd_binary, "-D", "-e", "-f", config], stdout=out, stderr=subprocess.STDOUT)
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", agent_socket], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (_listening(port) and os.path.exists(agent_socket)):
            assert server.poll() is None, f"sshd exited; its log: {log}"
            assert agent.poll() is None, "ssh-agent exited"
            assert time.monotonic() < deadline, "sshd or ssh-agent did not start within 10 s"
            time.sleep(0.02)
        subprocess.run(
            ["ssh-add", "-q", os.path.join(directory, "user")],
            check=True, capture_output=True, env={**os.environ, "SSH_AUTH_SOCK": agent_socket},
        )  # fmt: skip
        yield Sshd(port, log, os.path.join(directory, "known_hosts"), agent_socket)
    finally:
        _stop(server)
        _stop(agent)


async def through(ctl: Ctl, sshd: Sshd, *args: str, port: int | None = None, **env: str) -> CtlResult:
    """``fleetpyctl --tunnel ... ARGS`` as a subprocess, through ``sshd``."""
    return await ctl.process(*sshd.flags(port), *args, env={**sshd.env(), **env})


async def _desired(registry: EtcdRegistry, name: str) -> bool:
    view = await registry.get_unit(name)
    return view is not None and view.record.desired == DesiredState.LAUNCHED


# ---------------------------------------------------------------------------------------------- unix endpoint


async def test_commands_reach_a_unix_endpoint_through_fd_forward_on_the_tunnel_host(
    ctl: Ctl, sshd: Sshd, registry: EtcdRegistry, files: str
) -> None:
    await add_machine(registry, M1, "10.0.0.1", {"region": "eu"})
    before = sshd.sessions()
    machines = await through(ctl, sshd, "list-machines")
    assert (machines.code, machines.out, machines.err) == (
        0,
        "MACHINE\t\tIP\t\tMETADATA\n4d389537...\t10.0.0.1\tregion=eu\n",
        "",
    )
    submitted = await through(ctl, sshd, "submit", write_unit(files, "hello.service", HELLO))
    assert (submitted.code, submitted.out, submitted.err) == (0, "Unit hello.service inactive\n", "")

    # a blocking start polls the API through the tunnel while the test is the engine and the agent
    waiting = asyncio.create_task(through(ctl, sshd, "start", "--block-attempts", "10", "hello.service"))
    await wait_for(lambda: _desired(registry, "hello.service"), timeout=15, what="the desired state launched")
    await place(registry, "hello.service", M1)
    await report(registry, M1, "hello.service", achieved=DesiredState.LAUNCHED)
    started = await waiting
    assert (started.code, started.out, started.err) == (0, "Unit hello.service launched on 4d389537.../10.0.0.1\n", "")

    units = await through(ctl, sshd, "list-units", "--no-legend")
    assert (units.code, units.out, units.err) == (0, "hello.service\t4d389537.../10.0.0.1\tactive\trunning\n", "")
    assert sshd.sessions() >= before + 4  # each command went through sshd


# ---------------------------------------------------------------------------------------------- TCP endpoints


@dataclass
class TcpApi:
    api: ApiProcess
    port: int
    ca: str  # "" for plain HTTP
    prefix: str


@pytest.fixture(params=["http", "https"])
def tcp_api(request: pytest.FixtureRequest, etcd: EtcdServer, prefix: str, workdir: str) -> Iterator[TcpApi]:
    """An API-only fleetpyd listening on 127.0.0.1 (plain or TLS, with a certificate for 127.0.0.1 only), where
    a bearer token is required."""
    name = f"tcp-{prefix.strip('/')}"
    directory = os.path.join(workdir, name)
    os.makedirs(directory)
    tokens = write_unit(directory, "tokens", f"{TOKEN}\n")
    os.chmod(tokens, 0o600)
    env = {**os.environ, "FLEETPY_CONFIG": "/dev/null", "FLEETPY_API_TOKENS_FILE": tokens}
    ca = ""
    if request.param == "https":
        pki = Pki(directory)
        authority = pki.authority("server")
        server = pki.issue(authority, "api", ips=("127.0.0.1",))
        env |= {"FLEETPY_API_TLS_CERT_FILE": server.cert, "FLEETPY_API_TLS_KEY_FILE": server.key}
        ca = authority.cert
    port = free_port()
    sock = os.path.join(directory, "api.sock")
    command = [
        sys.executable, "-m", "fleetpy.cli.fleetpyd", "--disable-agent", "--disable-engine", "--api-socket", sock,
        "--api-listen", f"127.0.0.1:{port}", "--etcd-servers", etcd.endpoint, "--etcd-key-prefix", prefix,
    ]  # fmt: skip
    api = start_process(command, sock, os.path.join(directory, "fleetpyd.log"), env=env)
    try:
        wait_serving(api)
        yield TcpApi(api, port, ca, prefix)
    finally:
        stop_process(api)


async def test_commands_reach_a_tcp_endpoint_through_ssh_forwarding(
    tcp_api: TcpApi, sshd: Sshd, registry: EtcdRegistry, files: str
) -> None:
    scheme = "https" if tcp_api.ca else "http"
    ctl = Ctl(f"{scheme}://127.0.0.1:{tcp_api.port}")
    env = {"FLEETPYCTL_TOKEN": TOKEN, "FLEETPYCTL_CA_FILE": tcp_api.ca}
    await add_machine(registry, M1, "10.0.0.1")
    before = sshd.sessions()
    machines = await through(ctl, sshd, "list-machines", "--no-legend", **env)
    assert (machines.code, machines.out, machines.err) == (0, "4d389537...\t10.0.0.1\t-\n", "")
    submitted = await through(ctl, sshd, "submit", write_unit(files, "hello.service", HELLO), **env)
    assert (submitted.code, submitted.out, submitted.err) == (0, "Unit hello.service inactive\n", "")
    started = await through(ctl, sshd, "start", "--no-block", "hello.service", **env)
    assert (started.code, started.out, started.err) == (0, "Triggered unit hello.service start\n", "")
    assert await _desired(registry, "hello.service")
    await place(registry, "hello.service", M1)
    await report(registry, M1, "hello.service", achieved=DesiredState.LAUNCHED)
    units = await through(ctl, sshd, "list-units", "--no-legend", **env)
    assert (units.code, units.out, units.err) == (0, "hello.service\t4d389537.../10.0.0.1\tactive\trunning\n", "")
    assert sshd.sessions() >= before + 4


@pytest.mark.parametrize("tcp_api", ["https"], indirect=True)
async def test_tls_through_the_tunnel_checks_the_endpoints_own_name(tcp_api: TcpApi, sshd: Sshd) -> None:
    """The certificate names 127.0.0.1 only: through the tunnel it is checked against the endpoint's host, so
    ``localhost`` (which the tunnel host reaches all the same) is refused, as without a tunnel."""
    env = {"FLEETPYCTL_TOKEN": TOKEN, "FLEETPYCTL_CA_FILE": tcp_api.ca}
    by_ip = await through(Ctl(f"https://127.0.0.1:{tcp_api.port}"), sshd, "list-units", **env)
    assert (by_ip.code, by_ip.err) == (0, "")
    by_name = await through(Ctl(f"https://localhost:{tcp_api.port}"), sshd, "list-units", **env)
    assert by_name.code == 1
    assert "certificate verify failed" in by_name.err
    assert "localhost" in by_name.err
    no_ca = await through(Ctl(f"https://127.0.0.1:{tcp_api.port}"), sshd, "list-units", FLEETPYCTL_TOKEN=TOKEN)
    assert no_ca.code == 1
    assert "certificate verify failed" in no_ca.err


# ---------------------------------------------------------------------------------------------- failures


async def test_a_failing_ssh_says_why_and_exits_1(ctl: Ctl, sshd: Sshd, workdir: str) -> None:
    closed = free_port()
    refused = await through(ctl, sshd, "list-units", port=closed)
    assert (refused.code, refused.out) == (1, "")
    assert refused.err == (
        "Error retrieving list of units from repository: cannot reach the fleetpy API at "
        f"{ctl.endpoint} through the SSH tunnel 127.0.0.1:{closed}: "
        f"ssh exited with status 255: ssh: connect to host 127.0.0.1 port {closed}: Connection refused\n"
    )

    # the remote fd-forward cannot dial the socket: its own message, through ssh
    missing = os.path.join(workdir, "no-such-api.sock")
    nothing = await Ctl(f"unix://{missing}").process(*sshd.flags(), "list-units", env=sshd.env())
    assert (nothing.code, nothing.out) == (1, "")
    assert nothing.err == (
        "Error retrieving list of units from repository: cannot reach the fleetpy API at "
        f"unix://{missing} through the SSH tunnel 127.0.0.1:{sshd.port}: "
        f"ssh exited with status 1: Failed dialing remote address: dial unix {missing}: connect: "
        "no such file or directory\n"
    )

    # an unknown host key with strict checking: ssh refuses, and never prompts
    strict = await ctl.process(
        "--tunnel", f"127.0.0.1:{sshd.port}", "--ssh-username", "root", "--known-hosts-file",
        os.path.join(workdir, "empty_known_hosts"), "list-units", env=sshd.env(),
    )  # fmt: skip
    assert (strict.code, strict.out) == (1, "")
    assert "ssh exited with status 255: " in strict.err
    assert "Host key verification failed." in strict.err

    # no remote program of that name
    absent = await through(ctl, sshd, "list-units", FLEETPYCTL_TUNNEL_COMMAND="/nonexistent/fleetpyctl")
    assert absent.code == 1
    assert "ssh exited with status 127: " in absent.err

    # no ssh client here at all
    no_client = await through(ctl, sshd, "list-units", PATH=os.path.join(workdir, "empty"))
    assert (no_client.code, no_client.out) == (1, "")
    assert no_client.err.endswith(
        f"through the SSH tunnel 127.0.0.1:{sshd.port}: cannot run ssh: No such file or directory\n"
    )


async def test_a_bad_tunnel_flag_is_refused_before_anything_runs(ctl: Ctl) -> None:
    result = await ctl.process("--tunnel", "-oProxyCommand=x", "list-units")
    assert (result.code, result.out) == (1, "")
    assert result.err == "Unable to initialize client: invalid --tunnel '-oProxyCommand=x': expected host[:port]\n"


async def test_no_ssh_process_outlives_the_command(ctl: Ctl, sshd: Sshd) -> None:
    """Looked for by the unique port of the tunnel in the command lines of this machine's processes."""
    result = await through(ctl, sshd, "list-units")
    assert result.code == 0

    def ssh_processes() -> list[str]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    argv = handle.read().split(b"\0")
            except OSError:
                continue
            if argv[:1] == [b"ssh"] and str(sshd.port).encode() in argv:
                found.append(pid)
        return found

    assert ssh_processes() == []
