"""``fleetpyd --cloud-config`` as a process (API-only, no systemd needed): its options, files, units, warnings
and errors. (A whole new host that joins from a generated cloud-config: tests/cluster/test_cloud_config.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from fleetpy.devcluster import EtcdServer
from tests.cli.conftest import Ctl, start_process, stop_process, wait_serving

UNIT = "[Unit]\nDescription=from the cloud-config\n\n[Service]\nExecStart=/bin/sleep 100\n"


def fleetpyd(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEETPY_CONFIG": "/dev/null"}
    return subprocess.run(
        [sys.executable, "-m", "fleetpy.cli.fleetpyd", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_malformed_yaml_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "user-data"
    path.write_text("#cloud-config\ncoreos:\n  fleet: [unclosed\n")
    result = fleetpyd("--cloud-config", str(path))
    assert result.returncode == 1
    assert result.stderr.startswith(f"fleetpyd: {path}: malformed YAML")
    assert "line 3" in result.stderr


def test_a_file_that_is_not_a_cloud_config_is_an_error(tmp_path) -> None:
    path = tmp_path / "user-data"
    path.write_text("#!/bin/sh\necho hi\n")
    result = fleetpyd("--cloud-config", str(path))
    assert (result.returncode, result.stderr) == (
        1,
        f"fleetpyd: {path}: not a cloud-config: its first line must be '#cloud-config', not '#!/bin/sh'\n",
    )
    assert fleetpyd("--cloud-config", str(tmp_path / "missing")).stderr.startswith("fleetpyd: cannot read cloud-config")


async def test_the_daemon_takes_options_files_and_units_from_its_cloud_config(
    etcd: EtcdServer, prefix: str, workdir: str, tmp_path
) -> None:
    name = prefix.strip("/")
    sock = os.path.join(workdir, f"cc-{name}.sock")
    written = tmp_path / "etc" / "motd"
    user_data = tmp_path / "user-data"
    user_data.write_text(
        "#cloud-config\n"
        f"coreos:\n  fleet:\n    etcd-servers: {etcd.endpoint}\n    etcd-key-prefix: {prefix}\n"
        "    public-ip: $public_ipv4\n"
        f"fleetpy:\n  disable-agent: true\n  disable_engine: true\n  api_socket: {sock}\n"
        f"  runtime_directory: {tmp_path / 'run'}\n  favourite_colour: blue\n"
        f"  units:\n    - name: cc.service\n      content: {json.dumps(UNIT)}\n"
        f"write_files:\n  - path: {written}\n    content: welcome\n    permissions: '0600'\n"
        "runcmd:\n  - [echo, left to cloud-init]\n"
    )
    env = {**os.environ, "FLEETPY_CONFIG": "/dev/null", "COREOS_PUBLIC_IPV4": "192.0.2.9"}
    command = [sys.executable, "-m", "fleetpy.cli.fleetpyd", "--cloud-config", str(user_data)]
    api = start_process(command, sock, os.path.join(workdir, f"cc-{name}.log"), env=env)
    try:
        wait_serving(api)
        assert written.read_text() == "welcome"
        assert written.stat().st_mode & 0o777 == 0o600
        listed = await Ctl(api.endpoint).process("list-unit-files", "--no-legend", "--fields", "unit,dstate")
        assert listed.out == "cc.service\tlaunched\n", api.log_text()
        log = api.log_text()
        assert "WARN cloud-config" in log
        assert "unknown key fleetpy.favourite_colour - ignoring" in log
        assert "runcmd" not in log, "cloud-init's keys are not fleetpyd's to warn about"
    finally:
        stop_process(api)
