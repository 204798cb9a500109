"""The inspector: answers status and journal requests addressed to this machine (``fleetpy.relay``).

It mirrors only ``requests/<this machine>/`` (like the agent, it never hears about other machines' work). For
each new request it runs the command ``relay.command`` gives (``systemctl status`` or ``journalctl``, an
argument list, no shell) on this machine, where the unit's systemd and journal are, and writes the output back in
chunks on the request's lease. A request that disappears (its API process finished, its client went away, or
its lease expired) stops its command, so ``journal --follow`` never outlives the one who follows.

It answers only for units fleetpy runs or schedules on this machine (``owns``): a request written into etcd
for one of the host's own units, such as ``sshd.service``, is answered with an error and runs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

from fleetpy.errors import FleetError
from fleetpy.model import MachineID
from fleetpy.registry.base import InspectorRegistry
from fleetpy.relay import END, STARTED, RelayRequest, chunk_key, command, encode_end

log = logging.getLogger(__name__)

CHUNK = 64 * 1024  # at most this many bytes of output per reply key
MAX_RUNNING = 32  # requests served at once; more wait for a slot


class Inspector:
    def __init__(
        self, *, registry: InspectorRegistry, machine: MachineID, user: bool, owns: Callable[[str], bool]
    ) -> None:
        self.registry = registry
        self.owns = owns
        self.machine = machine
        self.user = user
        self._requests = registry.requests_prefix(machine)
        self._mirror = registry.mirror([self._requests])
        self._running: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(MAX_RUNNING)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._mirror.run())
            try:
                while True:
                    await self._mirror.changed.wait()
                    self._mirror.changed.clear()
                    self._sync(group)
            finally:
                for task in self._running.values():
                    task.cancel()

    def _sync(self, group: asyncio.TaskGroup) -> None:
        wanted = self._requests.items
        for request_id in [r for r in self._running if r not in wanted]:
            self._running.pop(request_id).cancel()  # the requester is gone: stop the command
        for request_id, request in wanted.items():
            if request_id not in self._running:
                # A finished task stays here until its request disappears, so no request is served twice.
                self._running[request_id] = group.create_task(self._serve(request_id, request))

    async def _serve(self, request_id: str, request: RelayRequest) -> None:
        async with self._slots:
            try:
                await self._run_command(request_id, request)
            except FleetError as exc:
                # etcd is unreachable or the lease is gone: nobody is listening any more.
                log.info("inspector: request %s (%s %s) ends: %s", request_id, request.kind, request.unit, exc)

    async def _run_command(self, request_id: str, request: RelayRequest) -> None:
        if not self.owns(request.unit):
            log.warning("inspector: request %s for %s refused: not a fleetpy unit here", request_id, request.unit)
            error = f"{request.unit} is not a unit fleetpy runs on machine {self.machine}"
            await self.registry.put_reply(request_id, END, encode_end(1, error), request.lease)
            return
        args = command(request, user=self.user)
        log.info("inspector: running %s for request %s", args, request_id)
        env = dict(os.environ, SYSTEMD_PAGER="", SYSTEMD_COLORS="0", LC_ALL=os.environ.get("LC_ALL", "C.UTF-8"))
        try:
            process = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
            )
        except OSError as exc:
            await self.registry.put_reply(
                request_id, END, encode_end(127, f"cannot run {args[0]}: {exc}"), request.lease
            )
            return
        try:
            await self.registry.put_reply(request_id, STARTED, b"", request.lease)
            assert process.stdout is not None
            sequence = 0
            while True:
                data = await process.stdout.read(CHUNK)
                if not data:
                    break
                await self.registry.put_reply(request_id, chunk_key(sequence), data, request.lease)
                sequence += 1
            code = await process.wait()
            await self.registry.put_reply(request_id, END, encode_end(code), request.lease)
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
