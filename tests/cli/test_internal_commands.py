"""The hidden commands (FLEET-SPEC §1.4): ``verify``, deprecated, and ``fd-forward``, the far end of ``--tunnel``,
run as ``python -m fleetpy.cli.fleetpyctl`` subprocesses; fd-forward copies against a real unix socket server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner

from fleetpy.cli.fleetpyctl import main
from tests.support import ROOT

FLEETPYCTL = [sys.executable, "-m", "fleetpy.cli.fleetpyctl"]


def fleetpyctl(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*FLEETPYCTL, *args], input=stdin, capture_output=True, cwd=ROOT, timeout=30, check=False)


# ---------------------------------------------------------------------------------------------- verify


@pytest.mark.parametrize("args", [(), ("hello.service",), ("a", "b", "--whatever")])
def test_verify_is_deprecated_and_exits_2(args: tuple[str, ...]) -> None:
    result = fleetpyctl("verify", *args)
    assert (result.returncode, result.stdout) == (2, b"")
    assert result.stderr.decode() == (
        'Command "verify" is deprecated, DEPRECATED - No longer works\n'
        "WARNING: The signed/verified units feature is DEPRECATED and cannot be used.\n"
    )


def test_the_hidden_commands_are_not_in_the_help() -> None:
    listed = CliRunner().invoke(main, ["--help"], prog_name="fleetpyctl").output
    commands = listed[listed.index("Commands:") :]
    assert "verify" not in commands
    assert "fd-forward" not in commands
    assert "version" in commands


# ---------------------------------------------------------------------------------------------- fd-forward errors


def test_fd_forward_wants_a_single_argument() -> None:
    for args in ((), ("a.sock", "b.sock")):
        result = fleetpyctl("fd-forward", *args)
        assert (result.returncode, result.stdout, result.stderr) == (1, b"", b"Provide a single argument\n")


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        pytest.param("", "empty path", id="an empty path"),
        pytest.param("/tmp/" + "x" * 120, "path longer than 107 bytes", id="a path too long for a unix socket"),
    ],
)
def test_fd_forward_refuses_what_is_no_unix_address(path: str, reason: str) -> None:
    result = fleetpyctl("fd-forward", path)
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr.decode() == f'Unable to use "{path}" as unix address: {reason}\n'


def test_fd_forward_says_why_it_cannot_dial(tmp_path) -> None:
    missing = str(tmp_path / "missing.sock")
    result = fleetpyctl("fd-forward", missing)
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr.decode() == (
        f"Failed dialing remote address: dial unix {missing}: connect: no such file or directory\n"
    )  # fleet exited 0 here
    not_a_socket = tmp_path / "file"
    not_a_socket.write_text("")
    refused = fleetpyctl("fd-forward", str(not_a_socket))
    assert refused.returncode == 1
    assert refused.stderr.decode() == (
        f"Failed dialing remote address: dial unix {not_a_socket}: connect: connection refused\n"
    )


# ---------------------------------------------------------------------------------------------- fd-forward copies


@pytest.fixture
def server(tmp_path) -> Iterator[Callable[[Callable[[socket.socket], None]], str]]:
    """``server(handler)``: a unix socket server that runs ``handler`` on its one connection, in a thread; the
    socket's path."""
    listeners: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def start(handler: Callable[[socket.socket], None]) -> str:
        path = str(tmp_path / f"s{len(listeners)}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(20)
        listeners.append(listener)

        def serve() -> None:
            connection, _ = listener.accept()
            with connection:
                handler(connection)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return path

    yield start
    for listener in listeners:
        listener.close()
    for thread in threads:
        thread.join(20)


def forwarding(path: str) -> subprocess.Popen[bytes]:
    pipe = subprocess.PIPE
    return subprocess.Popen([*FLEETPYCTL, "fd-forward", path], stdin=pipe, stdout=pipe, stderr=pipe, cwd=ROOT)


def _receive_all(connection: socket.socket) -> bytes:
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    return data


def test_fd_forward_copies_both_ways_until_the_socket_closes(server) -> None:
    """The server greets, reads until fd-forward's stdin has ended (fd-forward shuts down its sending side),
    then answers and closes: nothing of either direction is lost."""
    received: list[bytes] = []

    def handler(connection: socket.socket) -> None:
        connection.sendall(b"hello\n")
        data = _receive_all(connection)
        received.append(data)
        connection.sendall(b"got %d bytes\n" % len(data) + data.upper())

    path = server(handler)
    payload = os.urandom(300_000).hex().encode()[:500_000]  # larger than any pipe or socket buffer
    result = fleetpyctl("fd-forward", path, stdin=payload)
    assert (result.returncode, result.stderr) == (0, b"")
    assert received == [payload]
    assert result.stdout == b"hello\ngot %d bytes\n" % len(payload) + payload.upper()


def test_fd_forward_ends_when_the_socket_closes_even_if_stdin_stays_open(server) -> None:
    path = server(lambda connection: connection.sendall(b"bye\n"))
    with forwarding(path) as process:
        assert process.stdout is not None
        assert process.stdout.read() == b"bye\n"
        assert process.wait(10) == 0
        assert process.stdin is not None
        process.stdin.close()


def test_fd_forward_reports_a_failed_copy(server) -> None:
    """Its stdout is closed by the reader while the server still sends."""
    path = server(lambda connection: _send_until_refused(connection))
    with forwarding(path) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        assert process.stdout.read(10)
        process.stdout.close()
        assert process.wait(10) == 1
        assert process.stderr.read() == b"Encountered error during copy: broken pipe\n"


def _send_until_refused(connection: socket.socket) -> None:
    try:
        while True:
            connection.sendall(b"x" * 65536)
    except OSError:
        pass
