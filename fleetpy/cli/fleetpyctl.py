"""``fleetpyctl``: fleetctl's commands, flags and output (FLEET-SPEC §1), with the quirks of §9 fixed.

Thin front door: each command parses, talks to the API through ``fleetpy.client``, prints. Errors are turned
into messages and exit codes in one place (``cli.common``: ``CliError`` and ``run``); state travels on the
click context. ``status``, ``journal`` and ``ssh`` live in ``cli.remote``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import click

from fleetpy import __version__
from fleetpy.cli import remote
from fleetpy.cli.common import (
    CONTEXT,
    DEFAULT_ENDPOINT,
    CliError,
    Ctl,
    local_unit,
    output_option,
    print_json,
    print_table,
    read_token,
    resolve_argument,
    run,
    tls_context,
)
from fleetpy.cli.output import check_fields, format_metadata, machine_id_legend, machine_legend
from fleetpy.cli.sshclient import DEFAULT_TUNNEL_COMMAND, SshOptions, TunnelError, fd_forward
from fleetpy.client import ApiError, ApiUnit, Client, EndpointUnavailable
from fleetpy.errors import InvalidUnit
from fleetpy.model import DesiredState
from fleetpy.unit import (
    UnitFile,
    mangle_name,
    name_info,
    serialize,
    unknown_requirement_warnings,
    validate_name,
    validate_requirements,
)

POLL = 0.25
ATTEMPT = 2.0


def block_attempts(no_block: bool, attempts: int) -> int:
    """fleetctl's getBlockAttempts: -1 do not wait, 0 wait forever, N about 2·N seconds."""
    if no_block:
        return -1
    return max(attempts, 0)


# -------------------------------------------------------------------------------------------------- the group


class Commands(click.Group):
    """cobra's command lookup, as fleetctl has it: a unique prefix names a command (``list-m``); anything
    else is an unknown command, which exits non-zero (FLEET-SPEC §1.1, §9.1)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        matches = self._prefixed(ctx, cmd_name)
        return super().get_command(ctx, matches[0]) if len(matches) == 1 else None

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        with formatter.section("Version"):
            formatter.write_text(__version__)  # fleetctl's root help shows it; its functional tests check

    def _prefixed(self, ctx: click.Context, prefix: str, *, hidden: bool = True) -> list[str]:
        if not prefix:
            return []
        names = [n for n in self.list_commands(ctx) if n.startswith(prefix)]
        return names if hidden else [n for n in names if not self.commands[n].hidden]

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0]
        command = self.get_command(ctx, name)
        if command is None and not ctx.resilient_parsing:
            if name.startswith("-"):
                self.parse_args(ctx, args)  # an unknown option: click says so
            message = f'unknown command "{name}" for "{ctx.command_path}"'
            suggestions = self._prefixed(ctx, name, hidden=False)  # cobra suggests no hidden command
            if suggestions:
                message += "\n\nDid you mean this?\n" + "".join(f"\t{s}\n" for s in suggestions)
            ctx.fail(message)
        return (command.name if command else None), command, args[1:]


def _env(option: str) -> list[str]:
    """The environment variables of a global flag: ``FLEETPYCTL_X_Y``, and fleetctl's ``FLEETCTL_X_Y`` so that a
    fleet user's environment works unchanged. Set but empty counts as unset, as in fleetctl."""
    name = option.upper().replace("-", "_")
    return [f"FLEETPYCTL_{name}", f"FLEETCTL_{name}"]


