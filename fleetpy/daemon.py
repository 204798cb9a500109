"""The composition root of a ``fleetpyd`` process: settings → adapters → components, and their lifetime.

Which components run: the API always; the agent (machine presence, unit reconciling, state reporting) unless
``disable_agent``; an engine candidate unless ``disable_engine``. They share one etcd client. Shutdown on
SIGTERM/SIGINT is graceful as in fleet: the agent stops and unloads its units, the machine leaves the cluster
(its key and states go at once, so the engine moves its units within one pass), the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import IO

from aiohttp import web

from fleetpy import __version__
from fleetpy.agent import Agent, Presence, local_machine
from fleetpy.api.app import ApiSettings, make_app
from fleetpy.bootstrap import submit_units
from fleetpy.cloudconfig import CloudUnit
from fleetpy.config import Settings
from fleetpy.engine import Engine
from fleetpy.errors import ConfigError
from fleetpy.inspector import Inspector
from fleetpy.keys import Keys
from fleetpy.machine import detect_public_ip, read_machine_id
from fleetpy.metrics import Metrics, new_metrics
from fleetpy.model import MachineID
from fleetpy.registry.etcd import EtcdClient
from fleetpy.registry.store import EtcdRegistry
from fleetpy.registry.watched import WatchedStore
from fleetpy.systemd.dbus import DbusSystemd
from fleetpy.systemd.unitdir import UnitDirectory
from fleetpy.watchdir import Watcher

log = logging.getLogger("fleetpy.daemon")


def setup_logging(verbosity: int) -> None:
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(
        level=logging.DEBUG if verbosity > 0 else logging.INFO, format=fmt, stream=sys.stderr, force=True
    )
    for noisy in ("aiohttp.access", "grpc", "asyncio", "watchfiles"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def runtime_directory(settings: Settings) -> str:
    if settings.runtime_directory:
        return settings.runtime_directory
    if settings.systemd_user:
        return os.path.join(os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}"), "fleetpy")
    return "/run/fleetpy"


def _lock(runtime: str) -> IO[str]:
    os.makedirs(runtime, exist_ok=True)
    handle = open(os.path.join(runtime, "fleetpyd.lock"), "a+")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        raise ConfigError(
            f"another fleetpyd is running with runtime directory {runtime} (pid {handle.read().strip() or '?'})"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def notify(message: str) -> None:
    """sd_notify(3): tell systemd about our state when it started us as ``Type=notify``."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
        sock.connect(address)
        sock.sendall(message.encode())


def listen_sockets() -> list[socket.socket]:
    """The listeners systemd passed by socket activation (sd_listen_fds(3)): fds 3, 4, ... when
    ``LISTEN_PID`` is ours. The variables are removed so that no child takes the sockets for its own."""
    count = os.environ.pop("LISTEN_FDS", "")
    pid = os.environ.pop("LISTEN_PID", "")
    os.environ.pop("LISTEN_FDNAMES", None)
    if not count.isdigit() or (pid and pid != str(os.getpid())):
        return []
    sockets = []
    for fd in range(3, 3 + int(count)):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets


async def start_api(
    registry: EtcdRegistry, settings: Settings, ready: Callable[[], bool], metrics: Metrics | None = None
) -> web.AppRunner:
    app = make_app(registry, ApiSettings(token_limit=settings.token_limit, ready=ready, metrics=metrics))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    inherited: set[object] = set()
    for sock in listen_sockets():
        # A listener systemd holds for us: serve it, and do not bind the same address a second time.
        address = sock.getsockname()
        inherited.add(address if isinstance(address, str) else (address[0], address[1]))
        await web.SockSite(runner, sock).start()
        log.info("API listening on %s (socket activation)", address)
    if settings.api_socket and settings.api_socket not in inherited:
        path = settings.api_socket
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        await web.UnixSite(runner, path).start()
        os.chmod(path, settings.api_socket_mode)
        log.info("API listening on unix://%s", path)
    for listen in settings.api_listen:
        host, _, port = listen.rpartition(":")
        if (host.strip("[]"), int(port)) in inherited:
            continue
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
        log.info("API listening on http://%s", listen)
    return runner


