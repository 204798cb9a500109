"""fleetpyctl and the system's ``ssh`` client: the options fleetctl's global SSH flags become (shared by the
``ssh`` command and ``--tunnel``), the tunnel that carries API connections over SSH, and ``fd-forward``, the
program the tunnel runs at its far end (FLEET-SPEC §1.2, §1.4).

fleetctl spoke SSH itself, with the agent as its only key store. fleetpyctl runs the system's ``ssh`` with an
argument list, never a local shell string, so that the user's ssh configuration, agent and keys apply as they do
to ``ssh`` itself; ``--`` always ends ssh's options before the host.

The tunnel. fleetpyctl's HTTP client (``fleetpy.client``) connects to one unix socket per endpoint, in a private
temporary directory (mode 0700) that lives as long as the command. Each connection made to such a socket starts
one ``ssh`` session to the tunnel host and its bytes are copied unchanged both ways between the connection and
the session's stdin/stdout:

* unix endpoint: the session runs ``fleetpyctl fd-forward <socket path>`` on the tunnel host (fleetctl ran
  ``fleetctl fd-forward``); ``FLEETPYCTL_TUNNEL_COMMAND`` names another remote program;
* TCP endpoint: ``ssh -W host:port``, i.e. the tunnel host connects to the endpoint (SSH port forwarding).

TLS to an https endpoint runs inside the tunnel, end to end, in the client. A session that ssh ends with a
non-zero status is remembered with ssh's stderr, so that the client reports that rather than "Server
disconnected". The sessions' tasks are owned by the ``SshTunnel`` that ``open_tunnel`` closes: when the command
ends they get EOF, and the ssh processes still running a moment later are killed.

Error messages of fd-forward are fleet's; fleet exited 0 when it could not dial the socket, fd-forward exits 1
on every error so that the tunnel sees the failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import shlex
import shutil
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from fleetpy.client import parse_endpoints
from fleetpy.unit import go_quote

log = logging.getLogger(__name__)
DEFAULT_TUNNEL_COMMAND = "fleetpyctl"
CHUNK = 65536
STDERR_LIMIT = 4096  # the last bytes of ssh's stderr kept for an error message
GRACE = 2.0  # seconds a session may take to end once its connection or the command has ended
UNIX_PATH_MAX = 107  # sun_path less its terminating NUL
Socket = socket.socket  # ``SshTunnel.socket`` hides the module's name inside the class

# An IPv4 or IPv6 address or a DNS name: letters, digits, dots, hyphens and colons, never a leading hyphen.
ADDRESS = re.compile(r"[0-9A-Za-z][0-9A-Za-z.:-]{0,252}")


class TunnelError(Exception):
    """A tunnel that cannot be set up, or an fd-forward that fails: ``str()`` is the message for the user."""


@dataclass
class SshOptions:
    """The global SSH flags (used by ``ssh`` and ``--tunnel``)."""

    username: str = "core"
    tunnel: str = ""
    known_hosts_file: str = ""
    strict_host_key_checking: bool = True
    timeout: float = 10.0
    tunnel_command: str = DEFAULT_TUNNEL_COMMAND  # the remote fleetpyctl (FLEETPYCTL_TUNNEL_COMMAND)


def ssh_options(options: SshOptions, *, port: int, username: str = "") -> list[str]:
    """``ssh`` and the options every session takes from the global flags, up to (not including) the host."""
    args = [
        "ssh",
        "-l",
        username or options.username,
        "-o",
        f"ConnectTimeout={max(1, round(options.timeout))}",
        "-o",
        f"StrictHostKeyChecking={'yes' if options.strict_host_key_checking else 'no'}",
    ]
    if options.known_hosts_file:
        args += ["-o", f"UserKnownHostsFile={options.known_hosts_file}"]
    if port != 22:
        args += ["-p", str(port)]
    return args


# ---------------------------------------------------------------------------------------------- the tunnel


@dataclass(frozen=True, slots=True)
class TunnelHost:
    """``--tunnel``: ``[user@]host[:port]``; port 22 when none is given (fleetctl added ``:22``)."""

    host: str
    port: int = 22
    user: str = ""

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}" if self.user else f"{host}:{self.port}"


def parse_tunnel(tunnel: str) -> TunnelHost:
    """``[user@]host[:port]``, ``[v6 address]:port`` or a bare IPv6 address."""
    problem = f"Unable to initialize client: invalid --tunnel {tunnel!r}: expected host[:port]"
    user, at, rest = tunnel.rpartition("@")
    if at and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", user):
        raise TunnelError(problem)
    port_text = ""
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise TunnelError(problem)
        port_text = after[1:]
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host = rest
    if not (ADDRESS.fullmatch(host) or _is_ip(host)):
        raise TunnelError(problem)
    port = 22
    if port_text or rest.endswith(":"):
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise TunnelError(problem)
        port = int(port_text)
    return TunnelHost(host, port, user)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def remote_program(command: str) -> list[str]:
    """The words of ``FLEETPYCTL_TUNNEL_COMMAND`` (a program and maybe arguments, e.g. ``sudo -n fleetpyctl``)."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise TunnelError(f"Unable to initialize client: FLEETPYCTL_TUNNEL_COMMAND {command!r}: {exc}") from None
    return words or [DEFAULT_TUNNEL_COMMAND]


