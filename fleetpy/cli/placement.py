"""fleetpyctl commands that fleetctl does not have, about placement: ``plan`` and ``set-metadata``.

``plan`` answers "where would this unit go, and why not elsewhere?" without changing anything: the API runs the
engine's own plan on the cluster as it is (``POST /fleetpy/v1/plan``). ``set-metadata`` sets a machine's dynamic
metadata through fleet's ``PATCH /machines``; units whose requirements it changes move at once.

``fleetpyctl`` registers both commands on its group.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from fleetpy.cli.common import CONTEXT, CliError, Ctl, local_unit, output_option, resolve_argument, run
from fleetpy.cli.output import format_metadata, machine_id_legend, machine_legend, tabwrite
from fleetpy.client import ApiError, ApiPlan, ApiPlannedUnit, ApiVerdict, Client
from fleetpy.unit import UnitOption, name_info

# ------------------------------------------------------------------------------------------------- plan


def verdict_text(unit: ApiPlannedUnit, verdict: ApiVerdict) -> str:
    """One machine's verdict for a unit, in words."""
    if verdict.rule:
        return f"ruled out by {verdict.rule}: {verdict.message}"
    if verdict.machine in unit.machines:
        if unit.is_global:
            return "runs it" if unit.kept else "would run it"
        return "runs it and keeps it" if unit.kept else "chosen: the least loaded machine that passes every check"
    if not unit.machines or unit.kept or unit.is_global:
        return "passes every check"
    chosen = next((v for v in unit.verdicts if v.machine == unit.machines[0]), None)
    if chosen is not None and verdict.load > chosen.load:
        return "passes every check, but runs more units"
    if chosen is not None and verdict.load == chosen.load and verdict.machine > chosen.machine:
        return "passes every check, as many units, but its ID sorts after the chosen machine's"
    return "passes every check, but the unit runs on the chosen machine already"


def render_plan(plan: ApiPlan, ips: dict[str, str], full: bool) -> str:
    lines: list[str] = []
    for unit in plan.units:
        where = ", ".join(machine_legend(m, ips, full) for m in unit.machines)
        if unit.machines:
            verb = "runs on" if unit.kept else "would run on"
            lines.append(f"{unit.name}: {verb} {where}")
        else:
            lines.append(f"{unit.name}: would run nowhere: {unit.reason or 'no machine can run it'}")
        if unit.verdicts:
            rows = [["", "MACHINE", "UNITS", "VERDICT"]]
            rows += [
                ["", machine_legend(v.machine, ips, full), str(v.load), verdict_text(unit, v)] for v in unit.verdicts
            ]
            lines.append(tabwrite(rows).rstrip("\n"))
    asked = {u.name for u in plan.units}
    others = [a for a in plan.actions if a.unit not in asked]
    if others:
        lines.append("Other changes the plan makes:")
        words = {"Schedule": "would be placed on", "Unschedule": "would leave", "Update": "would be updated on"}
        for action in others:
            verb = words.get(action.type, action.type)
            lines.append(f"\t{action.unit} {verb} {machine_legend(action.machine, ips, full)}: {action.reason}")
    return "".join(line + "\n" for line in lines)


def plan_json(plan: ApiPlan) -> dict[str, Any]:
    """The plan for scripts: full machine IDs, rule and message ``null`` for a machine that passes."""
    units = [
        {
            "name": u.name,
            "global": u.is_global,
            "machines": list(u.machines),
            "kept": u.kept,
            "reason": u.reason or None,
            "verdicts": [
                {"machine": v.machine, "load": v.load, "rule": v.rule or None, "message": v.message or None}
                for v in u.verdicts
            ],
        }
        for u in plan.units
    ]
    actions = [{"type": a.type, "unit": a.unit, "machine": a.machine, "reason": a.reason} for a in plan.actions]
    return {"units": units, "actions": actions}