async def serve(settings: Settings, *, units: Sequence[CloudUnit] = ()) -> int:
    """Run fleetpyd until SIGTERM/SIGINT; the exit code. ``units`` (a cloud-config's) are submitted once the
    machine has joined."""
    runtime = runtime_directory(settings)
    lock = _lock(runtime) if not settings.disable_agent else None  # one agent per runtime directory
    metrics = new_metrics()
    client = EtcdClient(
        settings.etcd_servers,
        timeout=settings.etcd_request_timeout,
        username=settings.etcd_username,
        password=settings.etcd_password,
        metrics=metrics,
    )
    registry = EtcdRegistry(client, Keys(settings.etcd_key_prefix), metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: log.info("SIGHUP: configuration reload is not supported yet"))

    presence: Presence | None = None
    agent: Agent | None = None
    engine: Engine | None = None
    machine_id = ""
    if not settings.disable_agent or not settings.disable_engine:
        machine_id = settings.machine_id or read_machine_id(settings.machine_id_file)
    if not settings.disable_agent:
        public_ip = settings.public_ip or detect_public_ip()
        machine = local_machine(machine_id, public_ip, dict(settings.metadata))
        presence = Presence(registry, machine, ttl=settings.agent_ttl, lease_file=os.path.join(runtime, "lease"))
        units_dir = settings.units_directory or os.path.join(runtime, "units")
        agent = Agent(
            registry=registry,
            systemd=DbusSystemd(user=settings.systemd_user),
            unitdir=UnitDirectory(units_dir),
            presence=presence,
            interval=settings.agent_reconcile_interval,
            metrics=metrics,
        )
    if not settings.disable_engine:
        engine = Engine(
            registry=registry,
            machine=MachineID(machine_id),
            leader_ttl=settings.leader_ttl,
            interval=settings.engine_reconcile_interval,
            metrics=metrics,
        )

    watcher: Watcher | None = None
    if settings.watch_dir:
        watcher = Watcher(
            WatchedStore(client, registry.keys),
            settings.watch_dir,
            machine=machine_id or socket.gethostname(),
            ttl=settings.agent_ttl,
        )

    def ready() -> bool:
        return presence is None or presence.registered.is_set()

    runner = await start_api(registry, settings, ready, metrics)
    log.info(
        "fleetpyd %s starting (machine %s, etcd %s, prefix %s)",
        __version__,
        machine_id or "-",
        ",".join(settings.etcd_servers),
        registry.keys.prefix,
    )

    async def components() -> None:
        async with asyncio.TaskGroup() as group:
            if presence is not None and agent is not None:
                await presence.establish()
                notify("READY=1")
                group.create_task(presence.run())
                group.create_task(agent.run())
                inspector = Inspector(registry=registry, machine=presence.machine.id, user=settings.systemd_user)
                group.create_task(inspector.run())
            else:
                notify("READY=1")
            if engine is not None:
                group.create_task(engine.run())
            if watcher is not None:
                group.create_task(watcher.run())
            if units:
                group.create_task(submit_units(registry, units))
            if agent is None and engine is None and watcher is None:
                await stop.wait()  # API only: nothing else to run until we are told to stop

    main = asyncio.create_task(components())
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if main in done and not stop.is_set():
            main.result()  # a component ended on its own: a bug or a fatal error; let it surface
            return 1
        log.info("shutting down")
        notify("STOPPING=1")
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await main
        if watcher is not None:
            await watcher.close()
        if agent is not None and presence is not None:
            await agent.stop_all()
            await presence.leave()
        return 0
    finally:
        stopper.cancel()
        await runner.cleanup()
        await client.close()
        if lock is not None:
            lock.close()
