"""``make bench``: fleetpy at scale on this machine, with a real etcd; prints a table and writes bench.json.

Figures (docs/performance.md explains each and how to read it):
  a  10,000 units submitted in one API batch to 1,000 hollow machines: seconds until all are launched
  b  engine plan time for 10,000 units on 1,000 machines (pure, in process)
  c  etcd writes per placed unit (revision delta / units) during (a)
  d  schedule watch events an agent receives per 1,000 placements on other machines
  e  10% of the hollow machines killed: seconds until all their units are launched elsewhere
  f  one real sandbox host (real systemd) running 500 units: its fleetpyd's CPU per minute at rest, and RSS
  g  fleetpyctl list-units and list-unit-files with 10,000 units
  h  200 units started with one fleetpyctl start across 10 real sandbox hosts: seconds until all active

Hollow machines are a simulation of systemd (fleetpy.systemd.hollow) driven by fleetpy's real agent code with
real etcd traffic; (f) and (h) use real systemd in sandbox hosts. Needs root for (f) and (h).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fleetpy.devcluster import EtcdServer, _die_with_parent, etcd_binary
from fleetpy.model import DesiredState, Machine, MachineID, UnitRecord
from fleetpy.plan import ClusterSnapshot, engine_plan
from fleetpy.registry.etcd import EtcdClient
from fleetpy.unit import UnitFile

PY = sys.executable
PREFIX = "/bench"
AGENT_TTL = 10


@dataclass
class Figure:
    id: str
    name: str
    value: float
    unit: str
    target: float | None
    target_text: str
    met: bool | None
    note: str = ""


@dataclass
class Bench:
    workdir: str
    figures: list[Figure] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def add(self, fig: Figure) -> None:
        self.figures.append(fig)
        met = "-" if fig.met is None else ("yes" if fig.met else "NO")
        print(
            f"  [{fig.id}] {fig.name}: {fig.value:g} {fig.unit} (target {fig.target_text}; met: {met})"
            + (f" — {fig.note}" if fig.note else ""),
            flush=True,
        )

    def spawn(self, command: list[str], log: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        out = open(os.path.join(self.workdir, log), "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            command, stdout=kwargs.pop("stdout", out), stderr=out, cwd=ROOT, preexec_fn=_die_with_parent, **kwargs
        )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def unit_json(name: str, body: str, desired: str = "launched") -> dict[str, Any]:
    unit = UnitFile.from_text(body)
    return {
        "name": name,
        "desiredState": desired,
        "options": [{"section": o.section, "name": o.name, "value": o.value} for o in unit.options],
    }


def sleeper(i: int, extra: str = "") -> str:
    return f"[Unit]\nDescription=bench unit {i}\n\n[Service]\nExecStart=/bin/sleep {100000 + i}\n{extra}"


async def wait_until(probe: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.2) -> float:
    """Seconds until ``probe`` is true; raises TimeoutError."""
    started = time.monotonic()
    while True:
        if await probe():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError
        await asyncio.sleep(interval)


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as handle:
            info["memory_gib"] = round(int(handle.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        out = subprocess.run([etcd_binary(), "--version"], capture_output=True, text=True, check=False).stdout
        info["etcd"] = out.splitlines()[0].split(":", 1)[1].strip() if out else "?"
    except Exception:  # the version is informative only
        info["etcd"] = "?"
    return info


# ---------------------------------------------------------------------------------------------- (b)


def figure_b(bench: Bench) -> None:
    machines = {
        MachineID(f"m{i:04d}"): Machine(
            MachineID(f"m{i:04d}"), "", {"region": ("eu", "us", "ap")[i % 3], "disk": ("ssd", "hdd")[i % 2]}
        )
        for i in range(1000)
    }
    units = {}
    for i in range(10000):
        if i % 10 < 7:
            extra = ""
        elif i % 10 < 9:
            extra = f"\n[X-Fleet]\nConflicts=web{i % 50}@*.service\n"
        else:
            extra = "\n[X-Fleet]\nMachineMetadata=region=eu\nMachineMetadata=disk=ssd\n"
        name = f"web{i % 50}@{i}.service" if 7 <= i % 10 < 9 else f"u{i:05d}.service"
        unit = UnitFile.from_text(sleeper(i, extra))
        units[name] = UnitRecord(name, unit.hash, DesiredState.LAUNCHED, False, unit.xfleet)
    snapshot = ClusterSnapshot(units=units, machines=machines, schedule={})
    engine_plan(snapshot)  # warm the caches of parsed requirements, as a running engine has them
    started = time.perf_counter()
    plan = engine_plan(snapshot)
    placing = time.perf_counter() - started
    placed = sum(1 for _ in plan.actions)
    bench.add(
        Figure(
            "b",
            "engine plan: place 10,000 units on 1,000 machines",
            round(placing, 3),
            "s",
            1.0,
            "≤ 1 s",
            placing <= 1.0,
            f"{placed} placements; 70% plain, 20% Conflicts, 10% MachineMetadata",
        )
    )


# ---------------------------------------------------------------------------------------------- hollow cluster


class HollowCluster:
    def __init__(self, bench: Bench, machines: int, engines_process: bool = True) -> None:
        self.bench = bench
        self.machines = machines
        self.etcd = EtcdServer(os.path.join(bench.workdir, "etcd"))
        self.socket = os.path.join(bench.workdir, "api.sock")
        self.stats_file = os.path.join(bench.workdir, "hollow-stats.json")
        self.kill_file = os.path.join(bench.workdir, "hollow-kill.txt")
        self.client: EtcdClient | None = None
        self.hollow: subprocess.Popen[bytes] | None = None
        self.control: subprocess.Popen[bytes] | None = None
        self.machine_ids: list[str] = []

    async def start(self) -> None:
        self.etcd.start()
        self.client = EtcdClient([self.etcd.endpoint], timeout=30)
        # A control-plane fleetpyd: engine candidate and API, no agent (a legitimate production layout).
        self.control = self.bench.spawn(
            [PY, "-m", "fleetpy.cli.fleetpyd", "--disable-agent", "--machine-id", "control", "--api-socket",
             self.socket, "--etcd-servers", self.etcd.endpoint, "--etcd-key-prefix", PREFIX],
            "control.log",
        )  # fmt: skip
        self.hollow = self.bench.spawn(
            [PY, "-m", "fleetpy.hollow", "--etcd", self.etcd.endpoint, "--prefix", PREFIX, "--count",
             str(self.machines), "--ttl", str(AGENT_TTL), "--stats-file", self.stats_file, "--kill-file",
             self.kill_file],
            "hollow.log",
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert self.hollow.stdout is not None
        line = await asyncio.to_thread(self.hollow.stdout.readline)
        self.machine_ids = json.loads(line)["machines"]
        await wait_until(self._api_up, 30, 0.05)

    async def _api_up(self) -> bool:
        return os.path.exists(self.socket)

    async def post_units(self, units: list[dict[str, Any]]) -> dict[str, int]:
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket), timeout=aiohttp.ClientTimeout(total=600)
            ) as session,
            session.post("http://fleetpy/fleetpy/v1/units", json={"units": units}) as response,
        ):
            body = await response.json()
            if response.status != 200:
                raise RuntimeError(f"batch refused: {response.status} {body}")
            return dict(body)

    async def states(self) -> dict[tuple[str, str], bytes]:
        assert self.client is not None
        _, kvs = await self.client.get_prefix(f"{PREFIX}/states/")
        result = {}
        for kv in kvs:
            machine, _, unit = kv.key[len(PREFIX) + 8 :].partition("/")
            result[(machine, unit)] = kv.value
        return result

    async def launched(self) -> dict[str, str]:
        """unit → machine, for units reported active and launched."""
        return {
            unit: machine
            for (machine, unit), value in (await self.states()).items()
            if b'"achieved":"launched"' in value and b'"active":"active"' in value
        }

    async def hollow_stats(self) -> dict[str, dict[str, int]]:
        assert self.hollow is not None
        if os.path.exists(self.stats_file):
            os.unlink(self.stats_file)
        self.hollow.send_signal(signal.SIGUSR2)
        await wait_until(lambda: _exists(self.stats_file), 30, 0.05)
        with open(self.stats_file) as handle:
            return dict(json.load(handle))

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        self.etcd.kill()


async def _exists(path: str) -> bool:
    return os.path.exists(path)


def start_profilers(
    bench: Bench, processes: dict[str, subprocess.Popen[bytes] | None], directory: str
) -> list[subprocess.Popen[bytes]]:
    """py-spy (if installed) on each process while (a) runs; flame graphs and raw stacks go to ``directory``."""
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(PY), "py-spy")
    if not directory or not os.path.exists(spy):
        return []
    os.makedirs(directory, exist_ok=True)
    started = []
    for name, process in processes.items():
        if process is None:
            continue
        for fmt, suffix in (("raw", "txt"), ("flamegraph", "svg")):
            output = os.path.join(directory, f"a-{name}.{suffix}")
            command = [spy, "record", "-o", output, "-f", fmt, "-r", "50", "-p", str(process.pid)]
            started.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return started


def stop_profilers(profilers: list[subprocess.Popen[bytes]]) -> None:
    for profiler in profilers:
        profiler.send_signal(signal.SIGINT)
    for profiler in profilers:
        try:
            profiler.wait(30)
        except subprocess.TimeoutExpired:
            profiler.kill()


async def figures_acdeg(bench: Bench, machines: int, units: int, profile: str = "", verbose: bool = False) -> None:
    cluster = HollowCluster(bench, machines)
    try:
        await cluster.start()
        assert cluster.client is not None
        # (a) and (c)
        batch = [unit_json(f"u{i:05d}.service", sleeper(i)) for i in range(units)]
        profilers = start_profilers(bench, {"control": cluster.control, "hollow": cluster.hollow}, profile)
        revision_before = await cluster.client.status()
        started = time.monotonic()
        await cluster.post_units(batch)
        submitted = time.monotonic() - started

        async def all_launched() -> bool:
            count = len(await cluster.launched())
            if verbose:
                _, placed = await cluster.client.get_prefix(f"{PREFIX}/schedule/", keys_only=True)
                print(
                    f"      t={time.monotonic() - started:5.1f}s placed={len(placed):5d} launched={count:5d}",
                    flush=True,
                )
            return count >= units

        elapsed = submitted + await wait_until(all_launched, 600, 0.5)
        revision_after = await cluster.client.status()
        stop_profilers(profilers)
        bench.add(
            Figure(
                "a",
                f"{units:,} units on {machines:,} hollow machines, submit to all launched",
                round(elapsed, 2),
                "s",
                10.0,
                "≤ 10 s (≥ 1,000 units/s)",
                elapsed <= 10.0,
                f"{units / elapsed:.0f} units/s; the batch request itself took {submitted:.2f} s",
            )
        )
        per_unit = (revision_after - revision_before) / units
        bench.add(
            Figure(
                "c",
                "etcd writes per placed unit (revision delta ÷ units)",
                round(per_unit, 3),
                "writes/unit",
                3.0,
                "≤ 3",
                per_unit <= 3.0,
            )
        )

        # (d): 1,000 placements pinned to 10 machines; every other agent must hear nothing.
        targets = cluster.machine_ids[:10]
        before = await cluster.hollow_stats()
        pinned = [
            unit_json(f"pin{i:04d}.service", sleeper(50000 + i, f"\n[X-Fleet]\nMachineID={targets[i % 10]}\n"))
            for i in range(1000)
        ]
        await cluster.post_units(pinned)

        async def pinned_launched() -> bool:
            launched = await cluster.launched()
            return sum(1 for u in launched if u.startswith("pin")) >= 1000

        await wait_until(pinned_launched, 300, 0.5)
        after = await cluster.hollow_stats()
        others = [m for m in cluster.machine_ids if m not in targets]
        events = sum(after[m]["watch_events"] - before[m]["watch_events"] for m in others) / len(others)
        heard = sum(after[m]["watch_events"] - before[m]["watch_events"] for m in targets) / len(targets)
        bench.add(
            Figure(
                "d",
                "schedule watch events per agent per 1,000 placements elsewhere",
                round(events, 3),
                "events",
                0.0,
                "0",
                events == 0.0,
                f"each of the 10 target agents received {heard:.0f}",
            )
        )

        # (g): the listings with (at least) 10,000 units.
        for command in ("list-units", "list-unit-files"):
            started = time.monotonic()
            result = subprocess.run(
                [PY, "-m", "fleetpy.cli.fleetpyctl", "--endpoint", f"unix://{cluster.socket}", command, "--no-legend"],
                capture_output=True, text=True, cwd=ROOT, check=False,
            )  # fmt: skip
            took = time.monotonic() - started
            rows = len(result.stdout.splitlines())
            bench.add(
                Figure(
                    "g",
                    f"fleetpyctl {command} with {rows:,} rows",
                    round(took, 2),
                    "s",
                    1.5,
                    "≤ 1.5 s",
                    took <= 1.5 and result.returncode == 0,
                    "" if result.returncode == 0 else f"exit {result.returncode}: {result.stderr[-200:]}",
                )
            )

        # (e): kill 10% of the hollow machines; their units must run elsewhere.
        launched = await cluster.launched()
        victims = set(cluster.machine_ids[-(machines // 10) :])
        orphans = {unit for unit, machine in launched.items() if machine in victims}
        with open(cluster.kill_file, "w") as handle:
            handle.write("\n".join(sorted(victims)) + "\n")
        assert cluster.hollow is not None
        killed_at = time.monotonic()
        cluster.hollow.send_signal(signal.SIGUSR1)

        async def moved() -> bool:
            now = await cluster.launched()
            return all(now.get(unit) not in (None, *victims) for unit in orphans)

        recovery = (time.monotonic() - killed_at) + await wait_until(moved, 120, 0.2)
        bench.add(
            Figure(
                "e",
                f"kill {len(victims)} of {machines} hollow machines: their {len(orphans)} units launched elsewhere",
                round(recovery, 2),
                "s",
                AGENT_TTL + 2.0,
                f"≤ agent TTL + 2 s = {AGENT_TTL + 2} s",
                recovery <= AGENT_TTL + 2.0,
            )
        )
    finally:
        bench.stop_all()
        await cluster.close()


# ---------------------------------------------------------------------------------------------- real hosts


def _dev(bench: Bench, machines: int, name: str) -> tuple[subprocess.Popen[bytes], dict[str, Any], str]:
    state = os.path.join(bench.workdir, name)
    socket_path = os.path.join(bench.workdir, f"{name}.sock")
    process = bench.spawn(
        [
            PY,
            "-m",
            "fleetpy.cli.fleetpyd",
            "dev",
            "--machines",
            str(machines),
            "--state-dir",
            state,
            "--api-socket",
            socket_path,
        ],
        f"{name}.log",
    )
    path = os.path.join(state, "cluster.json")
    deadline = time.monotonic() + 120
    while not os.path.exists(path):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"fleetpyd dev ({name}) did not start; see {bench.workdir}/{name}.log")
        time.sleep(0.1)
    with open(path) as handle:
        return process, json.load(handle), socket_path


async def _active_counts(buses: list[str], prefix: str) -> int:
    from fleetpy.systemd.dbus import DbusSystemd

    total = 0
    for bus in buses:
        systemd = DbusSystemd(bus)
        await systemd.connect()
        try:
            (units,) = await systemd._manager("ListUnitsByPatterns", "asas", ["active"], [f"{prefix}*"])
            total += len(units)
        finally:
            await systemd.close()
    return total


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def figure_f(bench: Bench, rest: float) -> None:
    process, cluster, socket_path = _dev(bench, 1, "one-host")
    try:
        machine = cluster["machines"][0]
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket_path)) as session:
            units = [unit_json(f"rest{i:03d}.service", sleeper(i)) for i in range(500)]
            async with session.post("http://fleetpy/fleetpy/v1/units", json={"units": units}) as response:
                assert response.status == 200, await response.text()

        async def all_active() -> bool:
            return await _active_counts([machine["bus"]], "rest") >= 500

        await wait_until(all_active, 300, 1.0)
        await asyncio.sleep(5)  # let the agent finish publishing states before measuring "at rest"
        pid = int(machine["pid"])
        before = _cpu_seconds(pid)
        await asyncio.sleep(rest)
        cpu = (_cpu_seconds(pid) - before) * 60.0 / rest
        rss = _rss_mib(pid)
        share = cpu / 60.0 * 100
        bench.add(
            Figure(
                "f",
                "fleetpyd on a real host with 500 units: CPU at rest",
                round(cpu, 3),
                "s CPU/min",
                0.6,
                "< 1% of a core (0.6 s/min)",
                share < 1.0,
                f"{share:.2f}% of a core over {rest:.0f} s",
            )
        )
        bench.add(
            Figure(
                "f",
                "fleetpyd on a real host with 500 units: RSS",
                round(rss, 1),
                "MiB",
                80.0,
                "< 80 MB",
                rss < 80.0 * 1000 * 1000 / (1024 * 1024),
            )
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(120)


async def figure_h(bench: Bench) -> None:
    process, cluster, socket_path = _dev(bench, 10, "ten-hosts")
    try:
        files = os.path.join(bench.workdir, "h-units")
        os.makedirs(files, exist_ok=True)
        paths = []
        for i in range(200):
            path = os.path.join(files, f"start{i:03d}.service")
            with open(path, "w") as handle:
                handle.write(sleeper(i))
            paths.append(path)
        buses = [m["bus"] for m in cluster["machines"]]
        started = time.monotonic()
        ctl = subprocess.Popen(  # blocking, as a user runs it: it returns once every unit is active
            [PY, "-m", "fleetpy.cli.fleetpyctl", "--endpoint", f"unix://{socket_path}", "start", *paths],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

        async def all_active() -> bool:
            return await _active_counts(buses, "start") >= 200

        took = await wait_until(all_active, 300, 0.25)
        await asyncio.to_thread(ctl.wait, 120)
        command = time.monotonic() - started
        bench.add(
            Figure(
                "h",
                "200 units, one fleetpyctl start, 10 real hosts: until all active in systemd",
                round(took, 2),
                "s",
                None,
                "(measured)",
                None,
                f"{200 / took:.0f} units/s; fleetpyctl start returned after {command:.2f} s with exit {ctl.returncode}",
            )
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(120)


# ---------------------------------------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> Bench:
    workdir = tempfile.mkdtemp(prefix="fleetpy-bench-", dir="/tmp")
    bench = Bench(workdir)
    try:
        print(f"fleetpy bench (work directory {workdir})", flush=True)
        figure_b(bench)
        await figures_acdeg(bench, args.machines, args.units, args.profile, args.verbose)
        if os.geteuid() == 0 and not args.hollow_only:
            await figure_f(bench, args.rest)
            await figure_h(bench)
        else:
            print("  (f) and (h) need root and sandbox hosts: skipped", flush=True)
    finally:
        bench.stop_all()
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return bench


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--units", type=int, default=10000)
    parser.add_argument("--rest", type=float, default=60.0, help="seconds of rest measured for (f)")
    parser.add_argument("--hollow-only", action="store_true", help="skip (f) and (h), which need real hosts")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("-v", "--verbose", action="store_true", help="print progress while (a) runs")
    parser.add_argument(
        "--profile",
        default="",
        metavar="DIR",
        help="profile the control plane and the hollow machines with py-spy during (a)",
    )
    parser.add_argument("--output", default=os.path.join(ROOT, "bench.json"))
    args = parser.parse_args()
    started = time.monotonic()
    bench = asyncio.run(run(args))
    report = {
        "machine": machine_info(),
        "figures": [
            {k: v for k, v in asdict(f).items() if k != "target_text"} | {"target_text": f.target_text}
            for f in bench.figures
        ],
    }
    report["machine"]["bench_seconds"] = round(time.monotonic() - started, 1)
    with open(args.output, "w") as handle:
        json.dump(report, handle, indent=2)
    print()
    print(f"{'id':<3} {'figure':<78} {'value':>12}  {'target':<28} met")
    for f in bench.figures:
        met = "-" if f.met is None else ("yes" if f.met else "NO")
        print(f"{f.id:<3} {f.name[:78]:<78} {f.value:>10g} {f.unit[:6]:<6} {f.target_text[:28]:<28} {met}")
    print(f"\nwritten to {args.output} ({report['machine']['bench_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
