"""Stand-in for ``fleetpyd --disable-agent --disable-engine`` while that mode exits at once.

fleetpyd in API-only mode returns 1 right after it starts listening (its component group has nothing to run,
and ``daemon.serve`` takes that for a crashed component; ``test_daemon.py`` records it). Until that is fixed,
the CLI tests run fleetpyd's own API listener, ``daemon.start_api``, on fleetpyd's ``Settings``, in a process of
its own, until SIGTERM. Usage: ``python -m tests.cli.api_server SOCKET ETCD_ENDPOINT PREFIX``.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from fleetpy.config import Settings
from fleetpy.daemon import start_api
from fleetpy.keys import Keys
from fleetpy.registry.etcd import EtcdClient
from fleetpy.registry.store import EtcdRegistry


async def serve(socket: str, etcd: str, prefix: str) -> None:
    settings = Settings(
        etcd_servers=(etcd,), etcd_key_prefix=prefix, api_socket=socket, disable_agent=True, disable_engine=True
    )
    client = EtcdClient(settings.etcd_servers, timeout=settings.etcd_request_timeout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = await start_api(EtcdRegistry(client, Keys(prefix)), settings, ready=lambda: True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await client.close()


if __name__ == "__main__":
    asyncio.run(serve(*sys.argv[1:4]))
