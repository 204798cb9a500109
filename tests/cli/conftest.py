"""fleetpyctl against a real API process on a real unix socket, on the session's etcd, one prefix per test.

``ctl`` runs fleetpyctl in-process through click's ``CliRunner`` (in a worker thread, so that the test's event
loop stays free to seed etcd meanwhile); ``ctl_process`` runs ``python -m fleetpy.cli.fleetpyctl`` as a
subprocess. Both return the exit code, stdout and stderr.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

from fleetpy.cli.fleetpyctl import main
from fleetpy.devcluster import EtcdServer, terminate
from tests.support import ROOT, CtlResult


@dataclass
class ApiProcess:
    process: subprocess.Popen[bytes]
    socket: str
    log: str

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def log_text(self) -> str:
        with open(self.log, errors="replace") as handle:
            return handle.read()


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
        return True


def start_process(command: list[str], sock: str, log: str, env: dict[str, str] | None = None) -> ApiProcess:
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    return ApiProcess(process, sock, log)


def wait_serving(api: ApiProcess, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not _answers(api.socket):
        if api.process.poll() is not None:
            raise AssertionError(f"the API process exited with {api.process.returncode}:\n{api.log_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the API process did not listen on {api.socket} in {timeout}s:\n{api.log_text()}")
        time.sleep(0.02)


def stop_process(api: ApiProcess) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    terminate(api.process, 10)


@pytest.fixture
def api_process(etcd: EtcdServer, prefix: str, workdir: str) -> Iterator[ApiProcess]:
    """An API-only fleetpyd (no agent, no engine) on a unix socket of its own."""
    sock = os.path.join(workdir, f"ctl-{prefix.strip('/')}.sock")
    command = [
        sys.executable, "-m", "fleetpy.cli.fleetpyd", "--disable-agent", "--disable-engine", "--api-socket", sock,
        "--etcd-servers", etcd.endpoint, "--etcd-key-prefix", prefix,
    ]  # fmt: skip
    api = start_process(command, sock, os.path.join(workdir, f"ctl-{prefix.strip('/')}.log"))
    try:
        wait_serving(api)
        yield api
    finally:
        stop_process(api)


@dataclass
class Ctl:
    endpoint: str

    def run(self, *args: str, env: dict[str, str] | None = None) -> CtlResult:
        runner = CliRunner()
        result = runner.invoke(
            main,
            list(args),
            env={"FLEETPYCTL_ENDPOINT": self.endpoint, **(env or {})},
            catch_exceptions=False,
            prog_name="fleetpyctl",
        )
        return CtlResult(result.exit_code, result.stdout, result.stderr)

    async def __call__(self, *args: str, env: dict[str, str] | None = None) -> CtlResult:
        return await asyncio.to_thread(self.run, *args, env=env)

    async def process(self, *args: str, env: dict[str, str] | None = None, cwd: str | None = None) -> CtlResult:
        """``python -m fleetpy.cli.fleetpyctl ARGS`` with FLEETPYCTL_ENDPOINT set (``env`` may override it)."""
        full_env = {**os.environ, "FLEETPYCTL_ENDPOINT": self.endpoint, **(env or {})}
        command = [sys.executable, "-m", "fleetpy.cli.fleetpyctl", *args]
        result = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, env=full_env, cwd=cwd or ROOT, timeout=60
        )
        return CtlResult(result.returncode, result.stdout, result.stderr)


@pytest.fixture
def ctl(api_process: ApiProcess) -> Ctl:
    return Ctl(api_process.endpoint)


@pytest.fixture
def files(workdir: str, prefix: str) -> str:
    """A directory for the test's unit files."""
    directory = os.path.join(workdir, f"units-{prefix.strip('/')}")
    os.makedirs(directory)
    return directory
