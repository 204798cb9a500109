"""A whole fleetpyd (agent, engine and API in one process) driving a sandbox host's real systemd, through its
life: it refuses units it must not run, a second daemon with its machine ID refuses to start, SIGHUP re-reads
the configuration without dropping the API socket or touching units, SIGTERM stops its units and leaves the
cluster, exit code 0. The daemon runs outside the host and reaches the host's systemd on its bus; its unit
directory is under the host's directory, which the host's systemd sees at the same path.

The tests run in order on one daemon per module (the last one stops it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from fleetpy.client import Client
from fleetpy.devcluster import EtcdServer, SandboxHost, terminate
from fleetpy.keys import Keys
from fleetpy.registry.etcd import EtcdClient
from tests.cli.conftest import Ctl
from tests.support import ROOT, running_units, systemd_at, unit_status, wait_for, write_unit

LOOP = '[Service]\nExecStart=/bin/sh -c "while true; do sleep 1; done # {name}"\n'
AGENT_TTL = 5


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    directory: str
    config: str
    machine_id: str
    socket: str
    units_dir: str
    prefix: str
    etcd: EtcdServer
    host: SandboxHost
    log_path: str

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def log(self) -> str:
        with open(self.log_path, errors="replace") as handle:
            return handle.read()

    def write_config(self, *extra: str) -> None:
        lines = [
            f"etcd_servers = {self.etcd.endpoint}",
            f"etcd_key_prefix = {self.prefix}",
            f"machine_id = {self.machine_id}",
            "systemd_user = true",
            f"units_directory = {self.units_dir}",
            f"runtime_directory = {os.path.join(self.directory, 'run')}",
            f"api_socket = {self.socket}",
            f"agent_ttl = {AGENT_TTL}s",
            "public_ip = 127.0.0.1",
            *extra,
        ]
        with open(self.config, "w") as handle:
            handle.write("\n".join(lines) + "\n")


def daemon_env(host: SandboxHost) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPY_")}
    env["DBUS_SESSION_BUS_ADDRESS"] = host.bus
    return env


@pytest.fixture(scope="module")
def daemon(etcd: EtcdServer, host: SandboxHost, workdir: str) -> Iterator[Daemon]:
    name = uuid.uuid4().hex[:8]
    directory = os.path.join(workdir, f"life-{name}")
    units_dir = os.path.join(host.directory, "units", f"life-{name}")
    os.makedirs(directory)
    os.makedirs(units_dir)
    log_path = os.path.join(directory, "fleetpyd.log")
    config = os.path.join(directory, "fleetpy.conf")
    running = Daemon(
        subprocess.Popen(["true"]),
        directory,
        config,
        uuid.uuid4().hex,
        os.path.join(directory, "api.sock"),
        units_dir,
        f"/life-{name}",
        etcd,
        host,
        log_path,
    )
    running.process.wait()
    running.write_config('metadata = "role=first"')
    with open(log_path, "wb") as out:
        running.process = subprocess.Popen(
            [sys.executable, "-m", "fleetpy.cli.fleetpyd", "--config", config],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=daemon_env(host),
        )  # fmt: skip
    try:
        asyncio.run(_registered(running))
        yield running
    finally:
        terminate(running.process, 30)


async def _registered(daemon: Daemon) -> None:
    async def registered() -> bool:
        if daemon.process.poll() is not None:
            raise AssertionError(f"fleetpyd exited with {daemon.process.returncode}:\n{daemon.log()}")
        async with Client(daemon.endpoint, timeout=5) as client:
            return any(m.id == daemon.machine_id for m in await client.machines())

    await wait_for(registered, timeout=60, interval=0.2, what="the daemon to register")


async def running_here(daemon: Daemon, names: list[str]) -> set[str]:
    async with systemd_at(daemon.host.bus) as systemd:
        return await running_units(systemd, names)


# ---------------------------------------------------------------------------------------------- refusals


async def test_a_unit_the_host_already_has_is_refused_and_the_hosts_own_stays_untouched(
    daemon: Daemon, tmp_path, figure
) -> None:
    name = f"own-{uuid.uuid4().hex[:6]}.service"
    own_dir = os.path.join(daemon.host.directory, "home", ".config", "systemd", "user")
    os.makedirs(own_dir, exist_ok=True)
    own = write_unit(own_dir, name, "[Service]\nExecStart=/bin/sleep 300\n")
    async with systemd_at(daemon.host.bus) as systemd:
        await systemd.reload()
    try:
        ctl = Ctl(daemon.endpoint)
        result = await ctl("start", "--no-block", write_unit(str(tmp_path), name, LOOP.format(name="cluster's")))
        assert result.code == 0, result.err

        async def refused() -> str:
            async with Client(daemon.endpoint) as client:
                unit = await client.unit(name)
                return unit.reason if unit is not None else ""

        reason = await wait_for(refused, timeout=30, interval=0.2, what="the unit to be refused with a reason")
        figure("reason shown for the refused unit", reason)
        assert "UnitPolicy ruled out 1 of 1 machine (the machine refuses it" in reason
        assert f"the host already has {name} ({own}), which fleetpy did not write" in reason
        async with Client(daemon.endpoint) as client:
            (machine,) = [m for m in await client.machines() if m.id == daemon.machine_id]
        assert name in machine.refused
        assert not os.path.exists(os.path.join(daemon.units_dir, name)), "fleetpy wrote no file for it"
        assert await unit_status(daemon.host.bus, name) == ("loaded", "inactive", "dead"), "the host's own, untouched"
        with open(own) as handle:
            assert handle.read() == "[Service]\nExecStart=/bin/sleep 300\n"
        assert f"agent: refusing unit {name}: the host already has" in daemon.log()
    finally:
        await Ctl(daemon.endpoint)("destroy", name)
        os.unlink(own)
        async with systemd_at(daemon.host.bus) as systemd:
            await systemd.reload()


def test_a_second_daemon_with_a_machine_id_in_use_refuses_to_start(daemon: Daemon, figure) -> None:
    other = os.path.join(daemon.directory, "second")
    os.makedirs(other)
    command = [
        sys.executable, "-m", "fleetpy.cli.fleetpyd", "--etcd-servers", daemon.etcd.endpoint,
        "--etcd-key-prefix", daemon.prefix, "--machine-id", daemon.machine_id, "--systemd-user",
        "--api-socket", "", "--disable-engine", "--agent-ttl", f"{AGENT_TTL}s",
    ]  # fmt: skip
    env = {**daemon_env(daemon.host), "FLEETPY_RUNTIME_DIRECTORY": other, "FLEETPY_CONFIG": "/dev/null"}
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False)
    elapsed = time.monotonic() - started
    figure("second daemon refused after (s)", elapsed)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"fleetpyd: machine ID {daemon.machine_id} is already in use by a running fleetpyd (its registration is "
        "being kept alive); give this host its own ID with machine_id or --machine-id"
    )
    assert "Traceback" not in result.stderr
    assert daemon.process.poll() is None, "the first daemon keeps running"


# ---------------------------------------------------------------------------------------------- SIGHUP


async def test_sighup_rereads_the_configuration_without_dropping_the_socket_or_touching_units(
    daemon: Daemon, tmp_path, figure
) -> None:
    keep, denied = "hup-keep.service", "hup-deny-1.service"
    ctl = Ctl(daemon.endpoint)
    for name in (keep, denied):
        started = await ctl("start", write_unit(str(tmp_path), name, LOOP.format(name=name)))
        assert started.code == 0, started.err
    pid_before = await _main_pid(daemon, keep)
    inode_before = os.stat(daemon.socket).st_ino

    failures: list[str] = []
    requests = 0
    stop = asyncio.Event()

    async def keep_asking() -> None:
        nonlocal requests
        async with Client(daemon.endpoint, timeout=5) as client:  # one connection, kept alive throughout
            while not stop.is_set():
                try:
                    await client.machines()
                except Exception as exc:
                    failures.append(repr(exc))
                requests += 1
                await asyncio.sleep(0.01)

    asker = asyncio.create_task(keep_asking())
    try:
        daemon.write_config('metadata = "role=second"', "unit_deny = hup-deny-*", "verbosity = 1", "token_limit = 7")
        daemon.process.send_signal(signal.SIGHUP)
        sent = time.monotonic()

        async def reloaded() -> bool:
            async with Client(daemon.endpoint) as client:
                (machine,) = [m for m in await client.machines() if m.id == daemon.machine_id]
            return machine.metadata == {"role": "second"}

        await wait_for(reloaded, timeout=20, interval=0.05, what="the new metadata in the machine record")
        figure("new metadata published after SIGHUP (s)", time.monotonic() - sent)

        async def denied_stopped() -> bool:
            return denied not in await running_here(daemon, [denied])

        await wait_for(denied_stopped, timeout=30, interval=0.1, what="the newly denied unit to stop")
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(asker)
    assert failures == [], f"{len(failures)} of {requests} API requests failed around SIGHUP: {failures[:3]}"
    figure("API requests during the reload / failed", f"{requests} / {len(failures)}")
    assert os.stat(daemon.socket).st_ino == inode_before, "the API socket is the same"
    assert await _main_pid(daemon, keep) == pid_before, "the running unit was not touched"
    log = daemon.log()
    assert "SIGHUP: configuration reloaded; applied: metadata, unit_deny, verbosity" in log
    assert "SIGHUP: these changes take effect only after a restart: token_limit" in log

    async with Client(daemon.endpoint) as client:
        unit = await client.unit(denied)
    assert unit is not None
    assert "unit name matches unit_deny pattern 'hup-deny-*'" in unit.reason

    # A configuration that cannot be read changes nothing.
    with open(daemon.config, "a") as handle:
        handle.write("agent_ttl = soon\n")
    daemon.process.send_signal(signal.SIGHUP)

    async def refused_reload() -> bool:
        return "SIGHUP: the configuration was not reloaded, the previous one stays in force" in daemon.log()

    await wait_for(refused_reload, timeout=20, what="the bad configuration to be refused")
    assert daemon.process.poll() is None
    assert await _main_pid(daemon, keep) == pid_before
    await ctl("destroy", denied)


async def _main_pid(daemon: Daemon, name: str) -> int:
    async with systemd_at(daemon.host.bus) as systemd:
        return await systemd.main_pid(name)


# ---------------------------------------------------------------------------------------------- SIGTERM


async def test_sigterm_stops_every_unit_leaves_the_cluster_and_exits_0(daemon: Daemon, tmp_path, figure) -> None:
    names = [f"term-{i}.service" for i in range(6)]
    ctl = Ctl(daemon.endpoint)
    started = await ctl("start", *[write_unit(str(tmp_path), n, LOOP.format(name=n)) for n in names])
    assert started.code == 0, started.err
    names.append("hup-keep.service")  # from the SIGHUP test, still running
    assert await running_here(daemon, names) == set(names)

    daemon.process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    code = await asyncio.to_thread(daemon.process.wait, 60)
    exited = time.monotonic() - sent
    left = await running_here(daemon, names)

    etcd = EtcdClient([daemon.etcd.endpoint])
    try:
        keys = Keys(daemon.prefix)
        machine = await etcd.get(keys.machine(daemon.machine_id))
        _, states = await etcd.get_prefix(keys.state(daemon.machine_id))
    finally:
        await etcd.close()
    figure("SIGTERM to exit (s)", exited)
    figure("exit code", code)
    figure("units left running", len(left))
    assert code == 0, daemon.log()[-3000:]
    assert exited < 15, f"shutdown took {exited:.1f}s"
    assert left == set(), f"still running after the daemon exited: {sorted(left)}"
    assert machine is None, "the machine left the cluster"
    assert states == [], "its unit states went with it"
    assert [f for f in os.listdir(daemon.units_dir) if not f.startswith(".")] == [], "its unit files are gone"