def tunnel_command(endpoint: tuple[str, str], tunnel: TunnelHost, options: SshOptions) -> list[str]:
    """The ``ssh`` argument list of one session to ``endpoint`` (base URL, unix socket path or ``""``).

    The remote command of a unix endpoint is one shell-quoted string, since sshd hands it to the remote user's
    shell; nothing else of the endpoint reaches a shell."""
    args = ssh_options(options, port=tunnel.port, username=tunnel.user)
    # no terminal, no escape character, nothing forwarded, and never a prompt: sessions open in the background
    args += ["-T", "-e", "none", "-a", "-x", "-o", "BatchMode=yes"]
    base, socket_path = endpoint
    if socket_path:
        remote = shlex.join([*remote_program(options.tunnel_command), "fd-forward", socket_path])
        return [*args, "--", tunnel.host, remote]
    scheme, _, netloc = base.partition("://")
    host, port = _host_port(netloc, 443 if scheme == "https" else 80)
    return [*args, "-W", f"[{host}]:{port}" if ":" in host else f"{host}:{port}", "--", tunnel.host]


def _host_port(netloc: str, default: int) -> tuple[str, int]:
    if netloc.startswith("["):
        host, _, after = netloc[1:].partition("]")
        return host, int(after[1:]) if after.startswith(":") else default
    host, colon, port = netloc.rpartition(":")
    return (host, int(port)) if colon else (netloc, default)


