"""``fleetpyctl list-watch-errors``: the files of watched directories that are not applied, and why.

A command of fleetpy's own (fleetctl has no watched directories), registered on ``fleetpyctl``'s group.
"""

from __future__ import annotations

import click

from fleetpy.cli.output import machine_id_legend, tabwrite
from fleetpy.client import Client

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.command("list-watch-errors", context_settings=CONTEXT)
@click.option("-l", "--full", is_flag=True, help="Do not shorten machine IDs.")
@click.option("--no-legend", is_flag=True, help="Do not print a header line.")
@click.pass_context
def list_watch_errors(ctx: click.Context, full: bool, no_legend: bool) -> None:
    """List the files of watched directories (fleetpyd --watch-dir) that are not applied, and why.

    An invalid file changes nothing in the cluster; it is listed here until it is fixed or removed.
    A file named "." stands for the directory itself.
    """
    from fleetpy.cli.fleetpyctl import Ctl, _run  # the group's runner; imported late, fleetpyctl imports us

    async def body(_ctl: Ctl, client: Client) -> None:
        rows = [
            [error.file, machine_id_legend(error.machine, full), error.directory, error.message]
            for error in await client.watch_errors()
        ]
        if not no_legend:
            rows.insert(0, ["FILE", "MACHINE", "DIRECTORY", "ERROR"])
        click.echo(tabwrite(rows), nl=False)

    _run(ctx, body)
