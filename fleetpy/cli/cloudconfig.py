"""``fleetpyctl cloud-config``: a cloud-config that makes a fresh host a member of the cluster.

A command of fleetpy's own, registered on ``fleetpyctl``'s group. It renders the Jinja2 templates shipped in
``fleetpy/templates`` (``cloudconfig.render_cloud_config``); it talks to no server.
"""

from __future__ import annotations

import os
import sys
from importlib import resources

import click

from fleetpy.config import parse_list, parse_metadata
from fleetpy.errors import ConfigError, InvalidUnit

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def package_templates() -> dict[str, str]:
    """The Jinja2 templates shipped in the package, by file name."""
    folder = resources.files("fleetpy").joinpath("templates")
    return {entry.name: entry.read_text(encoding="utf-8") for entry in folder.iterdir() if entry.name.endswith(".j2")}


def _read(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {what} {path}: {exc}") from None


@click.command("cloud-config", context_settings=CONTEXT)
@click.option("--etcd", "etcd", multiple=True, metavar="URL", help="etcd endpoint (repeat, or comma-separated).")
@click.option("--prefix", default="/fleetpy", show_default=True, help="etcd key prefix of the cluster.")
@click.option("--metadata", default="", metavar="K=V,...", help="The new machine's metadata.")
@click.option("--option", "options", multiple=True, metavar="NAME=VALUE", help="Another fleetpyd option.")
@click.option("--unit", "units", multiple=True, metavar="PATH", help="A unit file to submit once the host joined.")
@click.option("--tls-ca", metavar="PEM", help="CA certificate that signed etcd's (written to the host).")
@click.option("--tls-cert", metavar="PEM", help="Client certificate for etcd (written to the host).")
@click.option("--tls-key", metavar="PEM", help="Client key for etcd (written to the host, mode 0600).")
@click.option("--install", default="fleetpy", show_default=True, metavar="SPEC", help="What pip installs.")
@click.option("-o", "--output", metavar="FILE", help="Write to FILE instead of standard output.")
def cloud_config(
    etcd: tuple[str, ...],
    prefix: str,
    metadata: str,
    options: tuple[str, ...],
    units: tuple[str, ...],
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    install: str,
    output: str | None,
) -> None:
    """Print a cloud-config that turns a fresh host into a member of the cluster: it installs fleetpy
    (pip, into /opt/fleetpy), writes /etc/fleetpy/fleetpy.conf and the units fleetpyd.service and
    fleetpyd.socket, and starts them; fleetpyd then reads the same file (--cloud-config) and submits the
    --unit files to the cluster once the machine has joined.

    \b
    Examples:
      fleetpyctl cloud-config --etcd http://10.0.0.1:2379 --metadata region=eu,disk=ssd > user-data.yaml
      fleetpyctl cloud-config --etcd https://10.0.0.1:2379 --tls-ca ca.pem --tls-cert me.pem --tls-key me.key
      fleetpyctl cloud-config --unit web.service --option agent_ttl=20s -o user-data.yaml
    """
    # Imported here: Jinja2 and PyYAML load only for this command, not at every fleetpyctl start.
    from fleetpy.cloudconfig import MemberConfig, render_cloud_config

    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    extra = []
    for option in options:
        name, sep, value = option.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"expected NAME=VALUE, got {option!r}", param_hint="--option")
        extra.append((name.strip().replace("-", "_"), value.strip()))
    tls = {
        key: _read(path, f"--tls-{key}") for key, path in (("ca", tls_ca), ("cert", tls_cert), ("key", tls_key)) if path
    }
    member = MemberConfig(
        etcd_servers=tuple(s for value in etcd for s in parse_list(value)) or ("http://127.0.0.1:2379",),
        prefix=prefix,
        metadata=",".join(f"{k}={v}" for k, v in parse_metadata(metadata).items()),
        options=extra,
        units=[(os.path.basename(path), _read(path, "unit file")) for path in units],
        tls=tls,
        install=install,
    )
    try:
        text = render_cloud_config(package_templates(), member)
    except (ConfigError, InvalidUnit) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        click.echo(text, nl=False)
