"""The inspector against a real etcd and the real systemd of a sandbox host: it answers status requests for the
units fleetpy runs on its machine, and refuses, running nothing, a request for any other unit of the host (a
request written straight into etcd, past the API's checks)."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from fleetpy.devcluster import SandboxHost
from fleetpy.inspector import Inspector
from fleetpy.model import MachineID
from fleetpy.registry.store import EtcdRegistry
from fleetpy.relay import END, STARTED, Kind, RelayRequest


async def ask(registry: EtcdRegistry, machine: MachineID, unit: str) -> tuple[list[str], dict[str, object]]:
    """Write a status request for ``unit`` as an API process does; the reply keys seen and the end record."""
    lease = await registry.client.grant(30)
    request_id, revision = await registry.open_request(machine, RelayRequest(Kind.STATUS, unit, lease=lease))
    seen: list[str] = []
    async with asyncio.timeout(30):
        async for tail, data in registry.replies(request_id, revision):
            seen.append(tail)
            if tail == END:
                await registry.client.revoke(lease)
                return seen, json.loads(data)
    raise AssertionError("the reply stream ended without an end record")


async def test_the_inspector_answers_only_for_fleetpys_units(
    registry: EtcdRegistry, host: SandboxHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = MachineID(f"insp-{uuid.uuid4().hex[:8]}")
    ours = "ours.service"
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", host.bus)  # systemctl --user reaches the host's manager
    inspector = Inspector(registry=registry, machine=machine, user=True, owns=lambda name: name == ours)
    task = asyncio.create_task(inspector.run())
    try:
        await asyncio.sleep(0.3)  # the inspector's watch is in place
        seen, end = await ask(registry, machine, "dbus.service")
        assert seen == [END], "nothing ran: not even a start record"
        assert end == {"code": 1, "error": f"dbus.service is not a unit fleetpy runs on machine {machine}"}

        seen, end = await ask(registry, machine, ours)
        assert seen[0] == STARTED, "the command ran"
        assert "error" not in end
        assert end["code"] != 0, "systemctl status of a unit systemd does not know"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
