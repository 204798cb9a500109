"""What every fleetpyctl command shares: its state on the click context (``Ctl``), the one place that turns
errors into messages and exit codes (``run``), and the options of the listing commands.

Kept apart from ``fleetpyctl`` so that commands can live in modules of their own (``remote``) and be registered
on the group with ``main.add_command``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from fleetpy.cli.output import tabwrite
from fleetpy.cli.sshclient import SshOptions, TunnelError, open_tunnel
from fleetpy.client import ApiError, ApiMachine, Client, EndpointUnavailable
from fleetpy.config import DEFAULT_API_SOCKET
from fleetpy.errors import FleetError, InvalidUnit
from fleetpy.unit import FLEETCTL_SUFFIXES, UnitFile, mangle_name, name_info

DEFAULT_ENDPOINT = f"unix://{DEFAULT_API_SOCKET}"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


class CliError(Exception):
    """Print ``message`` to stderr and exit with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass
class Ctl:
    """The state of one invocation, on the click context."""

    endpoint: str
    timeout: float
    tls: ssl.SSLContext | None = None
    ssh: SshOptions = field(default_factory=SshOptions)
    token: str = ""
    client: Client | None = None
    _machines: list[ApiMachine] | None = field(default=None)

    async def machines(self) -> list[ApiMachine]:
        """The machines, fetched once per invocation."""
        if self._machines is None:
            assert self.client is not None
            self._machines = await self.client.machines()
        return self._machines

    async def ips(self) -> dict[str, str]:
        """Machine ID → public IP, fetched once per invocation."""
        return {m.id: m.primary_ip for m in await self.machines()}


def tls_context(ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext | None:
    """TLS for an ``https`` endpoint. The server is always verified: against ``ca_file`` when given, else the
    system's CAs (fleetctl turned verification off unless a client certificate was given, FLEET-SPEC §9.14).
    ``cert_file``/``key_file`` present a client certificate. ``None`` when no flag is set (aiohttp's default:
    verify against the system's CAs)."""
    if not (ca_file or cert_file or key_file):
        return None
    try:
        context = ssl.create_default_context(cafile=ca_file or None)
        if cert_file or key_file:
            context.load_cert_chain(cert_file or key_file, key_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"Unable to initialize client: cannot load TLS files: {exc}") from None
    return context


def read_token(path: str) -> str:
    """The bearer token in ``path`` (its first line), ``""`` without a path."""
    if not path:
        return ""
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as handle:
            token = handle.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"Unable to initialize client: cannot read the token file {path}: {exc}") from None
    if not token:
        raise CliError(f"Unable to initialize client: the token file {path} is empty")
    return token


def run(ctx: click.Context, body: Callable[[Ctl, Client], Awaitable[int | None]]) -> None:
    """Run ``body`` with a client of the API (through the SSH tunnel with ``--tunnel``, torn down when ``body``
    returns); the one place where errors become messages and exit codes."""
    ctl: Ctl = ctx.obj

    async def main() -> int | None:
        async with contextlib.AsyncExitStack() as stack:
            tunnel = await stack.enter_async_context(open_tunnel(ctl.endpoint, ctl.ssh)) if ctl.ssh.tunnel else None
            client = await stack.enter_async_context(
                Client(ctl.endpoint, timeout=ctl.timeout, ssl_context=ctl.tls, token=ctl.token, tunnel=tunnel)
            )
            ctl.client = client
            return await body(ctl, client)

    try:
        code = asyncio.run(main())
    except CliError as exc:
        if exc.message:
            click.echo(exc.message, err=True)
        sys.exit(exc.code)
    except TunnelError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    except (EndpointUnavailable, ApiError) as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    except FleetError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code or 0)


def print_table(header: Sequence[str], rows: list[list[str]], no_legend: bool) -> None:
    all_rows = rows if no_legend else [[h.upper() for h in header], *rows]
    click.echo(tabwrite(all_rows), nl=False)


def print_json(rows: list[dict[str, Any]]) -> None:
    click.echo(json.dumps(rows, indent=2))


def output_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """``-o/--output table|json`` of the listing commands."""
    return click.option(
        "-o",
        "--output",
        "output_format",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="table: fleetctl's table; json: a JSON array, one object per row with the --fields as keys, "
        "values unshortened, null where the table shows '-'.",
    )(function)


# Unit files on disk, as fleetctl finds them (FLEET-SPEC §1.6): shared by the commands that create units and plan.


def resolve_argument(argument: str) -> tuple[str, str]:
    """(unit name, path of its local file). A file given by its path keeps its own name (so an invalid
    name is reported as such); any other argument gets fleetctl's name mangling."""
    if os.path.isfile(argument):
        return os.path.basename(argument), argument
    path = argument if argument.endswith(FLEETCTL_SUFFIXES) else argument + ".service"
    return mangle_name(argument), path


def read_unit_file(path: str) -> UnitFile:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError:
        raise CliError(f"Error creating units: unit file {path} is not valid UTF-8 text") from None
    except OSError as exc:
        raise CliError(f"Error creating units: cannot read {path}: {exc.strerror}") from None
    try:
        return UnitFile.from_text(text)
    except InvalidUnit as exc:
        raise CliError(f"Error creating units: invalid unit file {path}: {exc}") from None


def local_unit(name: str, path: str) -> tuple[UnitFile | None, str]:
    """The unit file on disk for ``name`` (for an instance, its template's), and the path it came from."""
    if os.path.isfile(path):
        return read_unit_file(path), path
    info = name_info(name)
    if info.is_instance:
        template_path = os.path.join(os.path.dirname(path), info.template)
        if os.path.isfile(template_path):
            return read_unit_file(template_path), template_path
    return None, ""
