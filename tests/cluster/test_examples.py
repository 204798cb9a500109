"""Every scenario in ``examples/`` on a sandbox cluster set up as ``make demo`` sets up its own (metadata, a
watched directory, prefix ``/fleetpy``): each test runs the commands of the example's README, taken from the
README itself, and checks what the README says should happen through the hosts' own systemd.

The README's paths of ``make demo``'s cluster (``/tmp/fleetpy-dev``) are replaced by this cluster's, and
``fleetpyctl`` finds this cluster's API in ``FLEETPYCTL_ENDPOINT``; nothing else of a command is changed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from fleetpy.devcluster import EtcdServer
from tests.support import ROOT, Cluster, CtlResult, Machine, unit_status, wait_for

EXAMPLES = os.path.join(ROOT, "examples")
METADATA = ("region=east,disk=ssd", "region=west", "region=east")  # as scripts/demo gives them


@pytest.fixture(scope="module")
def demo(workdir: str) -> Iterator[Cluster]:
    name = uuid.uuid4().hex[:8]
    state = os.path.join(workdir, f"c-{name}")
    os.makedirs(os.path.join(state, "units.d"))
    etcd = EtcdServer(os.path.join(workdir, f"etcd-{name}"))
    etcd.start()
    cluster = None
    try:
        extra = [a for m in METADATA for a in ("--metadata", m)]
        extra += ["--watch-dir", os.path.join(state, "units.d"), "--prefix", "/fleetpy"]
        cluster = Cluster(state, etcd, machines=3, agent_ttl=5, extra=tuple(extra))
        cluster.prefix = "/fleetpy"
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        etcd.kill()


class Readme:
    """The shell commands of an example's README, run as a reader would run them."""

    def __init__(self, example: str, cluster: Cluster, tmp: str) -> None:
        with open(os.path.join(EXAMPLES, example, "README.md")) as handle:
            text = handle.read()
        blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
        assert blocks, f"examples/{example}/README.md has no commands"
        self.lines = [re.sub(r"\s{2,}#.*$", "", line) for block in blocks for line in block.splitlines() if line]
        self.cluster = cluster
        self.substitutions = {"/tmp/fleetpy-dev": cluster.state_dir, "/tmp/new-host.yaml": f"{tmp}/new-host.yaml"}
        self.cwd = ROOT

    def line(self, start: str) -> str:
        found = sorted({line for line in self.lines if line.startswith(start)})
        assert len(found) == 1, f"expected one README command starting with {start!r}, found {found}"
        line = found[0]
        for old, new in self.substitutions.items():
            line = line.replace(old, new)
        return line

    @property
    def env(self) -> dict[str, str]:
        path = f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"
        return {**os.environ, "PATH": path, "FLEETPYCTL_ENDPOINT": self.cluster.endpoint}

    def run(self, *starts: str) -> CtlResult:
        """Run these README commands (in order, in one shell) and return what they printed."""
        script = "\n".join(self.line(start) for start in starts)
        if script.startswith("cd "):
            self.cwd = os.path.join(self.cwd, script.split()[1])
            return CtlResult(0, "", "")
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            capture_output=True, text=True, cwd=self.cwd, env=self.env, timeout=180, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"{script}\nexited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        return CtlResult(result.returncode, result.stdout, result.stderr)

    def start(self, start: str) -> subprocess.Popen[str]:
        """Start a README command that runs until Ctrl-C."""
        return subprocess.Popen(
            ["bash", "-c", f"exec {self.line(start)}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.cwd, env=self.env,
        )  # fmt: skip


async def hosts_running(cluster: Cluster, name: str, machines: list[Machine] | None = None) -> list[Machine]:
    return [
        m for m in machines or cluster.machines if await unit_status(m.bus, name) == ("loaded", "active", "running")
    ]


async def runs_on(cluster: Cluster, name: str, count: int = 1, timeout: float = 60) -> list[Machine]:
    async def probe() -> list[Machine]:
        running = await hosts_running(cluster, name)
        return running if len(running) == count else []

    return await wait_for(probe, timeout=timeout, interval=0.3, what=f"{name} to run on {count} host(s)")


async def stopped_everywhere(cluster: Cluster, name: str, timeout: float = 60) -> None:
    async def probe() -> bool:
        return not await hosts_running(cluster, name)

    await wait_for(probe, timeout=timeout, interval=0.3, what=f"{name} to stop everywhere")


def rows(out: str) -> list[list[str]]:
    return [[cell for cell in line.split("\t") if cell] for line in out.splitlines()]


def with_metadata(cluster: Cluster, metadata: str) -> Machine:
    return cluster.machines[METADATA.index(metadata)]  # fleetpyd dev gives --metadata to h1, h2, h3 in order


async def test_01_hello_world(demo: Cluster, tmp_path) -> None:
    readme = Readme("01-hello-world", demo, str(tmp_path))
    started = readme.run("fleetpyctl start")
    assert "Unit hello.service inactive" in started.out
    assert "Unit hello.service launched on " in started.out
    (machine,) = await runs_on(demo, "hello.service")
    assert ["hello.service", "e55c0ae", "launched", "launched", f"{machine.id[:8]}.../{machine.public_ip}"] in rows(
        readme.run("fleetpyctl list-unit-files").out
    )
    assert ["hello.service", f"{machine.id[:8]}.../{machine.public_ip}", "active", "running"] in rows(
        readme.run("fleetpyctl list-units").out
    )
    assert "Hello, world" in readme.run("fleetpyctl cat").out
    readme.run("fleetpyctl destroy")
    await stopped_everywhere(demo, "hello.service")
    assert "hello.service" not in readme.run("fleetpyctl list-unit-files").out


async def test_02_global_unit(demo: Cluster, tmp_path) -> None:
    readme = Readme("02-global-unit", demo, str(tmp_path))
    assert "Triggered global unit heartbeat.service start" in readme.run("fleetpyctl start").out
    await runs_on(demo, "heartbeat.service", count=len(demo.machines))

    async def listed() -> bool:  # the agents publish what systemd reports a moment later
        listing = rows(readme.run("fleetpyctl list-units").out)
        return len([r for r in listing if r[0] == "heartbeat.service" and r[2:] == ["active", "running"]]) == 3

    await wait_for(listed, timeout=30, interval=0.3, what="list-units to show heartbeat.service on every machine")
    assert ["heartbeat.service", "global"] in [[r[0], r[-1]] for r in rows(readme.run("fleetpyctl list-unit-f").out)]
    demo.ctl("destroy", "heartbeat.service", check=True)
    await stopped_everywhere(demo, "heartbeat.service")


async def test_03_metadata_placement(demo: Cluster, tmp_path) -> None:
    readme = Readme("03-metadata-placement", demo, str(tmp_path))
    machines = readme.run("fleetpyctl list-machines").out
    for metadata in ("disk=ssd,region=east", "region=west", "region=east"):
        assert metadata in machines
    readme.run("fleetpyctl start")
    assert await runs_on(demo, "west.service") == [with_metadata(demo, "region=west")]
    assert await runs_on(demo, "fast-east.service") == [with_metadata(demo, "region=east,disk=ssd")]
    readme.run("fleetpyctl list-units")
    # The README's prose: a unit that no machine matches is not placed and shows no target.
    nowhere = os.path.join(str(tmp_path), "north.service")
    with open(nowhere, "w") as handle:
        handle.write("[Service]\nExecStart=/bin/sleep 600\n\n[X-Fleet]\nMachineMetadata=region=north\n")
    demo.ctl("start", "--no-block", nowhere, check=True)
    listing = rows(demo.ctl("list-unit-files", "--no-legend", "--fields", "unit,dstate,target", check=True).out)
    assert ["north.service", "launched", "-"] in listing
    demo.ctl("destroy", "north.service", check=True)
    readme.run("fleetpyctl destroy")
    await stopped_everywhere(demo, "west.service")
    await stopped_everywhere(demo, "fast-east.service")


async def test_04_spread_with_conflicts(demo: Cluster, tmp_path) -> None:
    readme = Readme("04-spread-with-conflicts", demo, str(tmp_path))
    readme.run("cd examples/04-spread-with-conflicts")
    readme.run("fleetpyctl start")
    placed = [(await runs_on(demo, f"web@{i}.service"))[0].id for i in (1, 2, 3)]
    assert len(set(placed)) == 3, "two instances share a machine"
    demo.ctl("start", "--no-block", "web@4.service", check=True, cwd=readme.cwd)  # the README's prose: a fourth
    listing = rows(demo.ctl("list-unit-files", "--no-legend", "--fields", "unit,dstate,target", check=True).out)
    assert ["web@4.service", "launched", "-"] in listing
    demo.ctl("destroy", "web@1.service", "web@2.service", "web@3.service", "web@4.service", "web@.service")
    for i in (1, 2, 3):
        await stopped_everywhere(demo, f"web@{i}.service")


async def test_05_machineof_sidekick(demo: Cluster, tmp_path) -> None:
    readme = Readme("05-machineof-sidekick", demo, str(tmp_path))
    readme.run("fleetpyctl start examples/05-machineof-sidekick/hello-web.service")
    readme.run("fleetpyctl start examples/05-machineof-sidekick/hello-web-register.service")
    (service,) = await runs_on(demo, "hello-web.service")
    assert await runs_on(demo, "hello-web-register.service") == [service]
    hostname = f"fleetpy-{service.name}"

    async def registered() -> str:
        return readme.run("etcdctl").out

    registration = await wait_for(registered, timeout=30, interval=0.5, what="the sidekick's key in etcd")
    assert registration.splitlines() == [f"/services/hello-web/{hostname}", f'{{"host": "{hostname}", "port": 8080}}']
    readme.run("fleetpyctl destroy")
    await stopped_everywhere(demo, "hello-web-register.service")

    async def deregistered() -> bool:
        return readme.run("etcdctl").out == ""

    await wait_for(deregistered, timeout=30, interval=0.5, what="the key to go when the sidekick stops")


async def test_06_watched_directory(demo: Cluster, tmp_path) -> None:
    readme = Readme("06-watched-directory", demo, str(tmp_path))
    readme.run("cp examples/06-watched-directory/clock.service")
    readme.run("cp examples/06-watched-directory/greeter.service.j2")
    await runs_on(demo, "clock.service")
    (english,) = await runs_on(demo, "greeter-en.service")
    (french,) = await runs_on(demo, "greeter-fr.service")
    assert english.id != french.id, "the greeters' Conflicts= was not rendered"
    with open(os.path.join(french.units_dir, "greeter-fr.service")) as handle:
        assert 'echo "Bonjour from greeter-fr.service on $(hostname)"; sleep 5' in handle.read()
    files = readme.run("fleetpyctl list-unit-files").out
    assert all(f"{n}.service" in files for n in ("clock", "greeter-en", "greeter-fr"))

    readme.run("sed -i")

    async def new_clock() -> bool:
        for machine in await hosts_running(demo, "clock.service"):
            with open(os.path.join(machine.units_dir, "clock.service")) as handle:
                if "sleep 1;" in handle.read():
                    return True
        return False

    await wait_for(new_clock, timeout=60, interval=0.3, what="the edited clock.service to run")

    readme.run("printf")

    async def reported() -> str:
        return next(
            (line for line in readme.run("fleetpyctl list-watch-errors").out.splitlines() if "broken" in line), ""
        )

    assert "this is not a unit file" in await wait_for(reported, timeout=30, what="broken.service to be reported")
    assert "broken.service" not in readme.run("fleetpyctl list-unit-files").out

    readme.run("rm /tmp/fleetpy-dev/units.d/broken.service")
    await stopped_everywhere(demo, "clock.service")

    async def clock_destroyed() -> bool:
        return "clock.service" not in readme.run("fleetpyctl list-unit-files").out

    await wait_for(clock_destroyed, timeout=30, what="clock.service to be destroyed, not only stopped")
    assert await hosts_running(demo, "greeter-en.service") == [english]
    assert await hosts_running(demo, "greeter-fr.service") == [french]
    readme.run("rm /tmp/fleetpy-dev/units.d/greeter.service.j2")
    await stopped_everywhere(demo, "greeter-en.service")
    await stopped_everywhere(demo, "greeter-fr.service")
    assert "greeter" not in readme.run("fleetpyctl list-unit-files").out


async def test_07_cloud_config_new_host(demo: Cluster, tmp_path) -> None:
    readme = Readme("07-cloud-config-new-host", demo, str(tmp_path))
    readme.run("ETCD=", "fleetpyctl cloud-config")
    host = readme.start("fleetpyd dev-host")
    try:

        async def joined() -> list[str]:
            for row in rows(readme.run("fleetpyctl list-machines").out):
                if row[1:] == ["127.77.0.100", "role=extra"]:
                    return row
            return []

        row = await wait_for(joined, timeout=90, interval=0.5, what="the new machine to join with role=extra")
        bus = f"unix:path={demo.state_dir}/hosts/x1/run/user/0/bus"

        async def extra_runs() -> bool:
            return await unit_status(bus, "extra.service") == ("loaded", "active", "running")

        await wait_for(extra_runs, timeout=60, interval=0.3, what="extra.service to run on the new machine")

        async def listed() -> bool:  # its agent publishes what systemd reports a moment later
            entry = next(r for r in rows(readme.run("fleetpyctl list-unit-files").out) if r[0] == "extra.service")
            return entry[2:] == ["launched", "launched", f"{row[0]}/127.77.0.100"]

        await wait_for(listed, timeout=30, interval=0.3, what="list-unit-files to show extra.service launched there")
        assert await hosts_running(demo, "extra.service") == [], "it ran on a machine without role=extra"
    finally:
        host.send_signal(signal.SIGINT)
        output, _ = host.communicate(timeout=60)
    assert host.returncode == 0, output

    async def without_machine() -> bool:  # once the removed host's lease is gone
        listing = rows(demo.ctl("list-unit-files", "--no-legend", "--fields", "unit,target", check=True).out)
        return ["extra.service", "-"] in listing

    await wait_for(without_machine, timeout=30, what="extra.service to have no machine once the host is gone")
    assert await hosts_running(demo, "extra.service") == []
    demo.ctl("destroy", "extra.service", check=True)
