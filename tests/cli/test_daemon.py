"""fleetpyd in API-only mode (``--disable-agent --disable-engine``), as the CLI tests would like to run it."""

from __future__ import annotations

import os
import signal
import sys

from fleetpy.devcluster import EtcdServer
from tests.cli.conftest import Ctl, start_process, stop_process, wait_serving
from tests.support import write_unit

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
