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
from dataclasses import dataclass
from typing import Any

import aetcd
import aetcd.exceptions
import aetcd.watcher
import grpc
from aetcd import rpc

from fleetpy.config import is_loopback
from fleetpy.errors import ConfigError, RegistryAccessDenied, RegistryUnavailable
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


def _message(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.details() or str(exc.code())
    return str(exc) or type(exc).__name__


# What etcd's answers mean for the caller (matched on gRPC status details, as etcd's own client does).
_EXPIRED_TOKEN = ("invalid auth token",)
_NOT_ENABLED = ("authentication is not enabled",)
_REFUSED = ("authentication failed", "permission denied", "user name is empty", "user name not found")
_NO_QUORUM = ("no leader", "quorum")
_TLS_FAILED = ("handshake failed", "TSI_", "CERTIFICATE_VERIFY_FAILED", "SSL_ERROR")


def _translate(exc: BaseException, what: str) -> Exception:
    """One place that turns aetcd/grpc failures into fleetpy errors."""
    message = _message(exc)
    if any(text in message for text in _REFUSED):
        hint = (
            " (etcd requires authentication: set etcd_username and etcd_password)"
            if "user name is empty" in message
            else ""
        )
        return RegistryAccessDenied(f"etcd refused the request ({what}: {message}){hint}")
    if any(text in message for text in _NO_QUORUM):
        return RegistryUnavailable(f"etcd has no quorum ({what}: {message})")
    if (
        isinstance(exc, aetcd.exceptions.InvalidArgumentError)
        or (
            isinstance(exc, grpc.aio.AioRpcError)
            and exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
        )
        or "not found" in message  # etcdserver: requested lease not found
    ):
        return ValueError(f"etcd rejected {what}: {message}")
    if any(text in message for text in _TLS_FAILED):
        hint = " (the TLS handshake failed: check etcd_cafile, etcd_certfile and etcd_keyfile against etcd's)"
        return RegistryUnavailable(f"etcd unavailable ({what}: {message}){hint}")
    return RegistryUnavailable(f"etcd unavailable ({what}: {message})")


def _retryable(error: Exception) -> bool:
    return isinstance(error, RegistryUnavailable)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One etcd member as the client reaches it: ``host:port`` and whether it speaks TLS (``https://``)."""

    target: str
    secure: bool

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.target}"


def parse_endpoints(endpoints: Sequence[str]) -> list[Endpoint]:
    """``http://a:2379``, ``https://[::1]:2379``, ``a`` (port 2379) → one ``Endpoint`` each."""
    result = []
    for endpoint in endpoints:
        match = re.fullmatch(r"(?:(https?)://)?([^/:\[\]]+|\[[^\]]+\])(?::(\d+))?/?", endpoint.strip())
        if match is None:
            raise ValueError(f"invalid etcd endpoint {endpoint!r}: expected http://host:port")
        result.append(Endpoint(f"{match.group(2)}:{match.group(3) or 2379}", match.group(1) == "https"))
    if not result:
        raise ValueError("no etcd endpoint given")
    return result


@dataclass(frozen=True, slots=True)
class EtcdTls:
    """Client TLS for etcd: the CA that signs the members' certificates (the system's CAs when empty), and a
    client certificate and key for etcd's ``--client-cert-auth``. The server is always verified."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        """``ConfigError`` when a file cannot be read or only one of certificate and key is given."""
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("etcd_certfile and etcd_keyfile must be given together")

        def read(path: str, option: str) -> bytes | None:
            if not path:
                return None
            try:
                with open(path, "rb") as handle:
                    return handle.read()
            except OSError as exc:
                raise ConfigError(f"cannot read {option} {path}: {exc.strerror}") from None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file, "etcd_cafile"),
            private_key=read(self.key_file, "etcd_keyfile"),
            certificate_chain=read(self.cert_file, "etcd_certfile"),
        )

    def __bool__(self) -> bool:
        return bool(self.ca_file or self.cert_file or self.key_file)


_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
# etcd cancels a watch whose member has lost its leader when the watch asks for it (clientv3.WithRequireLeader):
# a watch on a member cut off from the majority fails and is resumed on another member instead of going silent.
_REQUIRE_LEADER = (("hasleader", "true"),)


class _Member(aetcd.Client):  # type: ignore[misc]
    """aetcd's client on one etcd member, with a gRPC channel of our own (TLS, keep-alive pings) and a token
    that can be renewed (etcd's simple tokens expire when unused)."""

    def __init__(
        self, endpoint: Endpoint, *, timeout: float, credentials: grpc.ChannelCredentials | None, **kwargs: Any
    ) -> None:
        super().__init__(timeout=timeout, **kwargs)
        self.endpoint = endpoint
        self._credentials = credentials
        self._token: tuple[tuple[str, str], ...] = ()

    def _open_channel(self) -> None:
        if self.channel is not None:  # type: ignore[has-type]
            return
        target = self.endpoint.target
        if self._credentials is not None:
            self.channel = grpc.aio.secure_channel(target, self._credentials, options=_CHANNEL_OPTIONS)
        else:
            self.channel = rpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self.auth_stub = rpc.AuthStub(self.channel)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.watcher.Watcher(
            rpc.WatchStub(self.channel), timeout=self._timeout, metadata=_REQUIRE_LEADER
        )

    async def authenticate(self) -> None:
        """Get a (new) token for the username and password; nothing to do without them."""
        self._open_channel()
        if self._username is None or self._password is None:
            return
        request = rpc.AuthenticateRequest(name=self._username, password=self._password)
        try:
            resp = await self.auth_stub.Authenticate(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if any(text in _message(exc) for text in _NOT_ENABLED):
                log.warning("etcd at %s has authentication disabled: the username is not used", self.endpoint.url)
                self._token = ()
                self._set_metadata()
                return
            raise
        self._token = (("token", resp.token),)
        self._set_metadata()

    def _set_metadata(self) -> None:
        self.metadata = self._token or None
        if self._watcher is not None:
            self._watcher._metadata = self._token + _REQUIRE_LEADER

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:  # type: ignore[has-type]
            async with asyncio.timeout(self._connect_wait_timeout):
                await self._connected.wait()
            return
        try:
            self._is_connecting = True
            await self.authenticate()
            self._connected.set()
        finally:
            self._is_connecting = False

    async def leader(self, timeout: float) -> int:
        """The member ID of the leader this member follows (0: it has none); raises if it does not answer.
        Asked without authenticating, which itself needs a leader."""
        self._open_channel()
        resp = await self.maintenancestub.Status(rpc.StatusRequest(), timeout=timeout, metadata=self.metadata)
        return int(resp.leader)


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


RETRY_BUDGET = 2.0  # a call is retried on other members for up to this many request timeouts


class EtcdClient:
    """Typed etcd v3 operations; every failure comes out as a fleetpy error.

    One gRPC channel per endpoint, each verified against its own name under TLS. Calls go to one member (the
    *pinned* one); a call that fails for a reason another attempt may not share (the member is down or cut off,
    a leader election, a timeout) moves the pin to the next member and is tried again, for up to
    ``RETRY_BUDGET`` request timeouts. Retrying a write is safe for fleetpy's writes: unconditional puts and
    deletes are idempotent, and every other write compares a revision, so an attempt that was applied after
    all makes its retry's compare fail, which the caller already treats as "someone else won" (the API then
    reads what is stored). When the budget is spent the error says whether etcd has lost its quorum: the
    members that answer have no leader.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 3.0,
        username: str = "",
        password: str = "",
        tls: EtcdTls | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        self.metrics = metrics
        parsed = parse_endpoints(endpoints)
        secure = {e.secure for e in parsed}
        if len(secure) > 1:
            raise ConfigError("etcd_servers mixes http:// and https:// endpoints: use https:// for all of them")
        if tls and secure == {False}:
            raise ConfigError(
                "etcd_cafile, etcd_certfile or etcd_keyfile is set but etcd_servers use http://: "
                "use https:// endpoints for TLS"
            )
        if password and secure == {False} and not all(is_loopback(e.target.rsplit(":", 1)[0]) for e in parsed):
            log.warning(
                "etcd_password is sent in clear over http:// to %s: use https:// endpoints", ", ".join(endpoints)
            )
        credentials = (tls or EtcdTls()).credentials() if secure == {True} else None
        self._members = [
            _Member(
                endpoint,
                timeout=timeout,
                credentials=credentials,
                username=username or None,
                password=password or None,
            )
            for endpoint in parsed
        ]
        self._pinned = 0

    async def close(self) -> None:
        for member in self._members:
            try:
                await member.close()
            except Exception as exc:  # closing a broken channel must not mask the real error
                log.debug("closing etcd client: %s", exc)

    def _count(self, op: str, *, failed: bool) -> None:
        if self.metrics is not None:
            self.metrics.etcd_operation(op, failed=failed)

    def _member(self) -> _Member:
        return self._members[self._pinned]

    def _move_pin(self, failed: _Member, error: BaseException) -> None:
        if len(self._members) > 1 and self._members[self._pinned] is failed:
            self._pinned = (self._pinned + 1) % len(self._members)
            log.debug("etcd %s failed (%s): trying %s", failed.endpoint.url, error, self._member().endpoint.url)

    async def _call(self, what: str, stub: str, method: str, request: Any) -> Any:
        op = "range" if what.startswith("get") else what.replace(" ", "_").replace("-", "_")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout * RETRY_BUDGET
        pause = 0.05
        renewed = False
        while True:
            member = self._member()
            try:
                await member.connect()
                timeout = max(0.1, min(self.timeout, deadline - loop.time()))
                result = await getattr(getattr(member, stub), method)(
                    request, timeout=timeout, metadata=member.metadata
                )
            except (TimeoutError, grpc.aio.AioRpcError, aetcd.exceptions.ClientError, OSError) as exc:
                if any(text in _message(exc) for text in _EXPIRED_TOKEN) and not renewed:
                    renewed = True  # etcd forgot our token (unused for a while, or a member restarted)
                    member._connected.clear()
                    continue
                error = _translate(exc, what)
                if not _retryable(error) or loop.time() + pause >= deadline:
                    self._count(op, failed=True)
                    if _retryable(error):
                        error = await self._diagnose(error)
                    raise error from exc
                self._move_pin(member, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)
                continue
            self._count(op, failed=False)
            return result

    async def _diagnose(self, error: Exception) -> Exception:
        """Say what is wrong when calls keep failing: no quorum (members answer but have no leader), or no member
        answers at all; otherwise the error as it is."""

        async def leader(member: _Member) -> int | None:
            try:
                return await member.leader(timeout=min(1.0, self.timeout))
            except (TimeoutError, grpc.aio.AioRpcError, aetcd.exceptions.ClientError, OSError):
                return None

        leaders = await asyncio.gather(*(leader(m) for m in self._members))
        answering = [lead for lead in leaders if lead is not None]
        total = len(self._members)
        detail = str(error.args[0]) if error.args else ""
        if answering and not any(answering):
            return RegistryUnavailable(
                f"etcd has no quorum: {len(answering)} of the {total} etcd endpoints answer but none has a leader "
                f"(a majority of the etcd members is down or cut off) - {detail}"
            )
        if not answering:
            urls = ", ".join(m.endpoint.url for m in self._members)
            return RegistryUnavailable(f"etcd unavailable: no etcd endpoint answers ({urls}) - {detail}")
        return error

    async def status(self) -> int:
        """The current revision; raises ``RegistryUnavailable`` when etcd cannot answer."""
        resp = await self._call("status", "maintenancestub", "Status", rpc.StatusRequest())
        return int(resp.header.revision)

    async def get(self, key: str) -> KV | None:
        resp = await self._call(f"get {key}", "kvstub", "Range", rpc.RangeRequest(key=_b(key)))
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(self, prefix: str, *, keys_only: bool = False) -> tuple[int, list[KV]]:
        """Every key under ``prefix`` and the revision the read saw."""
        key = _b(prefix)
        req = rpc.RangeRequest(key=key, range_end=_range_end(key), keys_only=keys_only)
        resp = await self._call(f"get {prefix}*", "kvstub", "Range", req)
        return int(resp.header.revision), [_kv(kv) for kv in resp.kvs]

    async def txn(self, compares: Iterable[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        req = rpc.TxnRequest(
            compare=[_compare(c) for c in compares],
            success=[_request(op) for op in success],
            failure=[_request(op) for op in failure],
        )
        resp = await self._call("transaction", "kvstub", "Txn", req)
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
        resp = await self._call("lease grant", "leasestub", "LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl))
        return int(resp.ID)

    async def keepalive(self, lease: int) -> int:
        """Refresh ``lease``; return its new TTL, 0 if the lease no longer exists. One attempt: the callers keep
        leases alive in loops that try again."""
        member = self._member()

        async def once() -> int:
            await member.connect()
            stream = member.leasestub.LeaseKeepAlive(
                iter([rpc.LeaseKeepAliveRequest(ID=lease)]),
                timeout=self.timeout,
                metadata=(member.metadata or ()) + _REQUIRE_LEADER,
            )
            async for reply in stream:
                return int(reply.TTL)
            return 0

        try:
            async with asyncio.timeout(self.timeout):
                ttl = await once()
        except (TimeoutError, grpc.aio.AioRpcError, aetcd.exceptions.ClientError, OSError) as exc:
            self._count("lease_keepalive", failed=True)
            if any(text in _message(exc) for text in _EXPIRED_TOKEN):
                member._connected.clear()
            self._move_pin(member, exc)
            raise _translate(exc, "lease keep-alive") from exc
        self._count("lease_keepalive", failed=False)
        return ttl

    async def lease_ttl(self, lease: int) -> int:
        """Remaining TTL of ``lease`` in seconds, -1 if it does not exist."""
        resp = await self._call(
            "lease time-to-live", "leasestub", "LeaseTimeToLive", rpc.LeaseTimeToLiveRequest(ID=lease)
        )
        return int(resp.TTL)

    async def revoke(self, lease: int) -> None:
        """Revoke ``lease``; a lease that no longer exists is fine (an earlier attempt may have revoked it)."""
        try:
            await self._call("lease revoke", "leasestub", "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease))
        except ValueError:
            return  # etcd: requested lease not found

    # watches

    async def watch(
        self, prefix: str, start_revision: int, created: Callable[[], None] | None = None
    ) -> AsyncIterator[Event]:
        """Events under ``prefix`` from ``start_revision`` on, until the stream breaks (``RegistryUnavailable``)
        or the revision is compacted (``Compacted``). A broken stream moves the pin: the caller's next watch
        goes to another member."""
        member = self._member()
        key = _b(prefix)
        try:
            await member.connect()
            watch = await member.watch(key, range_end=_range_end(key), start_revision=start_revision)
        except aetcd.exceptions.RevisionCompactedError as exc:
            raise Compacted(exc.compacted_revision) from exc
        except (TimeoutError, grpc.aio.AioRpcError, aetcd.exceptions.ClientError, OSError) as exc:
            self._count("watch", failed=True)
            if any(text in _message(exc) for text in _EXPIRED_TOKEN):
                member._connected.clear()
            self._move_pin(member, exc)
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
            self._move_pin(member, exc)
            raise _translate(exc, f"watch {prefix}") from exc
        finally:
            try:
                await asyncio.shield(watch.cancel())
            except Exception as exc:  # the stream may already be gone
                log.debug("cancelling watch on %s: %s", prefix, exc)
        self._move_pin(member, RegistryUnavailable("watch ended"))
        raise RegistryUnavailable(f"etcd watch on {prefix} ended")