class SshTunnel:
    """The local end of the tunnel (``fleetpy.client.Tunnel``): one listening socket per endpoint, one ssh
    session per connection. Made by ``open_tunnel``."""

    def __init__(self, host: TunnelHost, commands: Sequence[list[str]], directory: str) -> None:
        self.host = host
        self.commands = list(commands)
        self.paths = [os.path.join(directory, f"{index}.sock") for index in range(len(commands))]
        self._failures: dict[int, str] = {}
        self._accepting: list[asyncio.Task[None]] = []
        self._sessions: set[asyncio.Task[None]] = set()
        self._processes: set[asyncio.subprocess.Process] = set()

    @property
    def name(self) -> str:
        return f"the SSH tunnel {self.host}"

    def socket(self, index: int) -> str:
        return self.paths[index]

    def failure(self, index: int) -> str:
        return self._failures.get(index, "")

    def start(self, listeners: Sequence[Socket]) -> None:
        """Accept connections on ``listeners`` (one per endpoint, in order) until ``close``."""
        self._accepting = [asyncio.create_task(self._accept(i, s)) for i, s in enumerate(listeners)]

    async def close(self) -> None:
        """Stop accepting; give the sessions ``GRACE`` seconds to end by themselves (the client has closed its
        connections, so their ssh processes have seen EOF), kill the ssh processes still running, and wait for
        every task of the tunnel. Not a ``TaskGroup``: the command's own exception must leave the tunnel as it
        came, not wrapped in an ``ExceptionGroup``."""
        for task in self._accepting:
            task.cancel()
        if self._sessions:
            await asyncio.wait(set(self._sessions), timeout=GRACE)
        for process in list(self._processes):
            if process.returncode is None:
                process.kill()
        tasks = [*self._accepting, *self._sessions]
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                raise outcome  # a bug of the tunnel: never swallowed

    async def _accept(self, index: int, listener: Socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            connection, _ = await loop.sock_accept(listener)
            session = asyncio.create_task(self.carry(index, connection))
            self._sessions.add(session)
            session.add_done_callback(self._sessions.discard)

    async def carry(self, index: int, connection: Socket) -> None:
        """Copy one connection to and from an ssh session; remember why the session failed, if it did, before
        the connection is closed (so the client finds the reason when it sees the connection end)."""
        reader, writer = await asyncio.open_unix_connection(sock=connection)
        log.debug("tunnel session: %s", shlex.join(self.commands[index]))
        try:
            process = await asyncio.create_subprocess_exec(
                *self.commands[index],
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            self._failures[index] = f"cannot run {self.commands[index][0]}: {exc.strerror}"
            writer.close()
            return
        self._processes.add(process)
        try:
            assert process.stdin is not None
            assert process.stdout is not None
            assert process.stderr is not None
            async with asyncio.TaskGroup() as group:
                upload = group.create_task(_copy(reader, process.stdin, close=True))
                errors = group.create_task(_tail(process.stderr))
                await _copy(process.stdout, writer, close=False)
                upload.cancel()
                try:
                    code = await asyncio.wait_for(process.wait(), GRACE)
                except TimeoutError:
                    process.kill()
                    code = await process.wait()
            if code == 0:
                self._failures.pop(index, None)
            else:
                self._failures[index] = _ssh_failure(code, errors.result())
        finally:
            writer.close()
            if process.returncode is None:
                process.kill()
                await process.wait()
            self._processes.discard(process)


@contextlib.asynccontextmanager
async def open_tunnel(endpoint: str, options: SshOptions) -> AsyncIterator[SshTunnel]:
    """The tunnel to every endpoint of ``endpoint`` through ``options.tunnel``, until the block ends."""
    host = parse_tunnel(options.tunnel)
    commands = [tunnel_command(e, host, options) for e in parse_endpoints(endpoint)]
    directory = tempfile.mkdtemp(prefix="fleetpyctl-")  # mode 0700: only this user can use the tunnel
    listeners: list[socket.socket] = []
    try:
        tunnel = SshTunnel(host, commands, directory)
        for path in tunnel.paths:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listeners.append(listener)
            try:
                listener.bind(path)
            except OSError as exc:
                raise TunnelError(f"Unable to initialize client: cannot create {path} for the tunnel: {exc}") from None
            listener.listen(16)
            listener.setblocking(False)
        tunnel.start(listeners)
        try:
            yield tunnel
        finally:
            await tunnel.close()
    finally:
        for listener in listeners:
            listener.close()
        shutil.rmtree(directory, ignore_errors=True)


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, close: bool) -> None:
    """Copy until ``source`` ends, then close ``sink`` if asked. A side that went away ends the copy quietly:
    ssh's status says why, or the caller ends a session whose client left."""
    try:
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        if close:
            sink.close()


async def _tail(stderr: asyncio.StreamReader) -> bytes:
    kept = b""
    while data := await stderr.read(CHUNK):
        kept = (kept + data)[-STDERR_LIMIT:]
    return kept


def _ssh_failure(code: int, stderr: bytes) -> str:
    what = f"ssh was killed by signal {-code}" if code < 0 else f"ssh exited with status {code}"
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    return f"{what}: {'; '.join(lines)}" if lines else what


# ---------------------------------------------------------------------------------------------- fd-forward


def fd_forward(path: str, *, stdin: int = 0, stdout: int = 1) -> None:
    """Copy ``stdin`` to the unix socket ``path`` and the socket to ``stdout``. At the end of ``stdin`` the
    socket's sending side is shut down and the copy goes on until the socket's other end closes it (fleet's
    stopped at once, which could lose an answer still on its way). Raises ``TunnelError`` with fleet's
    messages."""
    problem = _unix_address_problem(path)
    if problem:
        raise TunnelError(f"Unable to use {go_quote(path)} as unix address: {problem}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            raise TunnelError(f"Failed dialing remote address: dial unix {path}: connect: {_strerror(exc)}") from None
        failures: list[OSError] = []

        def upload() -> None:
            try:
                while data := os.read(stdin, CHUNK):
                    sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                failures.append(exc)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # ends the download below

        threading.Thread(target=upload, name="fd-forward stdin", daemon=True).start()
        try:
            while data := sock.recv(CHUNK):
                view = memoryview(data)
                while view:
                    view = view[os.write(stdout, view) :]
        except OSError as exc:
            failures.insert(0, exc)
        if failures:
            raise TunnelError(f"Encountered error during copy: {_strerror(failures[0])}")
    finally:
        sock.close()


def _unix_address_problem(path: str) -> str:
    if not path:
        return "empty path"
    if "\0" in path:
        return "path contains a NUL byte"
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        return f"path longer than {UNIX_PATH_MAX} bytes"
    return ""


def _strerror(exc: OSError) -> str:
    """Go's wording of a system error: its lower-case text, e.g. ``no such file or directory``."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]
