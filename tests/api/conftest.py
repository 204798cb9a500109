"""The API on a real etcd, one key prefix per test: the app in-process (aiohttp's TestServer on a loopback port,
``make_api``/``api``) or a running ``fleetpyd`` process on its unix socket (``fleetpyd``)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from fleetpy.api.app import ApiSettings, make_app
from fleetpy.devcluster import EtcdServer
from fleetpy.registry.etcd import EtcdClient
from fleetpy.registry.store import EtcdRegistry
from fleetpy.unit import UnitFile
from tests.cli.conftest import start_process, stop_process, wait_serving

V1 = "/fleet/v1"


@dataclass
class Reply:
    status: int
    raw: bytes
    headers: Any

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    @property
    def error(self) -> tuple[int, str]:
        """(code, message) of fleet's error body; fails unless the body is exactly that shape."""
        body = self.json
        assert list(body) == ["error"], body
        assert list(body["error"]) == ["code", "message"], body
        return body["error"]["code"], body["error"]["message"]


@dataclass
class Api:
    http: TestClient[Any, Any]
    registry: EtcdRegistry
    etcd: EtcdClient
    prefix: str

    async def call(self, method: str, path: str, **kwargs: Any) -> Reply:
        response: ClientResponse = await self.http.request(method, path, **kwargs)
        async with response:
            return Reply(response.status, await response.read(), response.headers)

    async def get(self, path: str) -> Reply:
        return await self.call("GET", path)

    async def put(self, name: str, body: Any, *, base: str = V1) -> Reply:
        return await self.call("PUT", f"{base}/units/{name}", json=body)

    async def put_text(self, name: str, text: str, desired: str | None = None) -> Reply:
        body: dict[str, Any] = {"name": name, "options": options_of(text)}
        if desired is not None:
            body["desiredState"] = desired
        return await self.put(name, body)

    async def stored(self) -> list[tuple[str, bytes, int]]:
        """Everything under the test's prefix, with mod revisions: equal lists mean nothing was written."""
        _, kvs = await self.etcd.get_prefix(self.prefix + "/")
        return [(kv.key, kv.value, kv.mod_revision) for kv in kvs]

    @contextlib.asynccontextmanager
    async def unchanged(self) -> AsyncIterator[None]:
        before = await self.stored()
        yield
        assert await self.stored() == before, "a refused request wrote to etcd"


def options_of(text: str) -> list[dict[str, str]]:
    return [{"section": o.section, "name": o.name, "value": o.value} for o in UnitFile.from_text(text).options]


def hash_of(text: str) -> str:
    return UnitFile.from_text(text).hash


MakeApi = Callable[..., Awaitable[Api]]


@pytest.fixture
async def make_api(registry: EtcdRegistry, client: EtcdClient, prefix: str) -> AsyncIterator[MakeApi]:
    """Start the app with the given ``ApiSettings`` arguments; every app started is closed at the end."""
    started: list[TestClient[Any, Any]] = []

    async def make(**settings: Any) -> Api:
        http: TestClient[Any, Any] = TestClient(TestServer(make_app(registry, ApiSettings(**settings))))
        await http.start_server()
        started.append(http)
        return Api(http, registry, client, prefix)

    try:
        yield make
    finally:
        for http in started:
            await http.close()


@pytest.fixture
async def api(make_api: MakeApi) -> Api:
    return await make_api()


JSON = {"Content-Type": "application/json"}


class Http:
    """Requests to a running fleetpyd over its unix socket; a body is sent as JSON unless ``raw`` is given."""

    def __init__(self, socket_path: str) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket_path))

    async def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        all_headers = dict(JSON if data is not None and headers is None else headers or {})
        async with self.session.request(method, f"http://fleetpyd{path}", data=data, headers=all_headers) as response:
            return Reply(response.status, await response.read(), response.headers)


@pytest.fixture
async def fleetpyd(etcd: EtcdServer, prefix: str, workdir: str) -> AsyncIterator[Http]:
    """An API-only fleetpyd with a page size of 2, so that every listing pages."""
    name = prefix.strip("/")
    sock = os.path.join(workdir, f"api-{name}.sock")
    command = [
        sys.executable, "-m", "fleetpy.cli.fleetpyd", "--disable-agent", "--disable-engine", "--api-socket", sock,
        "--etcd-servers", etcd.endpoint, "--etcd-key-prefix", prefix,
    ]  # fmt: skip
    env = dict(os.environ, FLEETPY_TOKEN_LIMIT="2")
    api = start_process(command, sock, os.path.join(workdir, f"api-{name}.log"), env=env)
    http = None
    try:
        wait_serving(api)
        http = Http(sock)
        yield http
    finally:
        if http is not None:
            await http.session.close()
        stop_process(api)
