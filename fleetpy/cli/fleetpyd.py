"""``fleetpyd``: the daemon, and ``fleetpyd dev``, a local cluster with real systemd.

Thin: parse, build settings (file < environment < flags), call ``daemon.serve`` or ``devcluster.run_dev``.
Errors a user can cause (a bad option value, a missing config file) print one line and exit 1.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import click

from fleetpy import __version__
from fleetpy.cloudconfig import CloudConfig, parse_cloud_config
from fleetpy.config import (
    DEFAULT_API_SOCKET,
    DEFAULT_CONFIG_FILE,
    DEFAULT_DEV_STATE_DIR,
    build_settings,
    parse_config_text,
    parse_duration,
    parse_metadata,
)
from fleetpy.errors import ConfigError, FleetError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def _fail(message: str) -> None:
    click.echo(f"fleetpyd: {message}", err=True)
    sys.exit(1)


def load_settings(
    config: str | None, flags: dict[str, Any], layers: Sequence[tuple[str, Mapping[str, str]]] = ()
) -> Any:
    path = config or os.environ.get("FLEETPY_CONFIG") or DEFAULT_CONFIG_FILE
    file_values: dict[str, str] = {}
    if os.path.isdir(path):
        raise ConfigError(f"config file {path} is a directory")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            file_values = parse_config_text(handle.read(), path)
    elif config:
        raise ConfigError(f"config file {config} does not exist")
    settings, warnings = build_settings(
        file_values=file_values, environ=os.environ, overrides=flags, file_name=path, layers=layers
    )
    for warning in warnings:
        click.echo(f"WARN {warning}", err=True)
    return settings


def read_cloud_config(path: str) -> CloudConfig:
    """Read a cloud-config, print its warnings and write its files (before the config file is read, which it
    may have written)."""
    from fleetpy.bootstrap import write_files
    from fleetpy.machine import detect_public_ip

    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read cloud-config {path}: {exc}") from None
    # $public_ipv4 and $private_ipv4: as CoreOS's /etc/environment names them, else this host's address
    public, private = os.environ.get("COREOS_PUBLIC_IPV4", ""), os.environ.get("COREOS_PRIVATE_IPV4", "")
    if not (public and private):
        detected = detect_public_ip()
        public, private = public or detected, private or detected
    cloud = parse_cloud_config(text, source=path, public_ipv4=public, private_ipv4=private)
    for warning in cloud.warnings:
        click.echo(f"WARN cloud-config {path}: {warning}", err=True)
    for written in write_files(cloud.write_files):
        click.echo(f"cloud-config {path}: wrote {written}", err=True)
    return cloud


@click.group(invoke_without_command=True, context_settings=CONTEXT)
@click.option("--config", "config", metavar="PATH", help=f"Config file (default {DEFAULT_CONFIG_FILE} if it exists).")
@click.option(
    "--cloud-config",
    "cloud_config",
    metavar="PATH",
    envvar="FLEETPY_CLOUD_CONFIG",
    help="A #cloud-config: its write_files are written, coreos.fleet and fleetpy configure the daemon (over the "
    "config file), fleetpy.units are submitted once the machine has joined.",
)
@click.option("--etcd-servers", metavar="URLS", help="etcd endpoints, comma-separated (http://127.0.0.1:2379).")
@click.option("--etcd-key-prefix", metavar="PREFIX", help="Key prefix in etcd (/fleetpy).")
@click.option("--machine-id", metavar="ID", help="This machine's ID (default: /etc/machine-id).")
@click.option("--public-ip", metavar="IP", help="Address published for this machine (default: detected).")
@click.option("--metadata", metavar="K=V,...", help="Machine metadata, e.g. region=us-east,disk=ssd.")
@click.option("--agent-ttl", metavar="DURATION", help="Machine presence TTL (10s).")
@click.option("--systemd-user/--systemd-system", default=None, help="Drive the user or the system manager.")
@click.option("--units-directory", metavar="DIR", help="Where the agent writes unit files.")
@click.option("--api-socket", metavar="PATH", help=f"API unix socket ({DEFAULT_API_SOCKET}; '' disables).")
@click.option("--api-listen", metavar="HOST:PORT", multiple=True, help="Also serve the API on TCP (repeatable).")
@click.option("--disable-engine", is_flag=True, default=None, help="Never lead the engine on this machine.")
@click.option("--disable-agent", is_flag=True, default=None, help="Run no agent (API and engine only).")
@click.option("--watch-dir", metavar="DIR", help="Unit files in DIR become units of the cluster (watch_dir).")
@click.option("-v", "--verbosity", count=True, help="More logging (DEBUG).")
@click.option("--version", is_flag=True, help="Print the version and exit.")
@click.pass_context
def main(ctx: click.Context, /, config: str | None, cloud_config: str | None, version: bool, **flags: Any) -> None:
    """fleetpyd: the fleetpy daemon. One runs on every host: it registers the machine in etcd, runs the units
    the engine places here through systemd, may lead the engine, and serves fleet's API.

    \b
    Examples:
      fleetpyd --etcd-servers http://10.0.0.1:2379 --metadata region=eu,disk=ssd
      fleetpyd --config /etc/fleetpy/fleetpy.conf
      fleetpyd --cloud-config user-data.yaml   # see fleetpyctl cloud-config
      fleetpyd --watch-dir /etc/fleetpy/units.d
      fleetpyd dev --machines 3          # a local cluster with real systemd
    """
    if version:
        click.echo(f"fleetpyd version {__version__}")
        return
    if ctx.invoked_subcommand is not None:
        return
    overrides: dict[str, Any] = {}
    try:
        for name, value in flags.items():
            if value is None or value == () or (name == "verbosity" and value == 0):
                continue
            if name == "etcd_servers":
                value = tuple(v.strip() for v in value.split(",") if v.strip())
            elif name == "metadata":
                value = parse_metadata(value)
            elif name == "agent_ttl":
                value = int(parse_duration(value))
            elif name == "api_listen":
                value = tuple(value)
            overrides[name] = value
        cloud = read_cloud_config(cloud_config) if cloud_config else CloudConfig()
        layers = [(f"cloud-config {cloud_config}", cloud.options)] if cloud_config else []
        settings = load_settings(config, overrides, layers)
    except (ConfigError, ValueError) as exc:
        _fail(str(exc))
        return
    from fleetpy.daemon import serve, setup_logging

    setup_logging(settings.verbosity)

    def reload() -> Any:
        """SIGHUP: the same sources read again (the cloud-config's options as first read)."""
        return load_settings(config, overrides, layers)

    try:
        sys.exit(asyncio.run(serve(settings, units=cloud.units, reload=reload)))
    except FleetError as exc:
        _fail(str(exc))


@main.command(context_settings=CONTEXT)
def version() -> None:
    """Print the version."""
    click.echo(f"fleetpyd version {__version__}")


@main.command(context_settings=CONTEXT)
@click.option("--machines", "-n", default=3, show_default=True, type=click.IntRange(0, 30), help="Sandbox hosts.")
@click.option(
    "--state-dir",
    default=DEFAULT_DEV_STATE_DIR,
    show_default=True,
    metavar="DIR",
    help="Where hosts, etcd data and cluster.json live.",
)
@click.option(
    "--api-socket",
    default=DEFAULT_API_SOCKET,
    show_default=True,
    metavar="PATH",
    help="The cluster's API socket (fleetpyctl's default endpoint).",
)
@click.option("--prefix", default="/fleetpy", show_default=True, help="etcd key prefix.")
@click.option("--agent-ttl", default=10, show_default=True, type=click.IntRange(3, 600), help="Agent TTL (s).")
@click.option(
    "--metadata",
    multiple=True,
    metavar="K=V,...",
    help="Metadata of machine 1, 2, ... (repeat; cycled when fewer than machines).",
)
@click.option(
    "--config",
    "extra_config",
    multiple=True,
    metavar="OPTION=VALUE",
    help="Extra fleetpy.conf line for every host (repeatable).",
)
@click.option(
    "--etcd",
    default="",
    metavar="URLS",
    help="Use this etcd (its members' URLs, comma-separated) instead of starting one.",
)
@click.option(
    "--hollow",
    default=0,
    type=click.IntRange(0, 5000),
    metavar="N",
    help="Also N hollow machines: the real agent on a SIMULATED systemd, for scale work only.",
)
@click.option(
    "--hollow-start-delay",
    default=0.0,
    type=float,
    metavar="SECONDS",
    help="How long a simulated start job takes on hollow machines.",
)
@click.option("--watch-dir", default="", metavar="DIR", help="Unit files in DIR become units of the cluster.")
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def dev(
    machines: int,
    state_dir: str,
    api_socket: str,
    prefix: str,
    agent_ttl: int,
    metadata: tuple[str, ...],
    extra_config: tuple[str, ...],
    etcd: str,
    hollow: int,
    hollow_start_delay: float,
    watch_dir: str,
    verbose: bool,
) -> None:
    """Run a local cluster: an embedded etcd and N sandbox hosts, each a real fleetpyd with its own
    systemd --user in its own namespaces (needs root). Runs until Ctrl-C or SIGTERM, then removes everything.

    The cluster is described in STATE_DIR/cluster.json (etcd endpoints, API endpoint, and per machine its ID,
    PIDs and systemd bus). fleetpyctl in another shell uses the API socket with no flags.

    \b
    Examples:
      fleetpyd dev
      fleetpyd dev --machines 5 --metadata region=eu --metadata region=us
      fleetpyd dev --machines 0 --hollow 1000     # 1,000 simulated machines (scale work)
    """
    from fleetpy.daemon import setup_logging
    from fleetpy.devcluster import DevCluster, DevOptions, run_dev

    setup_logging(1 if verbose else 0)
    if os.geteuid() != 0:
        _fail("fleetpyd dev needs root (it creates namespaces and cgroups for its sandbox hosts)")
    options = DevOptions(
        machines=machines,
        state_dir=state_dir,
        api_socket=api_socket,
        prefix=prefix,
        agent_ttl=agent_ttl,
        metadata=metadata,
        extra_config=extra_config,
        etcd=etcd,
        hollow=hollow,
        hollow_start_delay=hollow_start_delay,
        watch_dir=watch_dir,
    )

    def ready(cluster: DevCluster) -> None:
        click.echo(f"fleetpy dev cluster ready: {len(cluster.hosts)} machines, etcd {cluster.etcd_endpoint}")
        for host in cluster.hosts:
            click.echo(f"  {host.name}  {host.machine_id}  {host.public_ip}  bus {host.bus}")
        if cluster.hollow_machines:
            click.echo(f"  + {len(cluster.hollow_machines)} hollow machines (simulated systemd, for scale work)")
        click.echo(f"  API: unix://{cluster.api_socket}")
        click.echo(f"  described in {cluster.cluster_file}")
        if watch_dir:
            click.echo(f"  watching {os.path.abspath(watch_dir)} for unit files")
        if cluster.api_socket != DEFAULT_API_SOCKET:
            click.echo(f"  export FLEETPYCTL_ENDPOINT=unix://{cluster.api_socket}")
        click.echo("Press Ctrl-C to stop the cluster.", err=True)

    try:
        asyncio.run(run_dev(options, on_ready=ready))
    except FleetError as exc:
        _fail(str(exc))


def _register_commands() -> None:
    """Commands that live in modules of their own."""
    from fleetpy.cli.devhost import dev_host

    main.add_command(dev_host)


_register_commands()

if __name__ == "__main__":
    main()
