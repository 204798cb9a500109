"""Helpers shared by the tests that use real etcd, real systemd and sandbox clusters."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fleetpy import devcluster
from fleetpy.config import parse_list
from fleetpy.devcluster import EtcdCluster, EtcdServer, SandboxHost, make_host, terminate
from fleetpy.keys import Keys
from fleetpy.registry.etcd import EtcdClient
from fleetpy.systemd.dbus import DbusSystemd

T = TypeVar("T")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELLO = (
    "[Unit]\nDescription=Hello World\n\n[Service]\n"
    'ExecStart=/bin/bash -c "while true; do echo \\"Hello, world\\"; sleep 1; done"\n'
)


async def wait_for(
    probe: Callable[[], Awaitable[T]], *, timeout: float, interval: float = 0.1, what: str = "condition"
) -> T:
    """Call ``probe`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await probe()
        except Exception as exc:  # a probe may fail while the system is still converging
            last = exc
        if last and not isinstance(last, Exception):
            return last  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last result: {last!r}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def systemd_at(bus: str) -> AsyncIterator[DbusSystemd]:
    """A D-Bus connection to a sandbox host's own systemd, bypassing fleetpy."""
    systemd = DbusSystemd(bus)
    await systemd.connect()
    try:
        yield systemd
    finally:
        await systemd.close()


async def unit_status(bus: str, name: str) -> tuple[str, str, str]:
    async with systemd_at(bus) as systemd:
        status = (await systemd.statuses([name]))[name]
        return status.load, status.active, status.sub


async def main_pid(bus: str, name: str) -> int:
    async with systemd_at(bus) as systemd:
        return await systemd.main_pid(name)


RUNNING = frozenset({"active", "activating", "deactivating", "reloading"})


async def running_units(systemd: DbusSystemd, names: list[str]) -> set[str]:
    """Which of ``names`` the host's systemd runs (a process may be up: active, starting, stopping)."""
    statuses = await systemd.statuses(names)
    return {name for name, status in statuses.items() if status.active in RUNNING}


async def where_running(buses: Mapping[str, DbusSystemd], names: list[str]) -> dict[str, list[str]]:
    """unit → the hosts (keys of ``buses``) whose systemd runs it, in ``buses``'s order."""
    seen: dict[str, list[str]] = {}
    for host, systemd in buses.items():
        for unit in await running_units(systemd, names):
            seen.setdefault(unit, []).append(host)
    return seen


@dataclass
class CtlResult:
    code: int
    out: str
    err: str


@dataclass
class Machine:
    id: str
    name: str
    bus: str
    dir: str
    public_ip: str
    host_pid: int
    cgroup: str

    @property
    def units_dir(self) -> str:
        """The agent's unit directory, as seen from outside the host."""
        return os.path.join(self.dir, "run", "user", "0", "fleetpy", "units")

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, "fleetpyd.log")

    def hold_fleetpyd(self) -> None:
        """Keep the host's init from (re)starting its fleetpyd (``fleetpy.devhost``)."""
        devcluster.hold_fleetpyd(self.dir)

    def release_fleetpyd(self) -> None:
        devcluster.release_fleetpyd(self.dir)

    def fleetpyd_pid(self) -> int:
        return devcluster.fleetpyd_pid(self.host_pid)


class Cluster:
    """A running ``fleetpyd dev`` (a subprocess of the test) on an etcd the test controls."""

    def __init__(
        self,
        state_dir: str,
        etcd: EtcdServer | EtcdCluster,
        machines: int = 3,
        agent_ttl: int = 10,
        extra: tuple[str, ...] = (),
        *,
        metadata: tuple[str, ...] = (),
        config: tuple[str, ...] = (),
    ) -> None:
        """``etcd``: one member or a cluster (every host gets all its endpoints); ``metadata``: per machine,
        cycled; ``config``: extra fleetpy.conf lines of every host."""
        self.state_dir = state_dir
        self.etcd = etcd
        self.api_socket = os.path.join(state_dir, "api.sock")
        self.prefix = "/fleetpy-" + os.path.basename(state_dir)[-12:]
        self.agent_ttl = agent_ttl
        self.config = config
        self.added: list[SandboxHost] = []
        options = [arg for m in metadata for arg in ("--metadata", m)]
        options += [arg for line in config for arg in ("--config", line)]
        command = [
            sys.executable, "-m", "fleetpy.cli.fleetpyd", "dev", "--machines", str(machines),
            "--state-dir", state_dir, "--api-socket", self.api_socket, "--etcd", etcd.endpoint,
            "--prefix", self.prefix, "--agent-ttl", str(agent_ttl), *options, *extra,
        ]  # fmt: skip
        self.log = open(os.path.join(os.path.dirname(state_dir), os.path.basename(state_dir) + ".log"), "ab")  # noqa: SIM115
        self.process = subprocess.Popen(command, stdout=self.log, stderr=self.log, cwd=ROOT)
        self.description = self._wait_description()
        self.machines = [
            Machine(m["id"], m["name"], m["bus"], m["dir"], m["public_ip"], m["host_pid"], m["cgroup"])
            for m in self.description["machines"]
        ]

    def _wait_description(self, timeout: float = 90) -> dict[str, Any]:
        path = os.path.join(self.state_dir, "cluster.json")
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"fleetpyd dev exited with {self.process.returncode}:\n{self.log_tail()}")
            if os.path.exists(path):
                with open(path) as handle:
                    return dict(json.load(handle))
            if time.monotonic() > deadline:
                raise AssertionError(f"fleetpyd dev did not become ready:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self) -> str:
        try:
            with open(self.log.name, errors="replace") as handle:
                return "".join(handle.readlines()[-40:])
        except OSError:
            return ""

    @property
    def endpoint(self) -> str:
        return f"unix://{self.api_socket}"

    def machine(self, machine_id: str) -> Machine:
        return next(m for m in self.machines if m.id == machine_id)

    def ctl(self, *args: str, check: bool = False, timeout: float = 120, cwd: str | None = None) -> CtlResult:
        env = dict(os.environ, FLEETPYCTL_ENDPOINT=self.endpoint)
        result = subprocess.run(
            [sys.executable, "-m", "fleetpy.cli.fleetpyctl", *args],
            capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd, check=False,
        )  # fmt: skip
        out = CtlResult(result.returncode, result.stdout, result.stderr)
        if check and out.code != 0:
            raise AssertionError(f"fleetpyctl {' '.join(args)} exited {out.code}:\n{out.out}\n{out.err}")
        return out

    def registry_client(self) -> EtcdClient:
        return EtcdClient(parse_list(self.etcd.endpoint))

    def kill_host(self, machine: Machine) -> None:
        os.kill(machine.host_pid, signal.SIGKILL)

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)

    async def leader(self) -> str:
        """The machine ID in the engine leader key, ``""`` when no engine leads."""
        client = self.registry_client()
        try:
            kv = await client.get(self.keys.leader)
            return kv.value.decode() if kv is not None else ""
        finally:
            await client.close()

    async def add_host(self, index: int, metadata: str = "") -> Machine:
        """Start another machine (``h<index>``) that joins the running cluster, as a new host would; it is
        stopped with the cluster. Returns once it is registered."""
        host = make_host(
            self.state_dir,
            index,
            etcd=self.etcd.endpoint,
            prefix=self.prefix,
            agent_ttl=self.agent_ttl,
            metadata=metadata,
            extra_config=self.config,
        )
        self.added.append(host)
        host.start()
        await asyncio.to_thread(host.wait_ready)
        info = host.describe()
        machine = Machine(info["id"], info["name"], info["bus"], info["dir"], info["public_ip"], host.host_pid, "")
        self.machines.append(machine)

        async def registered() -> bool:
            return machine.id[:8] in self.ctl("list-machines", "--no-legend").out

        await wait_for(registered, timeout=60, what=f"{host.name} to register")
        return machine

    def host_logs(self, lines: int = 30) -> str:
        """The end of every host's fleetpyd log, for failure messages."""
        parts = []
        for machine in self.machines:
            try:
                with open(machine.log_path, errors="replace") as handle:
                    tail = "".join(handle.readlines()[-lines:])
            except OSError:
                tail = "(no log)\n"
            parts.append(f"--- {machine.name} ({machine.id[:8]}) fleetpyd.log:\n{tail}")
        return "".join(parts)

    def stop(self) -> None:
        for host in self.added:
            host.kill()
        terminate(self.process, 60)
        self.log.close()


def write_unit(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as handle:
        handle.write(text)
    return path


@contextlib.contextmanager
def etcd_server(directory: str) -> Iterator[EtcdServer]:
    server = EtcdServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@contextlib.contextmanager
def etcd_cluster(directory: str, size: int = 3) -> Iterator[EtcdCluster]:
    """``size`` etcd members on loopback forming one cluster; every member is killed afterwards, also those a
    test stopped and started again."""
    cluster = EtcdCluster(directory, size=size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill()


@contextlib.asynccontextmanager
async def systemds(cluster: Cluster) -> AsyncIterator[dict[str, DbusSystemd]]:
    """Every machine's own systemd, by machine name, connected for the block."""
    async with contextlib.AsyncExitStack() as stack:
        yield {m.name: await stack.enter_async_context(systemd_at(m.bus)) for m in cluster.machines}
