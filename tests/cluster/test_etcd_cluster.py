"""fleetpy on a 3-member etcd cluster (all on loopback): every fleetpyd is given the three members and
fleetpyctl several API endpoints (two hosts' fleetpyd and the dev cluster's API).

* One member down (killed with SIGKILL: the leader, and the member every etcd client talks to first): a stream
  of fleetpyctl commands and API calls never fails, units are started, stopped and destroyed meanwhile, and
  what ran keeps running.
* Two members down (no quorum): commands fail within a bound, with an error that says "etcd has no quorum";
  the units that run keep running. When the members return, the cluster answers again by itself, no unit is
  lost or changed, and new work runs.

Every claim about units running is checked on the hosts' own systemd.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from fleetpy.client import ApiError, Client
from fleetpy.devcluster import EtcdCluster
from fleetpy.systemd.dbus import DbusSystemd
from tests.support import (
    Cluster,
    CtlResult,
    etcd_cluster,
    running_units,
    systemds,
    wait_for,
    where_running,
    write_unit,
)

SLEEPER = '[Unit]\nDescription={desc}\n\n[Service]\nExecStart=/bin/sh -c "while true; do sleep 1; done"\n'
STREAM = 15.0  # seconds of commands with one member down
OUTAGE = 10.0  # seconds without quorum, at least
NO_QUORUM = "etcd has no quorum"
REFUSAL_BOUND = 15.0  # a command must fail within this long without quorum: etcd client budget 6 s + start-up


@dataclass
class Setup:
    cluster: Cluster
    etcd: EtcdCluster
    endpoints: str  # fleetpyctl's: two hosts' fleetpyd, then the dev cluster's API


@pytest.fixture(scope="module")
def setup(workdir: str) -> Iterator[Setup]:
    name = uuid.uuid4().hex[:8]
    with etcd_cluster(os.path.join(workdir, f"e3-{name}")) as etcd:
        cluster = Cluster(os.path.join(workdir, f"q-{name}"), etcd, machines=3, agent_ttl=10)
        try:
            apis = [m["api"] for m in cluster.description["machines"][:2]]
            yield Setup(cluster, etcd, ",".join([*apis, cluster.endpoint]))
        finally:
            cluster.stop()


@pytest.fixture
def all_members(setup: Setup) -> Iterator[Setup]:
    """Every etcd member runs before and after the test, also when it fails half-way."""
    setup.etcd.start()
    try:
        yield setup
    finally:
        setup.etcd.start()


def ctl(setup: Setup, *args: str, timeout: float = 120) -> tuple[CtlResult, float]:
    """fleetpyctl with several endpoints, and how long it took."""
    started = time.monotonic()
    result = setup.cluster.ctl("--endpoint", setup.endpoints, *args, timeout=timeout)
    return result, time.monotonic() - started


async def actl(setup: Setup, *args: str, timeout: float = 120) -> tuple[CtlResult, float]:
    return await asyncio.to_thread(ctl, setup, *args, timeout=timeout)


async def main_pids(buses: dict[str, DbusSystemd], names: list[str]) -> dict[str, int]:
    """unit → its main PID on the host that runs it."""
    pids: dict[str, int] = {}
    for systemd in buses.values():
        for unit in await running_units(systemd, names):
            pids[unit] = await systemd.main_pid(unit)
    return pids


async def running_once(buses: dict[str, DbusSystemd], names: list[str]) -> bool:
    seen = await where_running(buses, names)
    return sorted(seen) == sorted(names) and all(len(hosts) == 1 for hosts in seen.values())


def unit_files(setup: Setup) -> dict[str, tuple[str, str]]:
    """unit → (hash, desired state), as the cluster reports them; raises when the command fails."""
    result, _ = ctl(setup, "list-unit-files", "--full", "--no-legend", "--fields", "unit,hash,dstate")
    if result.code != 0:
        raise AssertionError(f"list-unit-files exited {result.code}: {result.err}")
    rows = [line.split("\t") for line in result.out.splitlines()]
    return {row[0].strip(): (row[1].strip(), row[2].strip()) for row in rows}


@dataclass
class Stream:
    """A stream of fleetpyctl commands and API calls; every failure is kept with its output."""

    setup: Setup
    directory: str
    run: int = 0
    failures: list[str] = field(default_factory=list)
    slowest: float = 0.0
    started: list[str] = field(default_factory=list)

    async def command(self, *args: str, expect: str = "") -> CtlResult:
        result, took = await actl(self.setup, *args)
        self.run += 1
        self.slowest = max(self.slowest, took)
        if result.code != 0 or expect not in result.out + result.err:
            self.failures.append(f"fleetpyctl {' '.join(args)} exited {result.code} ({took:.1f}s): {result.err}")
        return result

    async def api(self, client: Client) -> None:
        started = time.monotonic()
        self.run += 1
        try:
            machines = await client.machines()
            units = await client.units()
        except Exception as exc:  # any failure counts, whatever its type
            self.failures.append(f"API call failed: {exc!r}")
            return
        finally:
            self.slowest = max(self.slowest, time.monotonic() - started)
        if len(machines) != len(self.setup.cluster.machines) or not units:
            self.failures.append(f"API: {len(machines)} machines, {len(units)} units")

    async def round(self, index: int, client: Client) -> None:
        """One of each: list-machines, list-units, start (blocking), cat, stop, destroy, an API call."""
        name = f"q1-new-{index}.service"
        path = write_unit(self.directory, name, SLEEPER.format(desc=name))
        await self.command("list-machines", "--no-legend")
        await self.command("list-units", "--no-legend")
        await self.command("start", "--block-attempts", "15", path, expect=f"Unit {name} launched")
        self.started.append(name)
        await self.command("cat", name, expect="ExecStart=")
        await self.api(client)
        await self.command("stop", "--block-attempts", "15", name, expect=f"Unit {name} loaded")
        await self.command("destroy", name, expect=f"Destroyed {name}")


async def test_one_etcd_member_down_fails_no_command_and_stops_no_unit(all_members: Setup, tmp_path, figure) -> None:
    setup = all_members
    names = [f"q1-base-{i}.service" for i in range(6)]
    paths = [write_unit(str(tmp_path), n, SLEEPER.format(desc=n)) for n in names]
    started, _ = ctl(setup, "start", "--block-attempts", "30", *paths)
    assert started.code == 0, started.err
    client = Client(setup.endpoints, timeout=30)
    stream = Stream(setup, str(tmp_path))
    try:
        async with systemds(setup.cluster) as buses:
            await wait_for(lambda: running_once(buses, names), timeout=60, what="the units to run once each")
            pids = await main_pids(buses, names)

            # The worst single loss: the member every client talks to (the first of its endpoints), as leader.
            victim = setup.etcd.members[0]
            setup.etcd.make_leader(victim)
            victim.kill()
            killed_at = time.monotonic()
            index = 0
            restarted: dict[str, int] = {}
            while time.monotonic() - killed_at < STREAM:
                await stream.round(index, client)
                index += 1
                now = await main_pids(buses, names)
                restarted.update({n: now.get(n, 0) for n in names if now.get(n) != pids[n]})
            figure("etcd member killed", f"{victim.name} (the leader, first of every client's endpoints)")
            figure("commands and API calls with one member down", stream.run)
            figure("units started, stopped and destroyed meanwhile", len(stream.started))
            figure("slowest command (s)", stream.slowest)
            figure("failed commands", len(stream.failures))
            assert stream.failures == [], "\n".join(stream.failures) + "\n" + setup.cluster.host_logs()
            figure("units stopped or restarted", len(restarted))
            assert restarted == {}, f"units lost their process: {restarted}"

            rejoin = time.monotonic()
            setup.etcd.start([victim])
            figure("killed member healthy again after restart (s)", time.monotonic() - rejoin)
            files = unit_files(setup)
            lost = [n for n in names if files.get(n, ("", ""))[1] != "launched"]
            figure("units lost", len(lost))
            assert lost == []
            assert not any(n in files for n in stream.started), "destroyed units are gone"
            assert await running_once(buses, names)
    finally:
        await client.close()
    ctl(setup, "destroy", *names)


async def test_without_quorum_commands_say_so_and_the_cluster_recovers_with_nothing_lost(
    all_members: Setup, tmp_path, figure
) -> None:
    setup = all_members
    launched = [f"q2-run-{i}.service" for i in range(4)]
    loaded = [f"q2-load-{i}.service" for i in range(2)]
    submitted = [f"q2-sub-{i}.service" for i in range(2)]
    for name in launched + loaded + submitted:
        write_unit(str(tmp_path), name, SLEEPER.format(desc=name))
    path = str(tmp_path)
    for command, group in (("start", launched), ("load", loaded), ("submit", submitted)):
        blocking = ("--block-attempts", "30") if command != "submit" else ()
        result, _ = ctl(setup, command, *blocking, *(os.path.join(path, n) for n in group))
        assert result.code == 0, f"{command}: {result.err}"
    before = unit_files(setup)
    assert {n: before[n][1] for n in launched + loaded + submitted} == {
        **dict.fromkeys(launched, "launched"),
        **dict.fromkeys(loaded, "loaded"),
        **dict.fromkeys(submitted, "inactive"),
    }

    async with systemds(setup.cluster) as buses:
        await wait_for(lambda: running_once(buses, launched), timeout=60, what="the units to run once each")
        pids = await main_pids(buses, launched)

        leader = setup.etcd.leader()
        down = [leader, next(m for m in setup.etcd.members if m is not leader)]
        for member in down:
            member.kill()
        lost_quorum_at = time.monotonic()
        new = write_unit(path, "q2-new.service", SLEEPER.format(desc="during the outage"))
        attempts = [
            ("list-machines",),
            ("list-units",),
            ("list-unit-files",),
            ("cat", launched[0]),
            ("start", "--block-attempts", "5", new),
            ("stop", launched[0]),
            ("destroy", submitted[0]),
        ]
        client = Client(setup.endpoints, timeout=30)
        try:
            *refusals, api_refusal = await asyncio.gather(
                *(refuse(setup, args) for args in attempts), refused_by_api(client)
            )
        finally:
            await client.close()
        restarted: dict[str, int] = {}
        while True:  # the units keep running through the outage
            now = await main_pids(buses, launched)
            restarted.update({n: now.get(n, 0) for n in launched if now.get(n) != pids[n]})
            if time.monotonic() - lost_quorum_at >= OUTAGE:
                break
            await asyncio.sleep(0.5)
        slowest = max(took for _, _, took in refusals)
        unclear = [
            f"fleetpyctl {' '.join(args)} exited {result.code} ({took:.1f}s): {result.out}{result.err}"
            for args, result, took in refusals
            if result.code == 0 or NO_QUORUM not in result.err
        ]
        figure("etcd members killed", f"{len(down)} of 3 ({', '.join(m.name for m in down)}; the leader first)")
        figure("commands refused with 'etcd has no quorum'", f"{len(refusals) - len(unclear)} of {len(refusals)}")
        figure("slowest refusal (s)", slowest)
        figure("message", next(line for _, r, _ in refusals for line in r.err.splitlines() if NO_QUORUM in line))
        assert unclear == [], "\n".join(unclear)
        assert slowest <= REFUSAL_BOUND
        assert isinstance(api_refusal, ApiError), f"the API answered without quorum: {api_refusal!r}"
        assert api_refusal.status == 503
        assert NO_QUORUM in api_refusal.message
        figure("units stopped or restarted without quorum", len(restarted))
        assert restarted == {}, f"units lost their process while etcd had no quorum: {restarted}"

        returned_at = time.monotonic()
        setup.etcd.start(down)
        healthy_at = time.monotonic()

        async def answers() -> dict[str, tuple[str, str]]:
            return await asyncio.to_thread(unit_files, setup)

        after = await wait_for(answers, timeout=60, interval=0.2, what="the cluster to answer again")
        figure("etcd healthy again after the members returned (s)", healthy_at - returned_at)
        figure("fleetpy answering again after the members returned (s)", time.monotonic() - returned_at)
        lost = sorted(n for n in before if after.get(n) != before[n])
        figure("units lost", len(lost))
        assert lost == [], f"units lost or changed: { {n: (before[n], after.get(n)) for n in lost} }"
        assert "q2-new.service" not in after, "a refused start wrote nothing"

        machines, _ = ctl(setup, "list-machines", "--no-legend")
        assert machines.code == 0, machines.err
        assert len(machines.out.splitlines()) == len(setup.cluster.machines), "no machine left the cluster"
        started, took = ctl(setup, "start", "--block-attempts", "15", new)
        assert started.code == 0, started.err + setup.cluster.host_logs()
        figure("new unit launched after recovery (s)", took)
        assert await running_once(buses, [*launched, "q2-new.service"])
        assert await main_pids(buses, launched) == pids, "the units that ran were not restarted"
    ctl(setup, "destroy", *launched, *loaded, *submitted, "q2-new.service")


async def refuse(setup: Setup, args: tuple[str, ...]) -> tuple[tuple[str, ...], CtlResult, float]:
    """A command that should fail: its result and how long it took to fail."""
    result, took = await actl(setup, *args, timeout=REFUSAL_BOUND * 4)
    return args, result, took


async def refused_by_api(client: Client) -> ApiError | object:
    """The API's error for a listing, or what it answered when it did not refuse."""
    try:
        return await client.units()
    except ApiError as exc:
        return exc
