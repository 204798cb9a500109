"""The composition root of a ``fleetpyd`` process: settings → adapters → components, and their lifetime.

Which components run: the API always; the agent (machine presence, unit reconciling, state reporting) unless
``disable_agent``; an engine candidate unless ``disable_engine``. They share one etcd client. Shutdown on
SIGTERM/SIGINT is graceful as in fleet: the agent stops and unloads its units, the machine leaves the cluster
(its key and states go at once, so the engine moves its units within one pass), the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import grp
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
from fleetpy.api.auth import ApiAuth
from fleetpy.bootstrap import submit_units
from fleetpy.cloudconfig import CloudUnit
from fleetpy.config import Settings, tcp_listener_problem
from fleetpy.engine import Engine
from fleetpy.errors import ConfigError, FleetError
from fleetpy.inspector import Inspector
from fleetpy.keys import Keys
from fleetpy.machine import detect_public_ip, read_machine_id
from fleetpy.metrics import Metrics, new_metrics
from fleetpy.model import MachineID
from fleetpy.registry.etcd import EtcdClient, EtcdTls
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


def _group_id(group: str) -> int | None:
    if not group:
        return None
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"api_socket_group {group!r}: no such group") from None


def bind_unix_socket(path: str, mode: int, group: str) -> socket.socket:
    """The API's unix socket, bound under a umask that lets nobody else in, then given its mode and group: there
    is no moment at which it is more open than configured."""
    gid = _group_id(group)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(previous)
    os.chmod(path, mode)
    if gid is not None:
        os.chown(path, -1, gid)
    return sock


def api_auth(settings: Settings) -> ApiAuth:
    return ApiAuth.from_files(
        cert_file=settings.api_tls_cert_file,
        key_file=settings.api_tls_key_file,
        client_ca_file=settings.api_tls_client_ca_file,
        tokens_file=settings.api_tokens_file,
    )


async def start_api(
    registry: EtcdRegistry,
    settings: Settings,
    ready: Callable[[], bool],
    metrics: Metrics | None = None,
    auth: ApiAuth | None = None,
) -> web.AppRunner:
    auth = auth or api_auth(settings)
    app = make_app(registry, ApiSettings(token_limit=settings.token_limit, ready=ready, metrics=metrics, auth=auth))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    inherited: set[object] = set()
    for sock in listen_sockets():
        # A listener systemd holds for us: serve it, and do not bind the same address a second time.
        address = sock.getsockname()
        inherited.add(address if isinstance(address, str) else (address[0], address[1]))
        tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        if tcp:
            problem = tcp_listener_problem(settings, address[0], tls=auth.tls is not None)
            if problem:
                raise ConfigError(f"the socket-activated listener {address[0]}:{address[1]} {problem}")
        await web.SockSite(runner, sock, ssl_context=auth.tls if tcp else None).start()
        log.info("API listening on %s (socket activation)", address)
    if settings.api_socket and settings.api_socket not in inherited:
        path = settings.api_socket
        sock = bind_unix_socket(path, settings.api_socket_mode, settings.api_socket_group)
        await web.SockSite(runner, sock).start()
        log.info("API listening on unix://%s (mode %o)", path, settings.api_socket_mode)
    for listen in settings.api_listen:
        host, _, port = listen.rpartition(":")
        if (host.strip("[]"), int(port)) in inherited:
            continue
        await web.TCPSite(runner, host.strip("[]"), int(port), ssl_context=auth.tls).start()
        log.info("API listening on %s://%s", "https" if auth.tls else "http", listen)
    return runner


async def serve(
    settings: Settings, *, units: Sequence[CloudUnit] = (), reload: Callable[[], Settings] | None = None
) -> int:
    """Run fleetpyd until SIGTERM/SIGINT; the exit code. ``units`` (a cloud-config's) are submitted once the
    machine has joined. ``reload`` reads the configuration again (config file, environment, flags) on SIGHUP."""
    runtime = runtime_directory(settings)
    lock = _lock(runtime) if not settings.disable_agent else None  # one agent per runtime directory
    metrics = new_metrics()
    client = EtcdClient(
        settings.etcd_servers,
        timeout=settings.etcd_request_timeout,
        username=settings.etcd_username,
        password=settings.etcd_password,
        tls=EtcdTls(settings.etcd_cafile, settings.etcd_certfile, settings.etcd_keyfile),
        metrics=metrics,
    )
    registry = EtcdRegistry(client, Keys(settings.etcd_key_prefix), metrics)
    stop = asyncio.Event()
    hangup = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hangup.set)

    presence: Presence | None = None
    agent: Agent | None = None
    engine: Engine | None = None
    machine_id = ""
    if not settings.disable_agent or not settings.disable_engine:
        machine_id = settings.machine_id or read_machine_id(settings.machine_id_file)
    if not settings.disable_agent:
        public_ip = settings.public_ip or detect_public_ip()
        machine = local_machine(
            machine_id,
            public_ip,
            dict(settings.metadata),
            unit_allow=settings.unit_allow,
            unit_deny=settings.unit_deny,
        )
        presence = Presence(registry, machine, ttl=settings.agent_ttl, lease_file=os.path.join(runtime, "lease"))
        units_dir = settings.units_directory or os.path.join(runtime, "units")
        agent = Agent(
            registry=registry,
            systemd=DbusSystemd(user=settings.systemd_user),
            unitdir=UnitDirectory(units_dir),
            presence=presence,
            interval=settings.agent_reconcile_interval,
            metrics=metrics,
            unit_allow=settings.unit_allow,
            unit_deny=settings.unit_deny,
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

    auth = api_auth(settings)
    runner = await start_api(registry, settings, ready, metrics, auth)
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
                inspector = Inspector(
                    registry=registry, machine=presence.machine.id, user=settings.systemd_user, owns=agent.owns
                )
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

    async def reloader() -> None:
        nonlocal settings
        while True:
            await hangup.wait()
            hangup.clear()
            if reload is None:
                log.info("SIGHUP: no configuration to read again")
                continue
            settings = await reconfigure(settings, reload, auth=auth, presence=presence, agent=agent)

    main = asyncio.create_task(components())
    stopper = asyncio.create_task(stop.wait())
    reloading = asyncio.create_task(reloader())
    try:
        done, _ = await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if main in done and not stop.is_set():
            try:
                main.result()  # a component ended on its own: a bug or a fatal error; let it surface
            except BaseExceptionGroup as group:
                raise _single_fleet_error(group) from group
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
        reloading.cancel()
        await runner.cleanup()
        await client.close()
        if lock is not None:
            lock.close()


def _single_fleet_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The fleetpy error that ended a component (such as ``MachineInUse``), to be reported as it is; the group
    itself when it holds anything else."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(group)
    return leaves[0] if len(leaves) == 1 and isinstance(leaves[0], FleetError) else group


# Options SIGHUP applies while everything keeps running; any other change is logged as needing a restart.
RELOADABLE = frozenset(
    {
        "verbosity",
        "metadata",
        "public_ip",
        "unit_allow",
        "unit_deny",
        "api_tokens_file",
        "api_tls_cert_file",
        "api_tls_key_file",
        "api_tls_client_ca_file",
    }
)


async def reconfigure(
    current: Settings,
    reload: Callable[[], Settings],
    *,
    auth: ApiAuth,
    presence: Presence | None,
    agent: Agent | None,
) -> Settings:
    """SIGHUP: read the configuration again and apply what can change at run time, without closing a listener
    or touching a unit. A configuration that cannot be read leaves everything as it was. Returns the settings
    now in force."""
    log.info("SIGHUP: reloading configuration")
    try:
        fresh = reload()
        # the TLS files and tokens are read again even when their paths did not change (a renewed certificate)
        auth.load(
            cert_file=fresh.api_tls_cert_file,
            key_file=fresh.api_tls_key_file,
            client_ca_file=fresh.api_tls_client_ca_file,
            tokens_file=fresh.api_tokens_file,
        )
    except (FleetError, ValueError, OSError) as exc:
        log.error("SIGHUP: the configuration was not reloaded, the previous one stays in force: %s", exc)
        return current
    changed = sorted(f.name for f in dataclasses.fields(Settings) if getattr(fresh, f.name) != getattr(current, f.name))
    # A listener speaks TLS, and asks for client certificates, or not, from its start: turning either on
    # takes a restart. New files for what is on, or a client CA taken away, apply at once.
    fixed = {
        "api_tls_cert_file": bool(fresh.api_tls_cert_file) != bool(current.api_tls_cert_file),
        "api_tls_key_file": bool(fresh.api_tls_key_file) != bool(current.api_tls_key_file),
        "api_tls_client_ca_file": bool(fresh.api_tls_client_ca_file) and not current.api_tls_client_ca_file,
    }
    later = [name for name in changed if name not in RELOADABLE or fixed.get(name)]
    applied = [name for name in changed if name not in later]
    if "verbosity" in applied:
        logging.getLogger().setLevel(logging.DEBUG if fresh.verbosity > 0 else logging.INFO)
    if presence is not None and ("metadata" in applied or "public_ip" in applied):
        public_ip = fresh.public_ip or presence.machine.public_ip
        await presence.update(dataclasses.replace(presence.machine, metadata=dict(fresh.metadata), public_ip=public_ip))
    if agent is not None and ("unit_allow" in applied or "unit_deny" in applied):
        await agent.set_policy(fresh.unit_allow, fresh.unit_deny)
    log.info(
        "SIGHUP: configuration reloaded; applied: %s; TLS files and tokens read again",
        ", ".join(applied) or "nothing changed",
    )
    if later:
        log.warning("SIGHUP: these changes take effect only after a restart: %s", ", ".join(later))
    # What is in force: the reloadable options from the new configuration, the rest as the daemon started.
    return dataclasses.replace(current, **{name: getattr(fresh, name) for name in applied})
