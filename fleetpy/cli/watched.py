"""``fleetpyctl list-watch-errors``: the files of watched directories that are not applied, and why.

A command of fleetpy's own (fleetctl has no watched directories), registered on ``fleetpyctl``'s group.
"""

from __future__ import annotations

import click

from fleetpy.cli.common import CONTEXT, Ctl, output_option, print_json, run
from fleetpy.cli.output import machine_id_legend, tabwrite
from fleetpy.client import Client


@click.command("list-watch-errors", context_settings=CONTEXT)
@click.option("-l", "--full", is_flag=True, help="Do not shorten machine IDs.")
@click.option("--no-legend", is_flag=True, help="Do not print a header line.")
@output_option
@click.pass_context
def list_watch_errors(ctx: click.Context, full: bool, no_legend: bool, output_format: str) -> None:
    """List the files of watched directories (fleetpyd --watch-dir) that are not applied, and why.

    An invalid file changes nothing in the cluster; it is listed here until it is fixed or removed.
    A file named "." stands for the directory itself.

    \b
    -o json: [{"file": "...", "machine": "<machine id>", "directory": "...", "error": "..."}, ...]
    """

    async def body(_ctl: Ctl, client: Client) -> None:
        errors = await client.watch_errors()
        if output_format == "json":
            print_json(
                [{"file": e.file, "machine": e.machine, "directory": e.directory, "error": e.message} for e in errors]
            )
            return
        rows = [
            [error.file, machine_id_legend(error.machine, full), error.directory, error.message] for error in errors
        ]
        if not no_legend:
            rows.insert(0, ["FILE", "MACHINE", "DIRECTORY", "ERROR"])
        click.echo(tabwrite(rows), nl=False)

    run(ctx, body)
