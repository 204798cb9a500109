"""Fixtures for tests that talk to a real etcd and a real systemd.

Nothing here is mocked. When etcd or a sandbox host cannot be started the tests fail with the reason (they are
never skipped): CI must not pass without having exercised the real parts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from fleetpy.devcluster import EtcdServer, SandboxHost
from fleetpy.keys import Keys
from fleetpy.registry.etcd import EtcdClient
from fleetpy.registry.store import EtcdRegistry
from tests.support import Cluster

REAL_PARTS = ("cluster", "adapters", "loops", "api", "cli")


def _needs_real_parts(item: pytest.Item) -> bool:
    return any(f"{os.sep}tests{os.sep}{part}{os.sep}" in str(item.path) for part in REAL_PARTS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any(_needs_real_parts(i) for i in items):
        problems = []
        if os.geteuid() != 0:
            problems.append("these tests must run as root (sandbox hosts need namespaces and cgroups)")
        for tool in ("unshare", "systemd", "busctl", "dbus-daemon"):
            if shutil.which(tool) is None:
                problems.append(f"{tool} is not installed (apt-get install systemd dbus dbus-user-session util-linux)")
        if problems:
            raise pytest.UsageError("cannot run the real-etcd/real-systemd tests:\n  " + "\n  ".join(problems))


@pytest.fixture(scope="session")
def workdir() -> Iterator[str]:
    """The session's directory for etcd data, hosts and logs; FLEETPY_KEEP_TESTDIR=1 keeps it for a post-mortem."""
    # Short paths: unix socket paths inside sandbox hosts must stay under 108 bytes.
    directory = tempfile.mkdtemp(prefix="fpt-", dir="/tmp")
    yield directory
    if os.environ.get("FLEETPY_KEEP_TESTDIR") == "1":
        print(f"\nkept the test directory {directory}")
    else:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def etcd(workdir: str) -> Iterator[EtcdServer]:
    """One real etcd for the session; every test works under its own key prefix."""
    server = EtcdServer(os.path.join(workdir, "etcd"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def prefix() -> str:
    return f"/t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def client(etcd: EtcdServer) -> AsyncIterator[EtcdClient]:
    etcd_client = EtcdClient([etcd.endpoint], timeout=5)
    yield etcd_client
    await etcd_client.close()


@pytest.fixture
def registry(client: EtcdClient, prefix: str) -> EtcdRegistry:
    return EtcdRegistry(client, Keys(prefix))


@pytest.fixture(scope="session")
def host(workdir: str) -> Iterator[SandboxHost]:
    """A sandbox host with a real systemd --user and no fleetpyd, shared by the adapter and loop tests."""
    sandbox = SandboxHost(os.path.join(workdir, "host"), "t1")
    sandbox.start()
    try:
        sandbox.wait_ready()
        yield sandbox
    finally:
        sandbox.kill()


@pytest.fixture
def units_dir(host: SandboxHost) -> str:
    """A fresh unit directory for one test, visible to the host's systemd under the same path."""
    directory = os.path.join(host.directory, "units", uuid.uuid4().hex[:8])
    os.makedirs(directory)
    return directory


@pytest.fixture(scope="module")
def cluster(workdir: str) -> Iterator[Cluster]:
    """A 3-machine ``fleetpyd dev`` cluster on an etcd of its own, per test module."""
    name = uuid.uuid4().hex[:8]
    etcd_server = EtcdServer(os.path.join(workdir, f"etcd-{name}"))
    etcd_server.start()
    dev = None
    try:
        dev = Cluster(os.path.join(workdir, f"c-{name}"), etcd_server, machines=3, agent_ttl=5)
        yield dev
    finally:
        if dev is not None:
            dev.stop()
        etcd_server.kill()


# ---------------------------------------------------------------------------------------------- figures
# Tests of faults and bad input record what they measured (time to converge, duplicates seen, units lost,
# examples run); the figures are printed at the end of every run, also with -q and when output is captured.

FIGURES = pytest.StashKey[list[tuple[str, str, str]]]()
Figure = Callable[[str, object], None]


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Figure:
    """``figure(name, value)``: record a figure of this test for the run's summary."""
    rows = request.config.stash.setdefault(FIGURES, [])

    def record(name: str, value: object) -> None:
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        rows.append((request.node.nodeid, name, text))
        print(f"{name}: {text}")

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    rows = config.stash.get(FIGURES, [])
    if not rows:
        return
    terminalreporter.section("fleetpy figures")
    test = ""
    for nodeid, name, value in rows:
        if nodeid != test:
            terminalreporter.write_line(nodeid)
            test = nodeid
        terminalreporter.write_line(f"    {name}: {value}")
