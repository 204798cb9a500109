"""The ssh argument lists of ``--tunnel`` (``fleetpy.cli.sshclient``): what the flag accepts, the session each
endpoint gets, and that nothing of an endpoint or a tunnel flag can become an ssh option or a remote shell word."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetpy.cli.sshclient import (
    SshOptions,
    TunnelError,
    TunnelHost,
    parse_tunnel,
    remote_program,
    ssh_options,
    tunnel_command,
)

SSH = SshOptions(username="core", timeout=10, strict_host_key_checking=True, known_hosts_file="", tunnel="")
SESSION = ["-T", "-e", "none", "-a", "-x", "-o", "BatchMode=yes"]
BASE = ["ssh", "-l", "core", "-o", "ConnectTimeout=10", "-o", "StrictHostKeyChecking=yes"]


@pytest.mark.parametrize(
    ("flag", "parsed", "shown"),
    [
        pytest.param("bastion", TunnelHost("bastion", 22), "bastion:22", id="a host gets port 22, as fleetctl added"),
        pytest.param("bastion:2200", TunnelHost("bastion", 2200), "bastion:2200", id="a host and a port"),
        pytest.param("10.0.0.1:22", TunnelHost("10.0.0.1", 22), "10.0.0.1:22", id="an IPv4 address"),
        pytest.param("[fe80::1]:2222", TunnelHost("fe80::1", 2222), "[fe80::1]:2222", id="an IPv6 address in brackets"),
        pytest.param("[::1]", TunnelHost("::1", 22), "[::1]:22", id="an IPv6 address in brackets without port"),
        pytest.param("fe80::1", TunnelHost("fe80::1", 22), "[fe80::1]:22", id="a bare IPv6 address has no port"),
        pytest.param("admin@bastion:2200", TunnelHost("bastion", 2200, "admin"), "admin@bastion:2200", id="a user"),
    ],
)
def test_the_tunnel_flag_reads(flag: str, parsed: TunnelHost, shown: str) -> None:
    assert parse_tunnel(flag) == parsed
    assert str(parsed) == shown


@pytest.mark.parametrize(
    "flag",
    [
        pytest.param("-oProxyCommand=touch /tmp/x", id="an ssh option"),
        pytest.param("bastion:", id="an empty port"),
        pytest.param("bastion:0", id="port 0"),
        pytest.param("bastion:65536", id="a port too large"),
        pytest.param("bastion:ssh", id="a port that is not a number"),
        pytest.param("[::1", id="an unclosed bracket"),
        pytest.param("[::1]x", id="garbage after the bracket"),
        pytest.param("bas tion", id="a space"),
        pytest.param("", id="nothing"),
        pytest.param("@bastion", id="an empty user"),
        pytest.param("-l@bastion", id="a user that is an option"),
    ],
)
def test_the_tunnel_flag_refuses(flag: str) -> None:
    with pytest.raises(
        TunnelError, match=r"^Unable to initialize client: invalid --tunnel .*: expected host\[:port\]$"
    ):
        parse_tunnel(flag)


@given(st.text(max_size=40))
def test_no_tunnel_flag_becomes_an_ssh_option(flag: str) -> None:
    try:
        host = parse_tunnel(flag)
    except TunnelError:
        return
    argv = tunnel_command(("http://fleetpy", "/run/fleetpy/fleetpy.sock"), host, SSH)
    assert argv[argv.index("--") + 1] == host.host
    assert not host.host.startswith("-")
    assert not host.user.startswith("-")
    assert not any(c.isspace() for c in host.host + host.user)


def test_a_unix_endpoint_runs_fd_forward_on_the_tunnel_host() -> None:
    argv = tunnel_command(("http://fleetpy", "/run/fleetpy/fleetpy.sock"), TunnelHost("bastion"), SSH)
    assert argv == [*BASE, *SESSION, "--", "bastion", "fleetpyctl fd-forward /run/fleetpy/fleetpy.sock"]


@pytest.mark.parametrize(
    ("endpoint", "target"),
    [
        pytest.param("http://10.0.0.1:8080", "10.0.0.1:8080", id="http with a port"),
        pytest.param("http://api.example", "api.example:80", id="http without a port is port 80"),
        pytest.param("https://api.example", "api.example:443", id="https without a port is port 443"),
        pytest.param("https://[fd00::5]:8443", "[fd00::5]:8443", id="an IPv6 address keeps its brackets"),
    ],
)
def test_a_tcp_endpoint_is_dialed_from_the_tunnel_host(endpoint: str, target: str) -> None:
    argv = tunnel_command((endpoint, ""), TunnelHost("bastion", 2200), SSH)
    assert argv == [*BASE, "-p", "2200", *SESSION, "-W", target, "--", "bastion"]


def test_the_sessions_take_the_global_ssh_flags_and_the_tunnels_user() -> None:
    options = SshOptions(
        username="admin", timeout=2.4, strict_host_key_checking=False, known_hosts_file="/k/hosts", tunnel="x"
    )
    assert ssh_options(options, port=22) == [
        "ssh", "-l", "admin", "-o", "ConnectTimeout=2", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/k/hosts",
    ]  # fmt: skip
    argv = tunnel_command(("http://fleetpy", "/s.sock"), TunnelHost("bastion", 22, "ops"), options)
    assert argv[:3] == ["ssh", "-l", "ops"]


def test_the_remote_program_can_be_named_with_arguments() -> None:
    options = SshOptions(tunnel_command="sudo -n '/opt/fleet py/bin/fleetpyctl'")
    argv = tunnel_command(("http://fleetpy", "/s.sock"), TunnelHost("bastion"), options)
    assert shlex.split(argv[-1]) == ["sudo", "-n", "/opt/fleet py/bin/fleetpyctl", "fd-forward", "/s.sock"]
    assert remote_program("") == ["fleetpyctl"]
    with pytest.raises(TunnelError, match=r"FLEETPYCTL_TUNNEL_COMMAND .*No closing quotation"):
        remote_program("fleetpyctl 'x")


@given(st.text(alphabet=st.characters(blacklist_characters="\0"), min_size=1, max_size=60))
def test_a_socket_path_is_one_word_of_the_remote_command(path: str) -> None:
    """sshd hands the remote command to a shell: the path must come out of it as the very same single word."""
    argv = tunnel_command(("http://fleetpy", path), TunnelHost("bastion"), SSH)
    assert argv[-2] == "bastion"
    assert shlex.split(argv[-1]) == ["fleetpyctl", "fd-forward", path]
