"""Hollow machines: many simulated machines in one process, for scale work (``fleetpyd dev --hollow N``).

Each hollow machine runs fleetpy's real agent (presence on its own lease, a watch on its own schedule prefix,
the real agent plan, bodies fetched from etcd, unit files written to its own directory, states published in
batches) against ``systemd.hollow.HollowSystemd``, an in-memory SIMULATION of systemd with a configurable start
delay. The etcd traffic is real. This is for measuring the engine, etcd and the agents' etcd traffic at 1,000
machines on one computer; it proves nothing about systemd, which the correctness tests drive for real.

Run as ``python -m fleetpy.hollow --etcd URL --prefix P --count N [--engines K] [--start-delay S]``; it
prints one JSON line ``{"ready": N, "machines": [...]}`` when every machine has registered, then serves until
SIGTERM. On SIGUSR1 it kills (stops without leaving the cluster, as a crash would) the machines whose IDs are
listed, one per line, in the file named by ``--kill-file``; ``--stats-file`` receives per-machine watch-event
counts on SIGUSR2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

from fleetpy.agent import Agent, Presence, local_machine
from fleetpy.engine import Engine
from fleetpy.keys import Keys
from fleetpy.model import MachineID
from fleetpy.registry.etcd import EtcdClient
from fleetpy.registry.store import EtcdRegistry
from fleetpy.systemd.hollow import HollowSystemd
from fleetpy.systemd.unitdir import UnitDirectory

log = logging.getLogger(__name__)


@dataclass
class HollowMachine:
    id: MachineID
    agent: Agent
    systemd: HollowSystemd
    engine: Engine | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return any(not t.done() for t in self.tasks)


class HollowFleet:
    """N hollow machines sharing one etcd connection (each with its own lease, watch and registry object)."""

    def __init__(
        self,
        *,
        client: EtcdClient | None = None,
        endpoints: Sequence[str] = (),
        per_client: int = 50,
        prefix: str,
        count: int,
        ttl: int = 10,
        start_delay: float = 0.0,
        engines: int = 0,
        workdir: str,
        id_prefix: str = "hollow",
        metadata: dict[str, str] | None = None,
    ) -> None:
        # Machines share etcd connections, a few dozen per connection: a real machine has one of its own, and
        # one connection for 1,000 watches makes aetcd's watch set-up quadratic (every creation wakes every
        # waiter).
        self.endpoints = tuple(endpoints)
        self.per_client = per_client
        self.clients: list[EtcdClient] = [client] if client is not None else []
        self.keys = Keys(prefix)
        self.count = count
        self.ttl = ttl
        self.start_delay = start_delay
        self.engines = engines
        self.workdir = workdir
        self.id_prefix = id_prefix
        self.metadata = metadata or {}
        self.machines: dict[MachineID, HollowMachine] = {}

    def _client(self, index: int) -> EtcdClient:
        if self.endpoints:
            while len(self.clients) <= index // self.per_client:
                self.clients.append(EtcdClient(self.endpoints, timeout=10))
            return self.clients[index // self.per_client]
        return self.clients[0]

    def _build(self, index: int) -> HollowMachine:
        machine_id = MachineID(f"{self.id_prefix}-{index:05d}")
        registry = EtcdRegistry(self._client(index), self.keys)
        systemd = HollowSystemd(start_delay=self.start_delay)
        presence = Presence(registry, local_machine(machine_id, "", dict(self.metadata)), ttl=self.ttl, lease_file=None)
        agent = Agent(
            registry=registry,
            systemd=systemd,
            unitdir=UnitDirectory(os.path.join(self.workdir, machine_id)),
            presence=presence,
            resync_interval=600.0,
        )
        engine = Engine(registry=registry, machine=machine_id) if index < self.engines else None
        return HollowMachine(machine_id, agent, systemd, engine)

    async def start(self, batch: int = 50) -> None:
        machines = [self._build(i) for i in range(self.count)]
        for start in range(0, len(machines), batch):
            chunk = machines[start : start + batch]
            await asyncio.gather(*(m.agent.presence.establish() for m in chunk))
        for machine in machines:
            machine.tasks = [
                asyncio.create_task(machine.agent.presence.run()),
                asyncio.create_task(machine.agent.run()),
            ]
            if machine.engine is not None:
                machine.tasks.append(asyncio.create_task(machine.engine.run()))
            self.machines[machine.id] = machine
        # Ready means every machine watches its schedule, as it would on a cluster that has been up a while.
        await asyncio.gather(*(m.agent.watching.wait() for m in machines))

    async def kill(self, machine_ids: Sequence[str]) -> None:
        """Stop machines as a crash would: no deregistration, their leases simply stop being refreshed."""
        tasks = []
        for machine_id in machine_ids:
            machine = self.machines.get(MachineID(machine_id))
            if machine is None:
                continue
            for task in machine.tasks:
                task.cancel()
            tasks.extend(machine.tasks)
        await asyncio.gather(*tasks, return_exceptions=True)

    def stats(self) -> dict[str, dict[str, int]]:
        return {
            machine.id: {
                "watch_events": machine.agent.watch_events,
                "running": len(machine.systemd.running),
                "alive": int(machine.alive),
            }
            for machine in self.machines.values()
        }

    async def stop(self) -> None:
        await self.kill(list(self.machines))
        if self.endpoints:
            for client in self.clients:
                await client.close()


async def _serve(args: argparse.Namespace) -> None:
    # Unit files go to memory, as /run/fleetpy/units does on a real host (a disk makes file creation the cost).
    scratch = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: ASYNC240 - start-up
    workdir = args.workdir or tempfile.mkdtemp(prefix="fleetpy-hollow-", dir=scratch)
    metadata = dict(item.split("=", 1) for item in args.metadata.split(",") if "=" in item) if args.metadata else {}
    fleet = HollowFleet(
        endpoints=args.etcd.split(","),
        prefix=args.prefix,
        count=args.count,
        ttl=args.ttl,
        start_delay=args.start_delay,
        engines=args.engines,
        workdir=workdir,
        id_prefix=args.id_prefix,
        metadata=metadata,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    background: set[asyncio.Task[None]] = set()

    def kill_listed() -> None:
        if not args.kill_file:
            return
        with open(args.kill_file) as handle:
            victims = [line.strip() for line in handle if line.strip()]
        task = loop.create_task(fleet.kill(victims))
        background.add(task)
        task.add_done_callback(background.discard)

    def write_stats() -> None:
        if args.stats_file:
            temporary = args.stats_file + ".tmp"
            with open(temporary, "w") as handle:
                json.dump(fleet.stats(), handle)
            os.replace(temporary, args.stats_file)

    loop.add_signal_handler(signal.SIGUSR1, kill_listed)
    loop.add_signal_handler(signal.SIGUSR2, write_stats)
    try:
        await fleet.start()
        print(json.dumps({"ready": len(fleet.machines), "machines": sorted(fleet.machines)}), flush=True)
        await stop.wait()
    finally:
        await fleet.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetpy.hollow", description=__doc__.split("\n\n")[0])
    parser.add_argument("--etcd", required=True, help="etcd endpoints, comma-separated")
    parser.add_argument("--prefix", default="/fleetpy")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--ttl", type=int, default=10, help="agent TTL in seconds")
    parser.add_argument("--start-delay", type=float, default=0.0, help="seconds a simulated start job takes")
    parser.add_argument("--engines", type=int, default=0, help="engine candidates among the hollow machines")
    parser.add_argument("--id-prefix", default="hollow")
    parser.add_argument("--metadata", default="", help="k=v,... for every hollow machine")
    parser.add_argument("--workdir", default="", help="where the machines' unit directories go (default: temp)")
    parser.add_argument("--kill-file", default="")
    parser.add_argument("--stats-file", default="")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
