"""The API's side of status and journal (``fleetpy.api.relay``) on a real etcd: what it refuses, the requests it
leaves for machines, how it relays their replies, and that it cleans up. The test plays the machine: it watches
the machine's request prefix and writes replies as an inspector would."""

from __future__ import annotations

import asyncio
import json

import pytest

from fleetpy.api import relay as api_relay
from fleetpy.keys import Keys
from fleetpy.registry.store import EtcdRegistry
from fleetpy.relay import END, STARTED, Kind, chunk_key, decode_request, encode_end
from tests.api.conftest import Api
from tests.api.seeding import add_machine, place

HELLO = "[Service]\nExecStart=/bin/sleep 100\n"
GLOBAL = "[Service]\nExecStart=/bin/sleep 100\n\n[X-Fleet]\nGlobal=true\n"
M1, M2 = "m1", "m2"
BASE = "/fleetpy/v1/units"


async def answer(registry: EtcdRegistry, machine: str, outputs: list[bytes], code: int = 0) -> None:
    """Act as ``machine``'s inspector for every request that arrives."""
    keys: Keys = registry.keys
    prefix = keys.request(machine)
    revision = await registry.client.status()
    async for event in registry.client.watch(prefix, revision + 1):
        if event.deleted:
            continue
        request_id = event.key[len(prefix) :]
        request = decode_request(event.value)
        await registry.put_reply(request_id, STARTED, b"", request.lease)
        for i, data in enumerate(outputs):
            await registry.put_reply(
                request_id, chunk_key(i), data + f" {machine} {request.kind}".encode(), request.lease
            )
        await registry.put_reply(request_id, END, encode_end(code), request.lease)


def lines(raw: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


@pytest.fixture
async def placed(api: Api) -> Api:
    await add_machine(api.registry, M1, "10.0.0.1")
    await add_machine(api.registry, M2, "10.0.0.2")
    assert (await api.put_text("hello.service", HELLO, "launched")).status == 201
    assert (await api.put_text("g.service", GLOBAL, "launched")).status == 201
    assert (await api.put_text("idle.service", HELLO, "inactive")).status == 201
    await place(api.registry, "hello.service", M1)
    await place(api.registry, "g.service", M2)
    await place(api.registry, "g.service", M1)
    return api


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        pytest.param("/missing.service/status", 404, "unit does not exist", id="a missing unit"),
        pytest.param("/idle.service/journal", 409, "unit idle.service is not placed on any machine", id="not placed"),
        pytest.param(
            "/hello.service/status?machineID=m2", 409, "unit hello.service is not placed on machine m2", id="elsewhere"
        ),
        pytest.param("/hello.service/journal?lines=x", 400, "lines must be a number, got 'x'", id="lines not a number"),
        pytest.param(
            "/hello.service/journal?lines=-1", 400, "lines must be between 0 and 100000, got -1", id="negative"
        ),
        pytest.param("/hello.service/status?follow=true", 400, "only the journal can be followed", id="follow status"),
        pytest.param("/hello.service/journal?output=--all", 400, "invalid output mode '--all'", id="an option as mode"),
    ],
)
async def test_refused_requests_leave_nothing_for_any_machine(
    placed: Api, path: str, status: int, message: str
) -> None:
    async with placed.unchanged():
        reply = await placed.get(BASE + path)
    assert reply.status == status
    code, text = reply.error
    assert code == status
    assert text.startswith(message)


async def test_a_unit_s_machine_answers_and_everything_is_cleaned_up(placed: Api) -> None:
    machine = asyncio.create_task(answer(placed.registry, M1, [b"line one\n", b"line two\n"], code=3))
    await asyncio.sleep(0.2)  # the stand-in machine watches
    try:
        reply = await placed.get(BASE + "/hello.service/status")
    finally:
        machine.cancel()
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/x-ndjson"
    assert lines(reply.raw) == [
        {"machineID": M1, "output": "line one\n m1 status"},
        {"machineID": M1, "output": "line two\n m1 status"},
        {"machineID": M1, "exitCode": 3},
    ]
    _, left = await placed.etcd.get_prefix(placed.prefix + "/requests/")
    _, replies = await placed.etcd.get_prefix(placed.prefix + "/replies/")
    assert (left, replies) == ([], [])


async def test_a_global_unit_is_asked_of_every_machine_in_order(placed: Api) -> None:
    machines = [asyncio.create_task(answer(placed.registry, m, [b"x\n"])) for m in (M2, M1)]
    await asyncio.sleep(0.2)
    try:
        reply = await placed.get(BASE + "/g.service/journal?lines=5")
    finally:
        for task in machines:
            task.cancel()
    assert lines(reply.raw) == [
        {"machineID": M1, "output": "x\n m1 journal"},
        {"machineID": M1, "exitCode": 0},
        {"machineID": M2, "output": "x\n m2 journal"},
        {"machineID": M2, "exitCode": 0},
    ]


async def test_a_machine_that_does_not_answer(placed: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_relay, "ANSWER_TIMEOUT", 0.5)
    reply = await placed.get(BASE + "/hello.service/status")
    assert lines(reply.raw) == [{"machineID": M1, "exitCode": 1, "error": "machine m1 did not answer within 0s"}]
    _, left = await placed.etcd.get_prefix(placed.prefix + "/requests/")
    assert left == []


async def test_the_request_a_machine_sees(placed: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: asyncio.Queue[bytes] = asyncio.Queue()

    async def watch() -> None:
        prefix = placed.registry.keys.request(M1)
        async for event in placed.etcd.watch(prefix, await placed.etcd.status() + 1):
            if not event.deleted:
                await seen.put(event.value)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.2)
    monkeypatch.setattr(api_relay, "ANSWER_TIMEOUT", 0.3)  # nobody answers: the request is all we look at
    try:
        await placed.get(BASE + "/hello.service/journal?lines=7&follow=true&output=cat")
    finally:
        watcher.cancel()
    request = decode_request(await asyncio.wait_for(seen.get(), 5))
    assert (request.kind, request.unit, request.lines, request.follow, request.output) == (
        Kind.JOURNAL,
        "hello.service",
        7,
        True,
        "cat",
    )
    assert request.lease > 0
