"""fleetpyd started on its own (not ``fleetpyd dev``): in API-only mode (``--disable-agent --disable-engine``),
as the CLI tests would like to run it, and as a whole daemon on a sandbox host with a watched directory."""

from __future__ import annotations

import os
import signal
import sys
import uuid

from fleetpy.client import Client
from fleetpy.devcluster import EtcdServer, SandboxHost
from tests.cli.conftest import Ctl, start_process, stop_process, wait_serving
from tests.support import unit_status, wait_for, write_unit

HELLO = "[Unit]\nDescription=Hello World\n\n[Service]\nExecStart=/bin/sleep 100\n"
TOKEN = "a-token-for-the-tcp-test-0123"


async def test_an_api_only_fleetpyd_serves_until_it_is_stopped(
    etcd: EtcdServer, prefix: str, workdir: str, files: str
) -> None:
    name = prefix.strip("/")
    sock = os.path.join(workdir, f"d-{name}.sock")
    command = [
        sys.executable, "-m", "fleetpy.cli.fleetpyd", "--disable-agent", "--disable-engine",
        "--api-socket", sock, "--etcd-servers", etcd.endpoint, "--etcd-key-prefix", prefix,
    ]  # fmt: skip
    # no machine ID is needed in this mode; its own runtime directory keeps its lock apart from other daemons
    env = {**os.environ, "FLEETPY_CONFIG": "/dev/null", "FLEETPY_RUNTIME_DIRECTORY": os.path.join(workdir, name)}
    env.pop("FLEETPY_MACHINE_ID", None)
    api = start_process(command, sock, os.path.join(workdir, f"d-{name}.log"), env=env)
    try:
        wait_serving(api)
        result = await Ctl(api.endpoint).process("submit", write_unit(files, "hello.service", HELLO))
        assert (result.code, result.out, result.err) == (0, "Unit hello.service inactive\n", "")
        assert api.process.poll() is None, api.log_text()
        os.kill(api.process.pid, signal.SIGTERM)
        assert api.process.wait(10) == 0, api.log_text()
    finally:
        stop_process(api)


async def test_the_api_also_listens_on_tcp_when_asked(etcd: EtcdServer, prefix: str, workdir: str, files: str) -> None:
    from fleetpy.devcluster import free_port

    name = prefix.strip("/")
    sock = os.path.join(workdir, f"tcp-{name}.sock")
    port = free_port()
    tokens = write_unit(files, "tokens", f"{TOKEN}\n")
    command = [
        sys.executable, "-m", "fleetpy.cli.fleetpyd", "--disable-agent", "--disable-engine", "--api-socket", sock,
        "--api-listen", f"127.0.0.1:{port}", "--etcd-servers", etcd.endpoint, "--etcd-key-prefix", prefix,
    ]  # fmt: skip
    env = {**os.environ, "FLEETPY_API_TOKENS_FILE": tokens}  # plain TCP is fine on loopback, but never anonymous
    api = start_process(command, sock, os.path.join(workdir, f"tcp-{name}.log"), env=env)
    try:
        wait_serving(api)
        ctl = Ctl(f"http://127.0.0.1:{port}")
        submitted = await ctl.process(
            "submit", write_unit(files, "hello.service", HELLO), env={"FLEETPYCTL_TOKEN": TOKEN}
        )
        assert submitted.code == 0, submitted.err
        listed = await ctl.process(
            "list-unit-files", "--no-legend", "--fields", "unit,dstate", env={"FLEETPYCTL_TOKEN": TOKEN}
        )
        assert listed.out == "hello.service\tinactive\n"
        anonymous = await ctl.process("list-unit-files")
        assert anonymous.code == 1
        assert "Error 401" in anonymous.err
    finally:
        stop_process(api)


async def test_a_fleetpyd_with_a_watched_directory_runs_a_file_dropped_into_it(
    etcd: EtcdServer, host: SandboxHost, units_dir: str, prefix: str, workdir: str
) -> None:
    name = prefix.strip("/")
    watched, runtime = os.path.join(workdir, f"w-{name}"), os.path.join(workdir, f"w-{name}-run")
    os.makedirs(watched)
    os.makedirs(runtime)
    sock = os.path.join(workdir, f"w-{name}.sock")
    command = [
        sys.executable, "-m", "fleetpy.cli.fleetpyd", "--watch-dir", watched, "--etcd-servers", etcd.endpoint,
        "--etcd-key-prefix", prefix, "--machine-id", uuid.uuid4().hex, "--systemd-user", "--units-directory",
        units_dir, "--api-socket", sock, "--agent-ttl", "5s", "--public-ip", "127.0.0.1",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPY_")}
    env.update(DBUS_SESSION_BUS_ADDRESS=host.bus, FLEETPY_CONFIG="/dev/null", FLEETPY_RUNTIME_DIRECTORY=runtime)
    daemon = start_process(command, sock, os.path.join(workdir, f"w-{name}.log"), env=env)
    unit = f"dropped-{name}.service"
    try:
        wait_serving(daemon)
        os.rename(write_unit(watched, f".{unit}.tmp", HELLO), os.path.join(watched, unit))  # saved, then moved in

        async def launched() -> bool:
            async with Client(daemon.endpoint, timeout=5) as client:
                record = await client.unit(unit)
            return record is not None and record.desired == "launched"

        await wait_for(launched, timeout=30, interval=0.2, what=f"{unit} to be a launched unit in etcd")

        async def running() -> bool:
            return await unit_status(host.bus, unit) == ("loaded", "active", "running")

        await wait_for(running, timeout=30, interval=0.2, what=f"{unit} to run on the host")
        os.kill(daemon.process.pid, signal.SIGTERM)
        assert daemon.process.wait(30) == 0, daemon.log_text()
    finally:
        stop_process(daemon)
