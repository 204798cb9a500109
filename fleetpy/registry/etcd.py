"""The etcd client: the only module that imports aetcd (and, through it, grpc).

``EtcdClient`` is a thin typed layer over aetcd's gRPC stubs: reads, transactions (built as protobufs so that
every result carries its revision), leases and prefix watches. aetcd itself lacks multiple endpoints; the gRPC
channel is built here with a target that fails over between them. Every library error leaves this module as a
fleetpy error (``RegistryUnavailable`` for anything that retrying may fix). Watch resume, keep-alive loops and
mirrors are built on top (``registry.mirror``, ``agent.Presence``), against the ``ops.Client`` protocol.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import aetcd
import aetcd.exceptions
import aetcd.watcher
import grpc
from aetcd import rpc

from fleetpy.errors import RegistryUnavailable
from fleetpy.metrics import Metrics
from fleetpy.registry.ops import KV, Compacted, Compare, Delete, Event, Op, Put, Range, TxnResult

log = logging.getLogger(__name__)


def _b(text: str) -> bytes:
    return text.encode()


def _range_end(prefix: bytes) -> bytes:
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def _translate(exc: BaseException, what: str) -> Exception:
    """One place that turns aetcd/grpc failures into fleetpy errors."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, grpc.aio.AioRpcError):
        message = exc.details() or str(exc.code())
    if "no leader" in message or "quorum" in message or "leader changed" in message:
        return RegistryUnavailable(f"etcd has no quorum ({what}: {message})")
    if isinstance(exc, aetcd.exceptions.InvalidArgumentError):
        return ValueError(f"etcd rejected {what}: {message}")
    return RegistryUnavailable(f"etcd unavailable ({what}: {message})")


def parse_endpoints(endpoints: Sequence[str]) -> str:
    """``http://a:2379,http://b:2379`` → a gRPC target that fails over between them."""
    hosts = []
    for endpoint in endpoints:
        match = re.fullmatch(r"(?:https?://)?([^/:]+|\[[^\]]+\])(?::(\d+))?/?", endpoint.strip())
        if match is None:
            raise ValueError(f"invalid etcd endpoint {endpoint!r}: expected http://host:port")
        hosts.append(f"{match.group(1)}:{match.group(2) or 2379}")
    if len(hosts) == 1:
        return hosts[0]
    if all(re.fullmatch(r"[\d.]+:\d+", h) for h in hosts):
        return "ipv4:" + ",".join(hosts)
    return hosts[0]


