"""``fleetpyd dev-host``: one more sandbox host for a running ``fleetpyd dev`` cluster, started from a
cloud-config, as a new cloud machine would be (examples/07).

A command of fleetpy's own, registered on ``fleetpyd``'s group. The host is a sandbox host like the dev
cluster's (``devcluster.SandboxHost``) with a private ``/etc``, so the cloud-config's ``write_files`` stay in it;
its ``fleetpyd --cloud-config FILE`` drives the host's user manager (``FLEETPY_SYSTEMD_USER``) and finds
``$public_ipv4`` in ``COREOS_PUBLIC_IPV4``. It runs until Ctrl-C or SIGTERM, then the host is removed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import click

from fleetpy.config import DEFAULT_DEV_STATE_DIR
from fleetpy.devcluster import SandboxHost
from fleetpy.errors import FleetError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.command("dev-host", context_settings=CONTEXT)
@click.option("--cloud-config", "cloud_config", required=True, metavar="FILE", help="The host's cloud-config.")
@click.option("--name", default="x1", show_default=True, help="The host's name (hostname fleetpy-NAME).")
@click.option("--ip", default="127.77.0.100", show_default=True, help="Its $public_ipv4.")
@click.option("--state-dir", default=DEFAULT_DEV_STATE_DIR, show_default=True, metavar="DIR", help="The dev cluster's.")
def dev_host(cloud_config: str, name: str, ip: str, state_dir: str) -> None:
    """Start one more sandbox host that runs fleetpyd --cloud-config FILE (needs root), for a local cluster
    (fleetpyd dev) to grow as a cloud would. Runs until Ctrl-C or SIGTERM, then removes the host.

    \b
    Example:
      fleetpyctl cloud-config --etcd http://127.0.0.1:PORT --metadata role=extra -o /tmp/new-host.yaml
      fleetpyd dev-host --cloud-config /tmp/new-host.yaml
    """
    if os.geteuid() != 0:
        click.echo("fleetpyd: dev-host needs root (a sandbox host is made of namespaces and cgroups)", err=True)
        sys.exit(1)
    path = os.path.abspath(cloud_config)
    if not os.path.isfile(path):
        click.echo(f"fleetpyd: cloud-config {cloud_config} does not exist", err=True)
        sys.exit(1)
    host = SandboxHost(
        os.path.join(os.path.abspath(state_dir), "hosts", name),
        name,
        fleetpyd=[sys.executable, "-m", "fleetpy.cli.fleetpyd", "--cloud-config", path],
        env={"COREOS_PUBLIC_IPV4": ip, "FLEETPY_SYSTEMD_USER": "true"},
        public_ip=ip,
        private_etc=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    os.makedirs(host.directory, exist_ok=True)
    try:
        host.start()
        host.wait_ready()
        click.echo(f"sandbox host {name} ({host.hostname}) started: machine {host.machine_id}, ip {ip}")
        click.echo(f"  its fleetpyd logs to {os.path.join(host.directory, 'fleetpyd.log')}")
        click.echo("Press Ctrl-C to remove it.", err=True)
        while not stop.wait(0.5):
            if host.process is None or host.process.poll() is not None:
                raise FleetError(f"sandbox host {name} ended; see {host.directory}/host.log")
    except FleetError as exc:
        click.echo(f"fleetpyd: {exc}", err=True)
        sys.exit(1)
    finally:
        host.kill()
