"""fleetpy's own units (``units/``): systemd accepts them, and fleetpyd runs under them, socket-activated, inside a
sandbox host's systemd, with its API reached through the socket systemd holds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from fleetpy.cli.cloudconfig import package_templates
from fleetpy.client import Client
from fleetpy.cloudconfig import render_unit_files
from fleetpy.config import build_settings, parse_config_text
from fleetpy.devcluster import EtcdServer, SandboxHost
from tests.support import ROOT, main_pid, systemd_at, unit_status, wait_for

UNITS = os.path.join(ROOT, "units")


def test_units_are_the_packaged_templates_rendered_with_their_defaults() -> None:
    rendered = render_unit_files(package_templates())
    assert sorted(rendered) == sorted(os.listdir(UNITS))
    for name, text in rendered.items():
        with open(os.path.join(UNITS, name)) as handle:
            assert handle.read() == text, f"units/{name} differs from fleetpy/templates/{name}.j2"


def test_the_sample_config_is_valid_and_warns_of_nothing() -> None:
    with open(os.path.join(UNITS, "fleetpy.conf")) as handle:
        values = parse_config_text(handle.read(), "units/fleetpy.conf")
    settings, warnings = build_settings(file_values=values)
    assert warnings == []
    assert settings.api_socket == "/run/fleetpy/fleetpy.sock"


def test_systemd_analyze_verify_accepts_every_unit_file(tmp_path) -> None:
    # An alternative root with systemd's own units, fleetpy's units where an administrator puts them, and an
    # executable at fleetpyd's path (verify checks that ExecStart= can run).
    root = tmp_path / "root"
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/fleetpyd").write_text("#!/bin/sh\n")
    (root / "usr/local/bin/fleetpyd").chmod(0o755)
    names = sorted(n for n in os.listdir(UNITS) if n.endswith((".service", ".socket")))
    assert names == ["fleetpyd.service", "fleetpyd.socket"]
    for name in names:
        shutil.copy(os.path.join(UNITS, name), root / "etc/systemd/system" / name)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", *names], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")

    # and it does complain about a broken unit, so the silence above means something
    (root / "etc/systemd/system/broken.service").write_text(
        "[Service]\nType=nosuch\nExecStart=/usr/local/bin/fleetpyd\n"
    )
    broken = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", "broken.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Failed to parse service type" in broken.stderr


async def test_fleetpyd_runs_socket_activated_under_its_units_in_a_sandbox_host(
    etcd: EtcdServer, prefix: str, workdir: str
) -> None:
    host = SandboxHost(os.path.join(workdir, "sock-host"), "sock")
    host.start()
    try:
        host.wait_ready()
        unit_dir = os.path.join(host.run_dir, "user", "0", "systemd", "user")  # the manager's runtime unit path
        os.makedirs(os.path.join(unit_dir, "fleetpyd.service.d"))
        for name in ("fleetpyd.service", "fleetpyd.socket"):
            shutil.copy(os.path.join(UNITS, name), os.path.join(unit_dir, name))  # as shipped
        config = os.path.join(host.directory, "fleetpy.conf")
        with open(config, "w") as handle:
            handle.write(
                f"etcd_servers = {etcd.endpoint}\netcd_key_prefix = {prefix}\nsystemd_user = true\n"
                "public_ip = 127.77.0.61\nagent_ttl = 5s\n"
            )
        # The one change for the sandbox: this checkout's fleetpyd and a config for the test's etcd.
        with open(os.path.join(unit_dir, "fleetpyd.service.d", "sandbox.conf"), "w") as handle:
            handle.write(
                f"[Service]\nExecStart=\nExecStart={sys.executable} -m fleetpy.cli.fleetpyd --config {config}\n"
            )
        async with systemd_at(host.bus) as systemd:
            await systemd.reload()
            await systemd.start("fleetpyd.socket")
        socket_path = os.path.join(host.run_dir, "fleetpy", "fleetpy.sock")  # the host's /run/fleetpy/fleetpy.sock

        async def listening() -> bool:
            return await unit_status(host.bus, "fleetpyd.socket") == ("loaded", "active", "listening")

        await wait_for(listening, timeout=30, what="systemd to listen on fleetpyd.socket")
        assert os.path.exists(socket_path)
        assert (await unit_status(host.bus, "fleetpyd.service"))[1] == "inactive", "started before anyone asked"

        async def registered() -> bool:
            async with Client(f"unix://{socket_path}", timeout=5) as client:
                return host.machine_id in [m.id for m in await client.machines()]

        # The first request starts the service; the API answers 503 until the machine has registered.
        await wait_for(registered, timeout=60, interval=0.3, what="the API to answer through the socket")
        # Type=notify: the service is active only once fleetpyd said READY=1
        assert await unit_status(host.bus, "fleetpyd.service") == ("loaded", "active", "running")

        # Stopped, the daemon leaves the socket to systemd, which starts it again on the next request (had
        # fleetpyd bound a socket of its own at that path, the path would now be dead).
        async with systemd_at(host.bus) as systemd:
            await systemd.stop("fleetpyd.service")

        async def stopped() -> bool:
            return (await unit_status(host.bus, "fleetpyd.service"))[1] == "inactive"

        await wait_for(stopped, timeout=60, what="fleetpyd.service to stop")
        await wait_for(listening, timeout=30, what="systemd to listen on fleetpyd.socket again")
        await wait_for(registered, timeout=60, interval=0.3, what="the API to answer again after a restart")
        assert await unit_status(host.bus, "fleetpyd.service") == ("loaded", "active", "running")

        # Restart=on-failure: a daemon killed by a signal is started again by systemd.
        killed = await main_pid(host.bus, "fleetpyd.service")
        assert killed > 0
        kill = ["org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager"]
        subprocess.run(
            ["busctl", f"--address={host.bus}", "call", *kill, "KillUnit", "ssi", "fleetpyd.service", "main", "9"],
            check=True,
        )

        async def restarted() -> int:
            pid = await main_pid(host.bus, "fleetpyd.service")
            running = await unit_status(host.bus, "fleetpyd.service") == ("loaded", "active", "running")
            return pid if running and pid not in (0, killed) else 0

        await wait_for(restarted, timeout=60, interval=0.3, what="systemd to restart the killed fleetpyd")
        await wait_for(registered, timeout=60, interval=0.3, what="the API to answer after systemd restarted it")
    finally:
        host.kill()