async def _requested(client: Client, arguments: Sequence[str]) -> list[tuple[str, Sequence[UnitOption] | None]]:
    """Each argument as (name, options): a local file's options, an instance's template's, or ``None`` for a
    unit the cluster has."""
    requested: list[tuple[str, Sequence[UnitOption] | None]] = []
    for argument in arguments:
        name, path = resolve_argument(argument)
        local, _ = local_unit(name, path)
        options: Sequence[UnitOption] | None = local.options if local is not None else None
        info = name_info(name)
        if options is None and info.is_instance and await client.unit(name) is None:
            template = await client.unit(info.template)
            if template is not None:
                options = template.options
        requested.append((name, options))
    return requested


@click.command("plan", context_settings=CONTEXT)
@click.option("--full", "-l", "--l", is_flag=True, help="Show full machine IDs.")
@output_option
@click.argument("units", nargs=-1)
@click.pass_context
def plan(ctx: click.Context, full: bool, output_format: str, units: tuple[str, ...]) -> None:
    """Show where units would run and why every other machine was not chosen, without changing anything.

    Each UNIT is a unit file (new, or a new version of a submitted unit) or the name of a unit in the
    cluster. The engine's own rules decide, on the cluster as it is now, as if the units were started;
    changes the plan would make to other units (a unit that Replaces another moves it) are listed too.

    \b
    Examples:
      fleetpyctl plan web@1.service web@2.service
      fleetpyctl plan db.service               # a unit the cluster already has

    \b
    -o json: {"units": [{"name", "global", "machines", "kept", "reason",
                         "verdicts": [{"machine", "load", "rule", "message"}]}],
              "actions": [{"type", "unit", "machine", "reason"}]}
    """

    async def body(ctl: Ctl, client: Client) -> None:
        if not units:
            raise CliError("No units given")
        requested = await _requested(client, units)
        try:
            answer = await client.plan(requested)
        except ApiError as exc:
            raise CliError(f"Error planning units: {exc}") from None
        if output_format == "json":
            click.echo(json.dumps(plan_json(answer), indent=2))
        else:
            click.echo(render_plan(answer, await ctl.ips(), full), nl=False)

    run(ctx, body)


# ------------------------------------------------------------------------------------------------- metadata


def _assignment(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise CliError(f"Invalid metadata {text!r}: expected KEY=VALUE")
    if not value:
        raise CliError(f"Invalid metadata {text!r}: a value is required (use --remove {key} to remove the key)")
    return key, value


@click.command("set-metadata", context_settings=CONTEXT)
@click.option("--remove", "removed", multiple=True, metavar="KEY", help="Remove this key (repeatable).")
@click.argument("machine")
@click.argument("values", nargs=-1)
@click.pass_context
def set_metadata(ctx: click.Context, removed: tuple[str, ...], machine: str, values: tuple[str, ...]) -> None:
    """Set a machine's metadata at run time (MACHINE: its ID or a unique prefix of it).

    Values set here override the machine's configured metadata and outlive restarts; --remove hides a key,
    configured or not. Units whose MachineMetadata the change satisfies, or no longer satisfies, move.

    \b
    Examples:
      fleetpyctl set-metadata 4d389537 role=web disk=ssd
      fleetpyctl set-metadata 4d389537 --remove role
    """

    async def body(_ctl: Ctl, client: Client) -> None:
        changes = dict(_assignment(v) for v in values)
        if not changes and not removed:
            raise CliError("No metadata given")
        machines = await client.machines()
        matches = sorted(m.id for m in machines if m.id.startswith(machine))
        if machine in matches:
            matches = [machine]
        if not matches:
            raise CliError(f"Unable to set metadata: machine {machine} does not exist")
        if len(matches) > 1:
            raise CliError(f"Unable to set metadata: {machine} matches more than one machine")
        try:
            await client.set_metadata(matches[0], changes, removed)
        except ApiError as exc:
            raise CliError(f"Unable to set metadata: {exc}") from None
        now = {m.id: m for m in await client.machines()}.get(matches[0])
        metadata = format_metadata(now.metadata) if now is not None else "-"
        click.echo(f"{machine_id_legend(matches[0], False)}\t{metadata}")

    run(ctx, body)
