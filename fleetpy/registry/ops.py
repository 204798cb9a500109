"""etcd operations as plain data, and the protocol of the client that performs them.

Kept apart from ``registry.etcd`` (the only module that imports aetcd and grpc) so that everything above the
client (the mirror, the registry, the loops) is written against these types and this protocol alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
# Keys and values in one transaction: etcd refuses a request over its --max-request-bytes (1.5 MiB by default)
# whatever its number of operations; the rest is left for protobuf framing.
MAX_TXN_BYTES = 1280 * 1024


@dataclass(frozen=True, slots=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class Event:
    deleted: bool
    key: str
    value: bytes
    revision: int


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Range:
    key: str
    prefix: bool = False
    keys_only: bool = False


@dataclass(frozen=True, slots=True)
class Compare:
    """``key``'s ``target`` (create, mod, version, value) compared with ``value`` by ``op`` (==, !=, <, >)."""

    key: str
    target: str
    op: str
    value: int | bytes


Op = Put | Delete | Range


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    ranges: list[list[KV]] = field(default_factory=list)


class Compacted(Exception):
    """The revision a watch asked for is compacted: read the prefix again."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision compacted below {revision}")
        self.revision = revision


class Client(Protocol):
    """etcd v3 as fleetpy uses it. Every method raises ``RegistryUnavailable`` when etcd cannot answer."""

    endpoints: tuple[str, ...]

    async def close(self) -> None: ...

    async def status(self) -> int:
        """The current revision."""

    async def get(self, key: str) -> KV | None:
        """The key, or ``None`` if it does not exist."""

    async def get_prefix(self, prefix: str, *, keys_only: bool = False) -> tuple[int, list[KV]]:
        """Every key under ``prefix``, sorted, and the revision of the read."""

    async def txn(self, compares: Iterable[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        """One transaction; ``ranges`` holds the results of its ``Range`` operations in order."""

    async def read(self, *ranges: Range) -> TxnResult:
        """Several reads at one revision."""

    async def put(self, key: str, value: bytes, lease: int = 0) -> int: ...

    async def delete(self, key: str, *, prefix: bool = False) -> int: ...

    async def grant(self, ttl: int) -> int: ...

    async def keepalive(self, lease: int) -> int:
        """Refresh the lease; its new TTL, or 0 if it no longer exists."""

    async def lease_ttl(self, lease: int) -> int:
        """Remaining TTL in seconds, -1 if the lease does not exist."""

    async def revoke(self, lease: int) -> None: ...

    def watch(
        self, prefix: str, start_revision: int, created: Callable[[], None] | None = None
    ) -> AsyncIterator[Event]:
        """Events under ``prefix`` from ``start_revision`` until the stream breaks (``RegistryUnavailable``) or
        the revision is compacted (``Compacted``); ``created`` is called once etcd has accepted the watch."""


class Leases:
    """The lease operations every store on etcd offers its loops (machine presence, a watcher's owner key)."""

    client: Client

    async def grant_lease(self, ttl: int) -> int:
        return await self.client.grant(ttl)

    async def keepalive_lease(self, lease: int) -> int:
        """The lease's new TTL, 0 if it no longer exists."""
        return await self.client.keepalive(lease)

    async def lease_ttl(self, lease: int) -> int:
        return await self.client.lease_ttl(lease)

    async def revoke_lease(self, lease: int) -> None:
        await self.client.revoke(lease)
