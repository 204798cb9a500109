"""``status``, ``journal`` and ``ssh``: looking at a unit on the machine that runs it (FLEET-SPEC §1.4, §1.5).

fleetctl ran ``systemctl status`` and ``journalctl`` over SSH. fleetpyctl asks the API, which relays the request
to the unit's machine (``fleetpy.api.relay``), so they work without any SSH setup, from anywhere the API can be
reached, and for a global unit on every machine. ``ssh`` still opens a shell on a machine through the system's
``ssh`` client, as fleetctl's did (it needs sshd on the machines).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Sequence

import click

from fleetpy.cli.common import CONTEXT, CliError, Ctl, run
from fleetpy.cli.output import machine_legend
from fleetpy.cli.sshclient import ADDRESS, SshOptions, ssh_options
from fleetpy.client import ApiError, ApiMachine, Client
from fleetpy.unit import mangle_name

SSH_FAILED = 255


async def relay_output(
    ctl: Ctl,
    client: Client,
    name: str,
    kind: str,
    *,
    is_global: bool,
    lines: int = 10,
    follow: bool = False,
    output: str = "short",
    not_running: str,
) -> int:
    """Print what the unit's machines answer; the exit code: the first non-zero one of a machine, else 0.
    For a global unit each machine's output is preceded by a line naming the machine."""
    ips = await ctl.ips()
    code = 0
    shown = ""
    try:
        async for event in client.unit_output(name, kind, lines=lines, follow=follow, output=output):
            legend = machine_legend(event.machine, ips, False)
            if is_global and event.machine != shown and (event.output or event.error):
                click.echo(f"-- {name} on {legend} --")
                shown = event.machine
            if event.output:
                click.echo(event.output, nl=False)
                sys.stdout.flush()
            if event.error:
                click.echo(f"Error from machine {legend}: {event.error}", err=True)
            if event.code is not None and event.code != 0 and code == 0:
                code = event.code
    except ApiError as exc:
        if exc.status == 409:
            raise CliError(not_running) from None
        raise
    return code


async def _unit(client: Client, name: str) -> tuple[bool, str]:
    """(is global, current state) of a unit that exists; ``Unit X does not exist.`` otherwise."""
    unit = await client.unit(name)
    if unit is None:
        raise CliError(f"Unit {name} does not exist.")
    return unit.is_global, unit.current


@click.command(context_settings=CONTEXT)
@click.option("--ssh-port", default=22, type=int, show_default=True, help="Accepted for fleetctl; no SSH is used.")
@click.option("--no-block", is_flag=True, hidden=True, help="Accepted, as fleetctl's tests pass it (FLEET-SPEC §9.1).")
@click.argument("units", nargs=-1)
@click.pass_context
def status(ctx: click.Context, ssh_port: int, no_block: bool, units: tuple[str, ...]) -> None:
    """Show systemctl status of units, from the machines that run them (every machine for a global unit).

    The exit code is systemctl's: the first non-zero one. No SSH is needed: the API asks the machine.

    \b
    Example:
      fleetpyctl status hello.service
    """

    async def body(ctl: Ctl, client: Client) -> int:
        if not units:
            raise CliError("No units given")
        for index, argument in enumerate(units):
            name = mangle_name(argument)
            is_global, current = await _unit(client, name)
            not_loaded = f"Unit {name} does not appear to be loaded."
            if not is_global and current == "inactive":
                raise CliError(not_loaded)
            if index:
                click.echo("")
            code = await relay_output(ctl, client, name, "status", is_global=is_global, not_running=not_loaded)
            if code:
                return code
        return 0

    run(ctx, body)


@click.command(context_settings=CONTEXT)
@click.option("--lines", default=10, type=click.IntRange(0), show_default=True, help="Number of recent lines.")
@click.option("-f", "--follow", "--f", is_flag=True, help="Keep printing new lines as they are written.")
@click.option("--ssh-port", default=22, type=int, show_default=True, help="Accepted for fleetctl; no SSH is used.")
@click.option("--sudo", is_flag=True, help="Accepted for fleetctl; the machine reads its journal itself.")
@click.option("--output", default="short", show_default=True, help="journalctl's --output mode.")
@click.argument("units", nargs=-1)
@click.pass_context
def journal(
    ctx: click.Context, lines: int, follow: bool, ssh_port: int, sudo: bool, output: str, units: tuple[str, ...]
) -> None:
    """Print the journal of a unit, from the machine that runs it (every machine for a global unit).

    \b
    Examples:
      fleetpyctl journal --lines 50 hello.service
      fleetpyctl journal -f hello.service     # follow until Ctrl-C
    """

    async def body(ctl: Ctl, client: Client) -> int:
        if len(units) != 1:
            raise CliError("One unit file must be provided.")
        name = mangle_name(units[0])
        is_global, current = await _unit(client, name)
        not_running = f"Unit {name} does not appear to be running."
        if not is_global and current == "inactive":
            raise CliError(not_running)
        try:
            return await relay_output(
                ctl,
                client,
                name,
                "journal",
                is_global=is_global,
                lines=lines,
                follow=follow,
                output=output,
                not_running=not_running,
            )
        except ApiError as exc:
            if exc.status == 400:
                raise CliError(f"Error: {exc.message}") from None
            raise

    run(ctx, body)