class _AetcdClient(aetcd.Client):  # type: ignore[misc]
    """aetcd's client with a gRPC target of our choosing (several endpoints, keep-alive pings)."""

    def __init__(self, target: str, timeout: float, **kwargs: Any) -> None:
        super().__init__(timeout=timeout, **kwargs)
        self._target = target

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:  # type: ignore[has-type]
            async with asyncio.timeout(self._connect_wait_timeout):
                await self._connected.wait()
            return
        try:
            self._is_connecting = True
            options = [
                ("grpc.keepalive_time_ms", 10_000),
                ("grpc.keepalive_timeout_ms", 5_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.lb_policy_name", "round_robin"),
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2_000),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ]
            self.channel = rpc.insecure_channel(self._target, options=options)
            if self._username is not None and self._password is not None:
                self.auth_stub = rpc.AuthStub(self.channel)
                resp = await self.auth_stub.Authenticate(
                    rpc.AuthenticateRequest(name=self._username, password=self._password), timeout=self._timeout
                )
                self.metadata = (("token", resp.token),)
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd.watcher.Watcher(
                rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False


# --------------------------------------------------------------------------------------------------------------
# The client


def _kv(kv: Any) -> KV:
    return KV(kv.key.decode(), kv.value, kv.mod_revision, kv.create_revision, kv.lease)


_COMPARE_OPS = {"==": 0, "!=": 3, "<": 2, ">": 1}  # rpc.Compare.CompareResult


def _compare(c: Compare) -> Any:
    msg = rpc.Compare(key=_b(c.key), result=_COMPARE_OPS[c.op])
    if c.target == "create":
        msg.target = rpc.Compare.CREATE
        msg.create_revision = int(c.value)
    elif c.target == "mod":
        msg.target = rpc.Compare.MOD
        msg.mod_revision = int(c.value)
    elif c.target == "version":
        msg.target = rpc.Compare.VERSION
        msg.version = int(c.value)
    else:
        msg.target = rpc.Compare.VALUE
        msg.value = c.value if isinstance(c.value, bytes) else str(c.value).encode()
    return msg


def _request(op: Op) -> Any:
    if isinstance(op, Put):
        return rpc.RequestOp(request_put=rpc.PutRequest(key=_b(op.key), value=op.value, lease=op.lease))
    key = _b(op.key)
    if isinstance(op, Delete):
        req = rpc.DeleteRangeRequest(key=key)
        if op.prefix:
            req.range_end = _range_end(key)
        return rpc.RequestOp(request_delete_range=req)
    rng = rpc.RangeRequest(key=key, keys_only=op.keys_only)
    if op.prefix:
        rng.range_end = _range_end(key)
    return rpc.RequestOp(request_range=rng)


class EtcdClient:
    """Typed etcd v3 operations; every failure comes out as a fleetpy error."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 3.0,
        username: str = "",
        password: str = "",
        metrics: Metrics | None = None,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        self.metrics = metrics
        self._client = _AetcdClient(
            parse_endpoints(endpoints),
            timeout=timeout,
            username=username or None,
            password=password or None,
        )

    async def close(self) -> None:
        try:
            await self._client.close()
        except Exception as exc:  # closing a broken channel must not mask the real error
            log.debug("closing etcd client: %s", exc)

    def _count(self, op: str, *, failed: bool) -> None:
        if self.metrics is not None:
            self.metrics.etcd_operation(op, failed=failed)

    async def _call(self, what: str, stub_method: Callable[..., Any], request: Any) -> Any:
        op = "range" if what.startswith("get") else what.replace(" ", "_").replace("-", "_")
        try:
            await self._client.connect()
            result = await stub_method(request, timeout=self.timeout, metadata=self._client.metadata)
        except (TimeoutError, grpc.aio.AioRpcError, aetcd.exceptions.ClientError, OSError) as exc:
            self._count(op, failed=True)
            raise _translate(exc, what) from exc
        self._count(op, failed=False)
        return result

    async def status(self) -> int:
        """The current revision; raises ``RegistryUnavailable`` when etcd cannot answer."""
        await self._client.connect()
        resp = await self._call("status", self._client.maintenancestub.Status, rpc.StatusRequest())
        return int(resp.header.revision)

    async def get(self, key: str) -> KV | None:
        await self._client.connect()
        resp = await self._call(f"get {key}", self._client.kvstub.Range, rpc.RangeRequest(key=_b(key)))
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(self, prefix: str, *, keys_only: bool = False) -> tuple[int, list[KV]]:
        """Every key under ``prefix`` and the revision the read saw."""
        await self._client.connect()
        key = _b(prefix)
        req = rpc.RangeRequest(key=key, range_end=_range_end(key), keys_only=keys_only)
        resp = await self._call(f"get {prefix}*", self._client.kvstub.Range, req)
        return int(resp.header.revision), [_kv(kv) for kv in resp.kvs]

    async def txn(self, compares: Iterable[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        await self._client.connect()
        req = rpc.TxnRequest(
            compare=[_compare(c) for c in compares],
            success=[_request(op) for op in success],
            failure=[_request(op) for op in failure],
        )
        resp = await self._call("transaction", self._client.kvstub.Txn, req)
        ranges = [
            [_kv(kv) for kv in r.response_range.kvs]
            for r in resp.responses
            if r.WhichOneof("response") == "response_range"
        ]
        return TxnResult(bool(resp.succeeded), int(resp.header.revision), ranges)

    async def read(self, *ranges: Range) -> TxnResult:
        """Several reads at one revision."""
        return await self.txn((), ranges)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        return (await self.txn((), [Put(key, value, lease)])).revision

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        return (await self.txn((), [Delete(key, prefix)])).revision

    # leases

    async def grant(self, ttl: int) -> int:
        await self._client.connect()
        resp = await self._call("lease grant", self._client.leasestub.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl))
        return int(resp.ID)

    async def keepalive(self, lease: int) -> int:
        """Refresh ``lease``; return its new TTL, 0 if the lease no longer exists."""
        await self._client.connect()

        async def once() -> int:
            stream = self._client.leasestub.LeaseKeepAlive(
                iter([rpc.LeaseKeepAliveRequest(ID=lease)]), timeout=self.timeout, metadata=self._client.metadata
            )
            async for reply in stream:
                return int(reply.TTL)
            return 0

        try:
            async with asyncio.timeout(self.timeout):
                ttl = await once()
        except (TimeoutError, grpc.aio.AioRpcError, aetcd.exceptions.ClientError, OSError) as exc:
            self._count("lease_keepalive", failed=True)
            raise _translate(exc, "lease keep-alive") from exc
        self._count("lease_keepalive", failed=False)
        return ttl

    async def lease_ttl(self, lease: int) -> int:
        """Remaining TTL of ``lease`` in seconds, -1 if it does not exist."""
        await self._client.connect()
        resp = await self._call(
            "lease time-to-live", self._client.leasestub.LeaseTimeToLive, rpc.LeaseTimeToLiveRequest(ID=lease)
        )
        return int(resp.TTL)

    async def revoke(self, lease: int) -> None:
        await self._client.connect()
        await self._call("lease revoke", self._client.leasestub.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease))

    # watches

    async def watch(
        self, prefix: str, start_revision: int, created: Callable[[], None] | None = None
    ) -> AsyncIterator[Event]:
        """Events under ``prefix`` from ``start_revision`` on, until the stream breaks (``RegistryUnavailable``)
        or the revision is compacted (``Compacted``)."""
        await self._client.connect()
        key = _b(prefix)
        try:
            watch = await self._client.watch(key, range_end=_range_end(key), start_revision=start_revision)
        except aetcd.exceptions.RevisionCompactedError as exc:
            raise Compacted(exc.compacted_revision) from exc
        except (TimeoutError, grpc.aio.AioRpcError, aetcd.exceptions.ClientError, OSError) as exc:
            self._count("watch", failed=True)
            raise _translate(exc, f"watch {prefix}") from exc
        self._count("watch", failed=False)
        if created is not None:
            created()
        try:
            async for event in watch:
                yield Event(
                    deleted=event.kind == "DELETE",
                    key=event.kv.key.decode(),
                    value=event.kv.value,
                    revision=event.kv.mod_revision,
                )
        except aetcd.exceptions.RevisionCompactedError as exc:
            raise Compacted(exc.compacted_revision) from exc
        except (TimeoutError, grpc.aio.AioRpcError, aetcd.exceptions.ClientError, OSError) as exc:
            raise _translate(exc, f"watch {prefix}") from exc
        finally:
            try:
                await asyncio.shield(watch.cancel())
            except Exception as exc:  # the stream may already be gone
                log.debug("cancelling watch on %s: %s", prefix, exc)
        raise RegistryUnavailable(f"etcd watch on {prefix} ended")
