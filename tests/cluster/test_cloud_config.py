"""A new host joins from a generated cloud-config: ``fleetpyctl cloud-config`` writes it, a new sandbox host
runs ``fleetpyd --cloud-config`` with it, and the machine joins with the metadata and runs the listed unit.

What this covers and what it cannot: there is no cloud-init here, so the cloud-config's ``packages`` and
``runcmd`` (installing fleetpy with pip, enabling fleetpyd.socket and fleetpyd.service in the system manager)
do not run; fleetpy is already importable, and the sandbox host's init starts ``fleetpyd --cloud-config``
itself. Everything fleetpyd does with the file is real: it writes ``write_files`` (into the host's private
``/etc``), takes its options from ``coreos.fleet`` and ``fleetpy`` (over the ``fleetpy.conf`` it just wrote),
replaces ``$public_ipv4``, and submits ``fleetpy.units`` once the machine has joined.
"""

from __future__ import annotations

import os
import sys

from fleetpy.devcluster import SandboxHost
from tests.support import Cluster, unit_status, wait_for, write_unit

EXTRA = (
    "[Unit]\nDescription=Runs only on the extra machine\n\n"
    '[Service]\nExecStart=/bin/sh -c "while true; do sleep 1; done"\n\n'
    "[X-Fleet]\nMachineMetadata=role=extra\n"
)


async def test_a_host_started_from_a_generated_cloud_config_joins_and_runs_its_units(
    cluster: Cluster, tmp_path, workdir: str
) -> None:
    unit_path = write_unit(str(tmp_path), "cc-extra.service", EXTRA)
    user_data = str(tmp_path / "user-data.yaml")
    cluster.ctl(
        "cloud-config", "--etcd", cluster.etcd.endpoint, "--prefix", cluster.prefix,
        "--metadata", "role=extra,disk=ssd", "--option", "systemd_user=true", "--option", "agent_ttl=5s",
        "--unit", unit_path, "-o", user_data, check=True,
    )  # fmt: skip
    with open(user_data) as handle:
        assert handle.readline() == "#cloud-config\n"
    real_conf = "/etc/fleetpy/fleetpy.conf"
    before = open(real_conf).read() if os.path.exists(real_conf) else None  # noqa: SIM115

    host = SandboxHost(
        os.path.join(workdir, "cc-host"),
        "cc",
        fleetpyd=[sys.executable, "-m", "fleetpy.cli.fleetpyd", "--cloud-config", user_data],
        env={"COREOS_PUBLIC_IPV4": "127.77.0.60"},
        private_etc=True,
    )
    host.start()
    try:
        host.wait_ready()

        async def joined() -> str:
            for line in cluster.ctl("list-machines", "--full", "--no-legend", check=True).out.splitlines():
                if line.startswith(host.machine_id):
                    return line
            return ""

        line = await wait_for(joined, timeout=60, interval=0.3, what="the new machine to join")
        assert "127.77.0.60" in line, "$public_ipv4 was not substituted"
        assert "disk=ssd" in line
        assert "role=extra" in line

        async def running() -> bool:
            return await unit_status(host.bus, "cc-extra.service") == ("loaded", "active", "running")

        await wait_for(running, timeout=60, interval=0.3, what="the cloud-config's unit to run on the new host")
        listing = cluster.ctl("list-unit-files", "--full", "--no-legend", "--fields", "unit,dstate,tmachine").out
        rows = [[cell for cell in line.split("\t") if cell] for line in listing.splitlines()]
        assert ["cc-extra.service", "launched", f"{host.machine_id}/127.77.0.60"] in rows

        # write_files went to the host's own /etc, and fleetpyd read the fleetpy.conf it wrote there
        with open(f"/proc/{host.host_pid}/root/etc/fleetpy/fleetpy.conf") as handle:
            assert f"etcd_servers = {cluster.etcd.endpoint}" in handle.read()
        assert os.path.exists(f"/proc/{host.host_pid}/root/etc/systemd/system/fleetpyd.socket")
        assert (open(real_conf).read() if os.path.exists(real_conf) else None) == before  # noqa: SIM115
    finally:
        host.kill()
    cluster.ctl("destroy", "cc-extra.service", check=True)