# ---------------------------------------------------------------------------------------------------- ssh


def ssh_command(
    address: str, options: SshOptions, *, port: int, forward_agent: bool, tty: bool, command: Sequence[str]
) -> list[str]:
    """The ``ssh`` argument list for a machine (never a shell string). Options follow fleetctl's flags; the
    remote command's words are passed on and ssh joins them with spaces, as fleetctl did. The address comes
    from the machine's record in etcd: it must be an IP address or a host name, and ``--`` ends ssh's options
    before it, so that no record can smuggle in an option such as ``-oProxyCommand=...``."""
    if not ADDRESS.fullmatch(address):
        raise CliError(f"Unable to proceed: the machine's address {address!r} is not an IP address or host name")
    args = ssh_options(options, port=port)
    if forward_agent:
        args.append("-A")
    if options.tunnel:
        args += ["-J", options.tunnel]
    if tty and not command:
        args.append("-t")
    args += ["--", address]
    args += list(command)
    return args


def _by_prefix(machines: Sequence[ApiMachine], prefix: str) -> list[ApiMachine]:
    return [m for m in machines if m.id.startswith(prefix)]


async def find_target(
    ctl: Ctl, client: Client, machine: str, unit: str, args: Sequence[str]
) -> tuple[ApiMachine, list[str]]:
    """fleetctl's lookup (FLEET-SPEC §1.4 ``ssh``): the machine to connect to and the remote command."""
    if machine and unit:
        raise CliError("Both machine and unit flags provided, please specify only one.")
    machines = await ctl.machines()
    if machine:
        found = _by_prefix(machines, machine)
        if not found:
            raise CliError("Unable to proceed: machine does not exist")
        if len(found) > 1:
            raise CliError("Unable to proceed: found more than one machine")
        return found[0], list(args)
    if unit:
        api_unit = await client.unit(mangle_name(unit))
        if api_unit is None:
            raise CliError("Unable to proceed: unit does not exist")
        if api_unit.is_global:
            raise CliError("Unable to proceed: global units unsupported")
        placed = [m for m in machines if m.id == api_unit.machine]
        if not placed:
            raise CliError("Unable to proceed: unit is not placed on any machine")
        return placed[0], list(args)
    if not args:
        raise CliError("Unable to proceed: one machine or unit must be provided")
    lookup, rest = args[0], list(args[1:])
    by_machine = _by_prefix(machines, lookup)
    machine_match = by_machine[0] if len(by_machine) == 1 else None
    unit_match = None
    api_unit = await client.unit(mangle_name(lookup))
    if api_unit is not None and not api_unit.is_global and api_unit.machine:
        unit_match = next((m for m in machines if m.id == api_unit.machine and m.primary_ip), None)
    if machine_match is not None and unit_match is not None:
        raise CliError(
            f"Unable to proceed: ambiguous argument, both machine and unit found for `{lookup}`.\n"
            "Please use flag `--machine` or `--unit` to refine the search"
        )
    target = machine_match or unit_match
    if target is None:
        raise CliError("Unable to proceed: could not find matching unit or machine")
    return target, rest


@click.command(context_settings={**CONTEXT, "ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--machine", default="", help="Machine ID (or a unique prefix) to connect to.")
@click.option("--unit", default="", help="Connect to the machine that runs this unit.")
@click.option("-A", "--forward-agent", "--A", is_flag=True, help="Forward the ssh agent.")
@click.option("--ssh-port", default=22, type=int, show_default=True, help="Port of sshd on the machine.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def ssh(ctx: click.Context, machine: str, unit: str, forward_agent: bool, ssh_port: int, args: tuple[str, ...]) -> None:
    """Open a shell on a machine, or run a command there, with the system's ssh client.

    The first argument is a machine ID prefix or a unit name (its machine), unless --machine or --unit says
    which; the rest is the command. The machines need sshd; fleetpyctl uses the global --ssh-username,
    --tunnel, --known-hosts-file, --strict-host-key-checking and --ssh-timeout flags. The exit code is the
    remote command's (255 when ssh fails).

    \b
    Examples:
      fleetpyctl ssh 4d389537
      fleetpyctl ssh hello.service -- systemctl status hello.service
    """

    async def body(ctl: Ctl, client: Client) -> int:
        target, command = await find_target(ctl, client, machine, unit, args)
        if not target.primary_ip:
            raise CliError("Could not determine address of machine.")
        argv = ssh_command(
            target.primary_ip,
            ctl.ssh,
            port=ssh_port,
            forward_agent=forward_agent,
            tty=sys.stdin.isatty(),
            command=command,
        )
        try:
            completed = await asyncio.to_thread(subprocess.run, argv, check=False)
        except OSError as exc:
            raise CliError(f"Unable to SSH to remote host: cannot run ssh: {exc.strerror}", SSH_FAILED) from None
        return completed.returncode

    run(ctx, body)


COMMANDS = (status, journal, ssh)