def _global(*names: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    long = next(n for n in names if n.startswith("--"))[2:]
    kwargs.setdefault("envvar", _env(long))
    kwargs.setdefault("show_envvar", True)
    return click.option(*names, **kwargs)


@click.group(cls=Commands, context_settings=CONTEXT, invoke_without_command=True)
@_global(
    "--endpoint",
    default=DEFAULT_ENDPOINT,
    show_default=True,
    help="fleetpy API endpoint: unix:///path.sock, http://host:port or https://host:port; of a comma-separated "
    "list, each request goes to the first that answers.",
)
@_global(
    "--request-timeout",
    default=10.0,
    type=float,
    show_default=True,
    help="Timeout of each API request in seconds (fleetctl ignored it for the API).",
)
@_global("--ca-file", default="", help="CA certificate that signs the https endpoint's certificate.")
@_global("--cert-file", default="", help="Client certificate for an https endpoint.")
@_global("--key-file", default="", help="Key of the client certificate.")
@_global(
    "--token",
    default="",
    show_envvar=False,
    help="Bearer token for a TCP endpoint (prefer FLEETPYCTL_TOKEN or --token-file: command lines are visible "
    "to every user of the machine).",
)
@_global("--token-file", default="", help="File whose first line is the bearer token for a TCP endpoint.")
@_global("--driver", default="API", show_default=True, help="Only API: fleetpyctl never talks to etcd directly.")
@_global("--ssh-username", default="core", show_default=True, help="User for ssh.")
@_global(
    "--tunnel",
    default="",
    help="host[:port] to reach the API through over SSH, with the system's ssh: a unix endpoint is a socket on that "
    "host, reached by running 'fleetpyctl fd-forward SOCKET' there (FLEETPYCTL_TUNNEL_COMMAND names another "
    "remote program); a TCP endpoint is dialed from that host (ssh -W). The ssh command reaches machines through "
    "it too (ssh's -J).",
)
@_global(
    "--known-hosts-file",
    default="~/.fleetctl/known_hosts",
    show_default=True,
    help="Known hosts file of ssh (OpenSSH format).",
)
@_global(
    "--strict-host-key-checking",
    default=True,
    type=click.BOOL,
    show_default=True,
    help="Refuse machines whose host key is not known.",
)
@_global("--ssh-timeout", default=10.0, type=float, show_default=True, help="ssh connect timeout in seconds.")
@_global("--debug", is_flag=True, default=False, help="Log every API request to stderr.")
@_global("--etcd-key-prefix", default="", hidden=True)
@_global("--experimental-api", default=True, type=click.BOOL, hidden=True)
@_global("--etcd-keyfile", "etcd_keyfile", default="", hidden=True)
@_global("--etcd-certfile", "etcd_certfile", default="", hidden=True)
@_global("--etcd-cafile", "etcd_cafile", default="", hidden=True)
@click.option("-v", "--version", "show_version", is_flag=True, help="Print the version and exit.")
@click.pass_context
def main(
    ctx: click.Context,
    endpoint: str,
    request_timeout: float,
    ca_file: str,
    cert_file: str,
    key_file: str,
    token: str,
    token_file: str,
    driver: str,
    ssh_username: str,
    tunnel: str,
    known_hosts_file: str,
    strict_host_key_checking: bool,
    ssh_timeout: float,
    debug: bool,
    etcd_key_prefix: str,
    experimental_api: bool,
    etcd_keyfile: str,
    etcd_certfile: str,
    etcd_cafile: str,
    show_version: bool,
) -> None:
    """fleetpyctl: drive a fleetpy cluster, as fleetctl drives fleet.

    Every global flag can also be set in the environment as FLEETPYCTL_<FLAG> (or fleetctl's FLEETCTL_<FLAG>),
    e.g. FLEETPYCTL_ENDPOINT; the command line wins.

    \b
    Examples:
      fleetpyctl start hello.service       # submit, place and start a unit file
      fleetpyctl list-units                # what runs where
      fleetpyctl status hello.service      # systemctl status, from the machine that runs it
      fleetpyctl journal -f hello.service  # its journal, followed
      fleetpyctl stop hello.service
      fleetpyctl destroy hello.service
    """
    if show_version:
        click.echo(f"fleetpyctl version {__version__}")
        ctx.exit(0)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit(0)
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if driver.lower() != "api":
        raise click.UsageError(
            f'Unable to initialize client: unrecognized driver "{driver}" (fleetpyctl speaks only to the API)'
            if driver.lower() != "etcd"
            else "Unable to initialize client: the etcd driver is not supported; use the API endpoint"
        )
    ssh = SshOptions(
        username=ssh_username,
        tunnel=tunnel,
        known_hosts_file=os.path.expanduser(known_hosts_file),
        strict_host_key_checking=strict_host_key_checking,
        timeout=ssh_timeout,
        tunnel_command=os.environ.get("FLEETPYCTL_TUNNEL_COMMAND") or DEFAULT_TUNNEL_COMMAND,
    )
    try:
        tls = tls_context(ca_file or etcd_cafile, cert_file or etcd_certfile, key_file or etcd_keyfile)
        token = token or read_token(token_file)
    except CliError as exc:
        click.echo(exc.message, err=True)
        ctx.exit(exc.code)
    ctx.obj = Ctl(endpoint=endpoint, timeout=request_timeout, tls=tls, ssh=ssh, token=token)


@main.command(context_settings=CONTEXT)
def version() -> None:
    """Print the version."""
    click.echo(f"fleetpyctl version {__version__}")


@main.command(context_settings={**CONTEXT, "ignore_unknown_options": True}, hidden=True, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def verify(args: tuple[str, ...]) -> None:
    """Deprecated: signed units no longer exist (FLEET-SPEC §1.4). Both lines go to stderr, as cobra's
    deprecation notice did (``Printf`` writes to stderr unless told otherwise, and fleetctl never told it)."""
    click.echo('Command "verify" is deprecated, DEPRECATED - No longer works', err=True)
    click.echo("WARNING: The signed/verified units feature is DEPRECATED and cannot be used.", err=True)
    sys.exit(2)


@main.command("fd-forward", context_settings=CONTEXT, hidden=True)
@click.argument("args", nargs=-1)
def fd_forward_command(args: tuple[str, ...]) -> None:
    """Copy stdin to the unix socket SOCKET and the socket to stdout (the far end of --tunnel; not meant to be
    run by hand)."""
    if len(args) != 1:
        click.echo("Provide a single argument", err=True)
        sys.exit(1)
    try:
        fd_forward(args[0])
    except TunnelError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)


@main.command("help", context_settings=CONTEXT)
@click.argument("command", required=False)
@click.pass_context
def help_command(ctx: click.Context, command: str | None) -> None:
    """Help about any command."""
    parent = ctx.parent
    assert parent is not None
    if not command:
        click.echo(parent.get_help())
        return
    found = main.get_command(parent, command)
    if found is None:
        raise click.UsageError(f'unknown command "{command}" for "{parent.command_path}"', parent)
    with click.Context(found, info_name=found.name, parent=parent) as sub:
        click.echo(found.get_help(sub))


# -------------------------------------------------------------------------------------------------- listings


MACHINE_FIELDS = ("machine", "ip", "metadata")
UNIT_FILE_FIELDS = ("desc", "dstate", "global", "hash", "reason", "state", "target", "tmachine", "unit")
UNIT_FIELDS = ("active", "hash", "load", "machine", "sub", "unit")


def _fields(requested: str, valid: Sequence[str]) -> list[str]:
    try:
        return check_fields(requested, valid)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _show(
    columns: list[str], rows: list[dict[str, Any]], json_rows: list[dict[str, Any]], *, no_legend: bool, fmt: str
) -> None:
    if fmt == "json":
        print_json([{c: row[c] for c in columns} for row in json_rows])
    else:
        print_table(columns, [[row[c] for c in columns] for row in rows], no_legend)


@main.command("list-machines", context_settings=CONTEXT)
@click.option("-l", "--full", "--l", is_flag=True, help="Do not shorten machine IDs.")
@click.option("--no-legend", is_flag=True, help="Do not print a header line.")
@click.option(
    "--fields",
    default="machine,ip,metadata",
    show_default=True,
    help=f"Columns to show, comma-separated: {', '.join(MACHINE_FIELDS)}.",
)
@output_option
@click.pass_context
def list_machines(ctx: click.Context, full: bool, no_legend: bool, fields: str, output_format: str) -> None:
    """List the machines in the cluster, sorted by machine ID.

    \b
    -o json: [{"machine": "<id>", "ip": "<ip>" or null, "metadata": {"k": "v"}}, ...]
    """

    async def body(_ctl: Ctl, client: Client) -> None:
        columns = _fields(fields, MACHINE_FIELDS)
        try:
            machines = await client.machines()
        except ApiError as exc:
            if exc.status in (401, 403):
                raise CliError(
                    f"Error retrieving list of active machines from fleet API ({exc})\n"
                    "The API refused fleetpyctl's credentials: give a token (--token-file or FLEETPYCTL_TOKEN) "
                    "or a client certificate (--cert-file and --key-file)"
                ) from None
            raise CliError(
                f"Error retrieving list of active machines from fleet API ({exc})\nPossible issues:\n"
                "  etcd is unhealthy and/or lost quorum\n  connection cannot be established to any etcd servers"
            ) from None
        except EndpointUnavailable as exc:
            raise CliError(
                f"Error retrieving list of active machines from fleet API ({exc})\nPossible issues:\n"
                "  etcd is unhealthy and/or lost quorum\n  connection cannot be established to any etcd servers"
            ) from None
        rows, json_rows = [], []
        for machine in sorted(machines, key=lambda m: m.id):
            rows.append(
                {
                    "machine": machine_id_legend(machine.id, full),
                    "ip": machine.primary_ip or "-",
                    "metadata": format_metadata(machine.metadata),
                }
            )
            json_rows.append(
                {
                    "machine": machine.id,
                    "ip": machine.primary_ip or None,
                    "metadata": dict(sorted(machine.metadata.items())),
                }
            )
        _show(columns, rows, json_rows, no_legend=no_legend, fmt=output_format)

    run(ctx, body)


@main.command("list-unit-files", context_settings=CONTEXT)
@click.option("--full", "-l", "--l", is_flag=True, help="Show full hashes and machine IDs.")
@click.option("--no-legend", is_flag=True, help="Do not print a header line.")
@click.option(
    "--fields",
    default="unit,hash,dstate,state,target",
    show_default=True,
    help=f"Columns to show, comma-separated: {', '.join(UNIT_FILE_FIELDS)}.",
)
@output_option
@click.pass_context
def list_unit_files(ctx: click.Context, full: bool, no_legend: bool, fields: str, output_format: str) -> None:
    """List the units submitted to the cluster, with desired state, current state and target machine.

    \b
    -o json: [{"unit": "a.service", "hash": "<40 hex>", "dstate": "launched", "state": "launched" or null,
               "target": "<machine id>" or "global" or null, "desc": "..." or null, "global": false}, ...]
    """

    async def body(ctl: Ctl, client: Client) -> None:
        columns = _fields(fields, UNIT_FILE_FIELDS)
        if "tmachine" in columns:
            click.echo('WARNING: The "tmachine" field is deprecated. Use "target" instead', err=True)
        try:
            units = await client.units()
            ips = await ctl.ips()
        except (ApiError, EndpointUnavailable) as exc:
            raise CliError(f"Error retrieving list of units from repository: {exc}") from None
        # Only what the columns show: the hash and description cost a serialisation and a parse per unit.
        want = set(columns)
        rows, json_rows = [], []
        for unit in sorted(units, key=lambda u: u.name):
            unit_file = UnitFile(unit.options)
            digest = unit_file.hash if "hash" in want else ""
            desc = unit_file.description if "desc" in want else ""
            is_global = unit.is_global
            if is_global:
                target, target_id = "global", "global"
            elif unit.machine:
                target, target_id = machine_legend(unit.machine, ips, full), unit.machine
            else:
                target, target_id = "-", None
            state = None if is_global or not unit.current else unit.current
            if output_format == "json":
                json_rows.append(
                    {
                        "desc": desc or None,
                        "dstate": unit.desired or None,
                        "global": is_global,
                        "hash": digest,
                        "reason": unit.reason or None,
                        "state": state,
                        "target": target_id,
                        "tmachine": target_id,
                        "unit": unit.name,
                    }
                )
                continue
            rows.append(
                {
                    "desc": desc or "-",
                    "dstate": unit.desired or "-",
                    "global": "true" if is_global else "false",
                    "hash": digest if full else digest[:7],
                    "reason": unit.reason or "-",
                    "state": state or "-",
                    "target": target,
                    "tmachine": target,
                    "unit": unit.name,
                }
            )
        _show(columns, rows, json_rows, no_legend=no_legend, fmt=output_format)

    run(ctx, body)


@main.command("list-units", context_settings=CONTEXT)
@click.option("-l", "--full", "--l", is_flag=True, help="Show full hashes and machine IDs.")
@click.option("--no-legend", is_flag=True, help="Do not print a header line.")
@click.option(
    "--fields",
    default="unit,machine,active,sub",
    show_default=True,
    help=f"Columns to show, comma-separated: {', '.join(UNIT_FIELDS)}.",
)
@output_option
@click.pass_context
def list_units(ctx: click.Context, full: bool, no_legend: bool, fields: str, output_format: str) -> None:
    """List the states of units as their machines report them (one row per unit and machine).

    \b
    -o json: [{"unit": "a.service", "machine": "<machine id>", "active": "active", "sub": "running",
               "load": "loaded", "hash": "<40 hex>"}, ...] (null for a value the machine did not report)
    """

    async def body(ctl: Ctl, client: Client) -> None:
        columns = _fields(fields, UNIT_FIELDS)
        try:
            states = await client.states()
            ips = await ctl.ips()
        except (ApiError, EndpointUnavailable) as exc:
            raise CliError(f"Error retrieving list of units from repository: {exc}") from None
        rows, json_rows = [], []
        for state in sorted(states, key=lambda s: (s.name, s.machine)):
            rows.append(
                {
                    "active": state.active or "-",
                    "hash": (state.hash if full else state.hash[:7]) or "-",
                    "load": state.load or "-",
                    "machine": machine_legend(state.machine, ips, full) if state.machine else "-",
                    "sub": state.sub or "-",
                    "unit": state.name,
                }
            )
            json_rows.append(
                {
                    "active": state.active or None,
                    "hash": state.hash or None,
                    "load": state.load or None,
                    "machine": state.machine or None,
                    "sub": state.sub or None,
                    "unit": state.name,
                }
            )
        _show(columns, rows, json_rows, no_legend=no_legend, fmt=output_format)

    run(ctx, body)


# -------------------------------------------------------------------------------------------------- cat


@main.command(context_settings=CONTEXT)
@click.argument("units", nargs=-1)
@click.pass_context
def cat(ctx: click.Context, units: tuple[str, ...]) -> None:
    """Print the unit file of UNIT as stored in the cluster."""

    async def body(_ctl: Ctl, client: Client) -> None:
        if len(units) != 1:
            raise CliError("One unit file must be provided")
        name = mangle_name(units[0])
        try:
            unit = await client.unit(name)
        except (ApiError, EndpointUnavailable) as exc:
            raise CliError(f"Error retrieving Unit {name}: {exc}") from None
        if unit is None:
            raise CliError(f"Unit {name} not found")
        click.echo(serialize(unit.options), nl=False)

    run(ctx, body)


# -------------------------------------------------------------------------------------------------- creating units


REPLACEABLE = {
    "submit": {"inactive"},
    "load": {"inactive", "loaded"},
    "start": {"inactive", "loaded", "launched"},
}


async def create_units(
    ctl: Ctl, client: Client, arguments: Sequence[str], *, replace: bool, command: str, attempts: int
) -> list[str]:
    """fleetctl's lazyCreateUnits (§1.6): the unit names, after creating the ones the cluster lacks."""
    names: list[str] = []
    created: list[str] = []
    for argument in arguments:
        name, path = resolve_argument(argument)
        try:
            validate_name(name)
        except InvalidUnit as exc:
            raise CliError(f'Error creating units: invalid unit name "{name}": {exc}') from None
        existing = await client.unit(name)
        local, local_path = local_unit(name, path)
        names.append(name)
        if existing is not None:
            remote_hash = UnitFile(existing.options).hash
            if local is None:
                if replace and not name_info(name).is_instance:
                    raise CliError(f"error Unit {name} does not seem to be a template unit")
                continue
            if local.hash == remote_hash:
                if replace:
                    click.echo(f"Found same Unit({name}) in Registry, nothing to do")
                continue
            if not replace:
                kind = "template unit file" if local_path != path else "unit file"
                click.echo(
                    f"WARNING: Unit {name} in registry differs from local {kind} {local_path}. "
                    "Add --replace to override.",
                    err=True,
                )
                continue
            if existing.desired not in REPLACEABLE[command]:
                click.echo(
                    f"Warning: can not replace Unit({name}) in state '{existing.desired}', use the appropriate command",
                    err=True,
                )
                continue
            await _create(client, name, local, "Error creating units")
            created.append(name)
            continue
        if local is None:
            info = name_info(name)
            template = await client.unit(info.template) if info.is_instance else None
            if template is not None:
                local = UnitFile(template.options)
            elif info.is_instance:
                raise CliError(
                    f"Error creating units: failed getting Unit({name}) from template: unable to find "
                    f"template Unit({info.template}) in Registry or on filesystem"
                )
            else:
                raise CliError(f"Error creating units: unable to find Unit({name}) in Registry or on filesystem")
        await _create(client, name, local, "Error creating units")
        created.append(name)
    if created:
        units = {n: await client.unit(n) for n in created}
        globals_ = {n for n, u in units.items() if u is not None and u.is_global}
        try:
            await wait_for_states(
                ctl, client, [n for n in created if units[n] is not None], "inactive", attempts, global_names=globals_
            )
        except TimeoutError as exc:
            raise CliError(f"Error creating units: {exc}") from None
    return names


async def _create(client: Client, name: str, unit: UnitFile, context: str) -> None:
    for warning in unknown_requirement_warnings(name, unit):
        click.echo(f"WARNING: {warning}", err=True)
    try:
        validate_requirements(unit.xfleet)
        await client.create_unit(name, unit.options)
    except (InvalidUnit, ApiError) as exc:
        message = exc.message if isinstance(exc, ApiError) and exc.message else str(exc)
        raise CliError(f"{context}: {message}") from None


# -------------------------------------------------------------------------------------------------- waiting


async def _legend(ctl: Ctl, unit: ApiUnit) -> str:
    if not unit.machine:
        return ""
    return " on " + machine_legend(unit.machine, await ctl.ips(), False)


async def wait_for_states(
    ctl: Ctl,
    client: Client,
    names: Sequence[str],
    target: str,
    attempts: int,
    *,
    global_names: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Poll until every unit reports ``target`` (a global unit: as its desired state); print a line per unit.

    ``attempts`` 0 waits forever, N waits about 2·N seconds; a timeout raises ``TimeoutError`` naming the unit.
    """
    pending = list(dict.fromkeys(names))
    deadline = None if attempts <= 0 else time.monotonic() + ATTEMPT * attempts
    while pending:
        if len(pending) > 20:
            listed = {u.name: u for u in await client.units()}
            found: dict[str, ApiUnit | None] = {n: listed.get(n) for n in pending}
        else:
            results = await asyncio.gather(*(client.unit(n) for n in pending))
            found = dict(zip(pending, results, strict=True))
        still = []
        for name in pending:
            unit = found[name]
            if unit is None:
                raise CliError(f"Error waiting for units: unit {name} no longer exists")
            state = unit.desired if (name in global_names or unit.is_global) else unit.current
            # A replaced unit reads inactive (its machine runs the old hash) until the engine unplaces it: it is
            # inactive, as fleet means it, once no machine holds it.
            if state == target and not (target == "inactive" and unit.machine and not unit.is_global):
                if unit.is_global:
                    click.echo(f"Unit {name}")
                else:
                    click.echo(f"Unit {name} {state}{await _legend(ctl, unit)}")
            else:
                still.append(name)
        pending = still
        if pending:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"timed out waiting for unit {pending[0]} to report state {target}")
            await asyncio.sleep(POLL)


async def wait_for_systemd_active(ctl: Ctl, client: Client, names: Sequence[str], attempts: int) -> None:
    """After ``launched``: wait until each unit's machine reports it loaded and active in systemd.

    ``attempts`` bounds the wait as in ``wait_for_states`` (fleetctl gave up after one attempt, FLEET-SPEC
    §9.4). A unit that failed on its machine ends the wait at once, whatever ``attempts`` says: systemd's
    ``failed`` stays until something starts the unit again, so waiting cannot make it active, and with the
    default, 0, the command would never end. A unit that ``Restart=`` will try again is ``activating`` (sub
    ``auto-restart``) between tries and is waited for.
    """
    pending = list(names)
    deadline = time.monotonic() + ATTEMPT * (attempts if attempts > 0 else 1 << 30)
    last: dict[str, str] = {}
    while pending:
        still = []
        for name in pending:
            unit = await client.unit(name)
            states = await client.states(unit=name)
            here = [s for s in states if unit is not None and s.machine == unit.machine]
            if here and here[0].load == "loaded" and here[0].active == "active":
                continue
            if here and here[0].active == "failed":
                state = here[0]
                legend = machine_legend(state.machine, await ctl.ips(), False)
                raise CliError(
                    f"Error waiting for units: Unit {name} failed on {legend}: active state {state.active} "
                    f"(sub {state.sub})\n"
                    f"Error waiting for systemd unit states, err: unit {name} failed"
                )
            last[name] = f"{here[0].load}/{here[0].active}/{here[0].sub}" if here else "no state reported"
            still.append(name)
        pending = still
        if pending:
            if time.monotonic() >= deadline:
                name = pending[0]
                raise CliError(
                    f"Error waiting for units: Failed to find an active unit {name} within "
                    f"{ATTEMPT * attempts:.0f}s, err: last state {last[name]}\n"
                    f"Error waiting for systemd unit states, err: unit {name} is not active"
                )
            await asyncio.sleep(POLL)


async def _units_by_name(client: Client, names: Sequence[str]) -> dict[str, ApiUnit]:
    results = await asyncio.gather(*(client.unit(n) for n in names))
    return {n: u for n, u in zip(names, results, strict=True) if u is not None}


async def set_states(client: Client, names: Sequence[str], state: DesiredState, error: str) -> None:
    for name in names:
        try:
            await client.set_desired(name, state)
        except ApiError as exc:
            raise CliError(f"{error}: {exc}") from None


def _blocking_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option(
        "--block-attempts",
        default=0,
        type=click.IntRange(0),
        metavar="N",
        help="Wait at most about 2·N seconds for the units (0: wait forever).",
    )(function)
    return click.option("--no-block", is_flag=True, help="Do not wait for the units to reach their state.")(function)


def _refuse_sign(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    """fleetctl meant ``--sign`` to fail this way but accepted it silently (FLEET-SPEC §1.4, §9.7)."""
    if value:
        click.echo("WARNING: The signed/verified units feature is DEPRECATED and cannot be used.", err=True)
        ctx.exit(2)
    return value


_sign_option = click.option("--sign", is_flag=True, hidden=True, expose_value=False, callback=_refuse_sign)


# -------------------------------------------------------------------------------------------------- commands


@main.command(context_settings=CONTEXT)
@click.option("--replace", is_flag=True, help="Replace units whose local file differs from the cluster's.")
@_sign_option
@click.argument("units", nargs=-1)
@click.pass_context
def submit(ctx: click.Context, replace: bool, units: tuple[str, ...]) -> None:
    """Upload unit files to the cluster without starting them.

    \b
    Examples:
      fleetpyctl submit hello.service
      fleetpyctl submit --replace hello.service   # upload a changed file
    """

    async def body(ctl: Ctl, client: Client) -> None:
        if not units:
            raise CliError("No units given")
        await create_units(ctl, client, units, replace=replace, command="submit", attempts=0)

    run(ctx, body)


def _timed_out(exc: TimeoutError, per_command: str) -> CliError:
    """fleetctl's two lines for a wait that gave up: the wait's own error, then the command's."""
    return CliError(f"Error waiting for units: {exc}\n{per_command}")


def _trigger(found: dict[str, ApiUnit], names: Sequence[str], verb: str, no_block: bool) -> list[str]:
    """Print fleetctl's lines for units whose desired state was just set; the non-global ones to wait for.

    Global units are never waited for. With ``--no-block`` each other unit gets one ``Triggered`` line
    (fleetctl printed it twice for ``start``, FLEET-SPEC §9.5)."""
    for name in names:
        if found[name].is_global:
            click.echo(f"Triggered global unit {name} {verb}")
    waiting = [n for n in names if not found[n].is_global]
    if no_block:
        for name in waiting:
            click.echo(f"Triggered unit {name} {verb}")
    return waiting


def _state_command(command: str, state: DesiredState, verb: str, error: str) -> Callable[..., Any]:
    async def body(
        ctl: Ctl, client: Client, units: Sequence[str], replace: bool, no_block: bool, attempts: int
    ) -> None:
        if not units:
            raise CliError("No units given")
        names = await create_units(ctl, client, units, replace=replace, command=command, attempts=attempts)
        current = await _units_by_name(client, names)
        todo = [n for n in dict.fromkeys(names) if n in current and current[n].desired != state.value]
        await set_states(client, todo, state, error)
        wait = _trigger(current, todo, verb, no_block)
        if no_block or not wait:
            return
        try:
            await wait_for_states(ctl, client, wait, state.value, attempts)
        except TimeoutError as exc:
            raise _timed_out(exc, "Error waiting for unit states, exit status: 1") from None
        if command == "start":
            await wait_for_systemd_active(ctl, client, wait, attempts)

    return body


@main.command(context_settings=CONTEXT)
@click.option("--replace", is_flag=True, help="Replace units whose local file differs from the cluster's.")
@_sign_option
@_blocking_options
@click.argument("units", nargs=-1)
@click.pass_context
def load(ctx: click.Context, replace: bool, no_block: bool, block_attempts: int, units: tuple[str, ...]) -> None:
    """Submit units if needed and load them on their machines without starting them (a running unit stops).

    \b
    Example:
      fleetpyctl load hello.service
    """
    body = _state_command("load", DesiredState.LOADED, "load", "Error loading units")
    run(ctx, lambda ctl, client: body(ctl, client, units, replace, no_block, block_attempts))


@main.command(context_settings=CONTEXT)
@click.option("--replace", is_flag=True, help="Replace units whose local file differs from the cluster's.")
@_sign_option
@_blocking_options
@click.argument("units", nargs=-1)
@click.pass_context
def start(ctx: click.Context, replace: bool, no_block: bool, block_attempts: int, units: tuple[str, ...]) -> None:
    """Submit units if needed, place them on machines and start them; wait until systemd runs them.

    \b
    Examples:
      fleetpyctl start hello.service
      fleetpyctl start --no-block web@1.service web@2.service
    """
    body = _state_command("start", DesiredState.LAUNCHED, "start", "Error starting units")
    run(ctx, lambda ctl, client: body(ctl, client, units, replace, no_block, block_attempts))


async def restart_global(ctl: Ctl, client: Client, name: str, attempts: int) -> None:
    """Restart a launched global unit one machine at a time: ``systemctl restart`` on the machine (through the
    API, no SSH), then wait until that machine reports it active before going on to the next."""
    ips = await ctl.ips()
    machines = sorted({s.machine for s in await client.states(unit=name) if s.machine})
    for machine in machines:
        legend = machine_legend(machine, ips, False)
        code, text = 0, []
        async for event in client.unit_output(name, "restart", machine=machine):
            text.append(event.output)
            if event.code is not None:
                code = event.code
                if event.error:
                    text.append(event.error)
        if code != 0:
            raise CliError(f"Error restarting unit {name} on {legend}: {''.join(text).strip() or f'exit {code}'}")
        deadline = None if attempts <= 0 else time.monotonic() + ATTEMPT * attempts
        while True:
            here = await client.states(unit=name, machine=machine)
            if here and here[0].active == "active":
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise CliError(f"Error waiting for units: timed out waiting for unit {name} to be active on {legend}")
            await asyncio.sleep(POLL)
        click.echo(f"Unit {name} launched on {legend}")


@main.command(context_settings=CONTEXT)
@click.option(
    "--block-attempts",
    default=0,
    type=click.IntRange(0),
    metavar="N",
    help="Wait at most about 2·N seconds for each step (0: wait forever).",
)
@click.argument("units", nargs=-1)
@click.pass_context
def restart(ctx: click.Context, block_attempts: int, units: tuple[str, ...]) -> None:
    """Restart units: stop them, then start them again, waiting for each step.

    A loaded unit is started. A global unit is restarted one machine at a time with systemctl restart on that
    machine (fleetctl did nothing for global units and, through a bug, nothing for launched ones either).

    \b
    Example:
      fleetpyctl restart hello.service
    """

    async def body(ctl: Ctl, client: Client) -> None:
        if not units:
            raise CliError("No units given")
        names = await create_units(ctl, client, units, replace=False, command="start", attempts=block_attempts)
        found = await _units_by_name(client, names)
        for name in dict.fromkeys(names):
            unit = found.get(name)
            if unit is None:
                continue
            if unit.is_global:
                if unit.desired == "launched":
                    await restart_global(ctl, client, name, block_attempts)
                elif unit.desired == "loaded":
                    await set_states(client, [name], DesiredState.LAUNCHED, "Error starting units")
                    click.echo(f"Triggered global unit {name} start")
                else:
                    click.echo(f"Unable to restart unit {name} in state {unit.desired}", err=True)
                continue
            if unit.current not in ("loaded", "launched"):
                click.echo(f"Unable to restart unit {name} in state {unit.current or 'inactive'}", err=True)
                continue
            steps = (
                [DesiredState.LOADED, DesiredState.LAUNCHED] if unit.current == "launched" else [DesiredState.LAUNCHED]
            )
            for state in steps:
                error = "Error stopping units" if state == DesiredState.LOADED else "Error starting units"
                await set_states(client, [name], state, error)
                try:
                    await wait_for_states(ctl, client, [name], state.value, block_attempts)
                except TimeoutError as exc:
                    raise _timed_out(exc, "Error waiting for unit states, exit status: 1") from None
            await wait_for_systemd_active(ctl, client, [name], block_attempts)

    run(ctx, body)


async def find_units(client: Client, units: Sequence[str]) -> dict[str, ApiUnit]:
    """fleetctl's findUnits: the named units that exist, in the cluster's order (by name); missing ones are
    skipped, and none at all is ``Units not found in registry`` (exit 0)."""
    if not units:
        raise CliError("No units given")
    found = await _units_by_name(client, list(dict.fromkeys(mangle_name(u) for u in units)))
    if not found:
        raise CliError("Units not found in registry", 0)
    return dict(sorted(found.items()))


@main.command(context_settings=CONTEXT)
@_blocking_options
@click.argument("units", nargs=-1)
@click.pass_context
def stop(ctx: click.Context, no_block: bool, block_attempts: int, units: tuple[str, ...]) -> None:
    """Stop units; they stay loaded on their machines.

    \b
    Example:
      fleetpyctl stop hello.service
    """

    async def body(ctl: Ctl, client: Client) -> None:
        found = await find_units(client, units)
        todo = []
        for name, unit in found.items():
            if not unit.is_global:
                if unit.current == "inactive":
                    raise CliError(f"Unable to stop unit {name} in state inactive")
                if unit.current == "loaded" and unit.desired != "launched":
                    continue
            todo.append(name)
        await set_states(client, todo, DesiredState.LOADED, "Error stopping units")
        stopping = _trigger(found, todo, "stop", no_block)
        if stopping and not no_block:
            try:
                await wait_for_states(ctl, client, stopping, "loaded", block_attempts)
            except TimeoutError as exc:
                raise _timed_out(exc, f"Failed to stop units [{' '.join(stopping)}]. err: {exc}") from None
        click.echo(f"Successfully stopped units [{' '.join(stopping)}].", err=True)

    run(ctx, body)


@main.command(context_settings=CONTEXT)
@_blocking_options
@click.argument("units", nargs=-1)
@click.pass_context
def unload(ctx: click.Context, no_block: bool, block_attempts: int, units: tuple[str, ...]) -> None:
    """Unload units from their machines (stop them and remove their files); they stay in the cluster.

    \b
    Example:
      fleetpyctl unload hello.service
    """

    async def body(ctl: Ctl, client: Client) -> None:
        found = await find_units(client, units)
        # fleetctl skips units whose current state is inactive; one that is still waiting to be placed
        # (desired loaded or launched) is unloaded too, or it would be placed after the command.
        todo = [
            name
            for name, unit in found.items()
            if unit.is_global or unit.current != "inactive" or unit.desired != "inactive"
        ]
        await set_states(client, todo, DesiredState.INACTIVE, "Error unloading units")
        unloading = _trigger(found, todo, "unload", no_block)
        if unloading and not no_block:
            try:
                await wait_for_states(ctl, client, unloading, "inactive", block_attempts)
            except TimeoutError as exc:
                raise _timed_out(exc, f"Failed to unload units [{' '.join(unloading)}]. err: {exc}") from None
        click.echo(f"Successfully unloaded units [{' '.join(unloading)}].", err=True)

    run(ctx, body)


@main.command(context_settings=CONTEXT)
@_blocking_options
@click.argument("units", nargs=-1)
@click.pass_context
def destroy(ctx: click.Context, no_block: bool, block_attempts: int, units: tuple[str, ...]) -> None:
    """Remove units from the cluster; their machines stop and unload them.

    \b
    Example:
      fleetpyctl destroy hello.service
    """

    async def body(_ctl: Ctl, client: Client) -> int:
        failed = False
        for name in await find_units(client, units):
            try:
                if not await client.destroy(name):
                    continue  # destroyed meanwhile by someone else: fleetctl ignores the 404 too
            except ApiError as exc:
                click.echo(f"Error destroying units: {exc}", err=True)
                failed = True
                continue
            click.echo(f"Destroyed {name}")
        return 1 if failed else 0

    run(ctx, body)


def _register_commands() -> None:
    """Commands that live in modules of their own."""
    from fleetpy.cli.cloudconfig import cloud_config
    from fleetpy.cli.placement import plan, set_metadata
    from fleetpy.cli.watched import list_watch_errors

    for command in remote.COMMANDS:
        main.add_command(command)
    main.add_command(cloud_config)
    main.add_command(list_watch_errors)
    main.add_command(plan)
    main.add_command(set_metadata)


_register_commands()

if __name__ == "__main__":
    main(prog_name="fleetpyctl")
