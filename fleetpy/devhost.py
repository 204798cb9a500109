"""The init process of one sandbox host (HARNESS.md, recipe A). Run as ``python -m fleetpy.devhost HOSTDIR``.

``devcluster.SandboxHost`` starts it as PID 1 of new PID, mount, cgroup and UTS namespaces, inside its own
cgroup2 group. Here it gives the host its own ``/run``, a cgroup2 mount rooted at the host's group (without it a
``systemd --user`` would rearrange the cgroups of the whole machine), its own ``/etc/machine-id`` and hostname,
then starts ``systemd --user`` and, once systemd's bus answers, the host's ``fleetpyd``. As init it reaps
orphans, restarts ``fleetpyd`` one second after it dies of a failure (as ``Restart=on-failure`` would), and on
SIGTERM stops ``fleetpyd`` and exits, which ends every process of the host.

Its configuration is ``HOSTDIR/host.json``: ``hostname``, ``env`` (extra environment), ``fleetpyd`` (the
command, or empty for a host with systemd only) and ``private_etc`` (an overlay on ``/etc`` whose changes stay
in the host, for a fleetpyd that writes files there, as ``--cloud-config`` does). While the file
``HOSTDIR/hold-fleetpyd`` exists, init does not start (or restart) ``fleetpyd``; once it is removed, a start that
is due happens. Tests use it to keep a killed daemon down (``SandboxHost.hold_fleetpyd``), as an administrator
would stop a service's restarts.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from fleetpy.errors import FleetError
from fleetpy.systemd.dbus import DbusSystemd

RUNTIME = "/run/user/0"
HOLD = "hold-fleetpyd"
JOURNALD = "/lib/systemd/systemd-journald"
JOURNAL_STDOUT = "/run/systemd/journal/stdout"
# Volatile storage only (in the host's own /run): the machine's /var/log/journal must never be written to.
JOURNALD_CONF = "[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\nForwardToSyslog=no\nForwardToWall=no\nReadKMsg=no\n"


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def _prepare(host_dir: str, config: dict[str, Any]) -> dict[str, str]:
    _mount("--bind", os.path.join(host_dir, "run"), "/run")
    _mount("-t", "cgroup2", "cgroup2", "/sys/fs/cgroup")
    if config.get("private_etc"):
        # upper and work directories on a tmpfs of the host's own, so this works whatever the state dir is on
        layer = os.path.join(host_dir, "etc-layer")
        os.makedirs(layer, exist_ok=True)
        _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", layer)
        for part in ("upper", "work"):
            os.makedirs(os.path.join(layer, part))
        options = f"lowerdir=/etc,upperdir={layer}/upper,workdir={layer}/work"
        _mount("-t", "overlay", "-o", options, "overlay", "/etc")
    _mount("--bind", os.path.join(host_dir, "machine-id"), "/etc/machine-id")
    subprocess.run(["hostname", config["hostname"]], check=True)
    _private_journal(host_dir)
    os.makedirs("/run/systemd/system", exist_ok=True)  # the marker that lets systemd --user start
    os.makedirs(RUNTIME, exist_ok=True)
    os.chmod(RUNTIME, 0o700)
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"),
        "HOME": os.path.join(host_dir, "home"),
        "XDG_CONFIG_HOME": os.path.join(host_dir, "home", ".config"),
        "XDG_RUNTIME_DIR": RUNTIME,
        "DBUS_SESSION_BUS_ADDRESS": f"unix:path={RUNTIME}/bus",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(config.get("env", {}))
    return env


def _private_journal(host_dir: str) -> None:
    """journald's configuration and persistent directory of this host only (see ``_start_journald``)."""
    journal = os.path.join(host_dir, "journal")
    os.makedirs(os.path.join(journal, "var"), exist_ok=True)
    conf = os.path.join(journal, "journald.conf")
    with open(conf, "w") as handle:
        handle.write(JOURNALD_CONF)
    if os.path.exists("/etc/systemd/journald.conf"):
        _mount("--bind", conf, "/etc/systemd/journald.conf")
    if os.path.isdir("/var/log/journal"):
        _mount("--bind", os.path.join(journal, "var"), "/var/log/journal")


def _start_journald(log: Any) -> subprocess.Popen[bytes] | None:
    """A systemd-journald of the host's own, so that unit output is kept and ``journalctl`` inside the host
    shows it (the sandbox host has no system manager that would start one). It binds its sockets under the
    host's own ``/run/systemd/journal`` and writes to ``/run/log/journal/<machine id>``. Started before
    ``systemd --user``, which connects its units' output to it. ``None`` if journald is not installed."""
    if not os.access(JOURNALD, os.X_OK):
        return None
    os.makedirs("/run/systemd/journal", exist_ok=True)
    journald = subprocess.Popen([JOURNALD], stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 10
    while not os.path.exists(JOURNAL_STDOUT) and journald.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return journald


async def _systemd_ready(deadline: float) -> None:
    while True:
        systemd = DbusSystemd(f"unix:path={RUNTIME}/bus")
        try:
            await systemd.connect()
            state = await systemd.manager_property("SystemState")
            if state in ("running", "degraded"):
                return
        except FleetError:
            pass
        finally:
            await systemd.close()
        if time.monotonic() > deadline:
            raise SystemExit("devhost: systemd --user did not come up within 30s")
        await asyncio.sleep(0.05)


def main(argv: list[str]) -> int:
    host_dir = os.path.abspath(argv[1])
    with open(os.path.join(host_dir, "host.json")) as handle:
        config = json.load(handle)
    env = _prepare(host_dir, config)
    log = open(os.path.join(host_dir, "host.log"), "ab", buffering=0)  # noqa: SIM115 - lives as long as init
    _start_journald(log)
    systemd = subprocess.Popen(["systemd", "--user"], env=env, stdout=log, stderr=log, start_new_session=True)
    asyncio.run(_systemd_ready(time.monotonic() + 30))
    command: list[str] = config.get("fleetpyd") or []
    daemon: subprocess.Popen[bytes] | None = None
    stopping = False
    due = bool(command)  # fleetpyd should be started (at restart_at, unless held)
    restart_at = 0.0
    hold = os.path.join(host_dir, HOLD)

    def start_daemon() -> subprocess.Popen[bytes]:
        out = open(os.path.join(host_dir, "fleetpyd.log"), "ab", buffering=0)  # noqa: SIM115
        try:
            return subprocess.Popen(command, env=env, stdout=out, stderr=out, start_new_session=True)
        finally:
            out.close()

    def on_term(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while True:
        # Reap every child (orphans of the host are re-parented to us).
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid == 0:
                break
            if daemon is not None and pid == daemon.pid:
                daemon.returncode = os.waitstatus_to_exitcode(status)
                failed = daemon.returncode != 0
                daemon = None
                if failed and not stopping:
                    due, restart_at = True, time.monotonic() + 1.0
            elif pid == systemd.pid:
                return 1  # without systemd the host is gone
        if stopping:
            if daemon is not None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    daemon.kill()
            return 0
        if daemon is None and due and time.monotonic() >= restart_at and not os.path.exists(hold):
            due = False
            daemon = start_daemon()
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
