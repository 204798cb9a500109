"""fleetctl's commands and flags, byte for byte, against a real cluster (FLEET-SPEC §1; issue 4's golden tests).

One three-machine ``fleetpyd dev`` cluster for the whole module; every claim that a unit runs (or not) is checked
through the host's own systemd. Expected tables are built with ``cli.output.tabwrite``, which
``tests/unit/test_cli_output.py`` checks against Go's tabwriter.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from fleetpy.cli.output import tabwrite
from fleetpy.keys import Keys
from fleetpy.unit import UnitFile
from tests.support import ROOT, Cluster, Machine, main_pid, unit_status, wait_for, write_unit

LOOP = (
    "[Unit]\nDescription={desc}\n\n[Service]\n"
    'ExecStart=/bin/sh -c "while true; do echo {word} $$(date +%%s%%N); sleep {pause}; done"\n'
)
GLOBAL = LOOP + "\n[X-Fleet]\nGlobal=true\n"


def table(*rows: list[str]) -> str:
    return tabwrite([list(r) for r in rows])


def legend(machine: Machine, full: bool = False) -> str:
    return f"{machine.id if full else machine.id[:8] + '...'}/{machine.public_ip}"


def unit_file(path: str, name: str, desc: str, word: str, pause: str = "1", text: str = LOOP) -> str:
    return write_unit(path, name, text.format(desc=desc, word=word, pause=pause))


async def placed_on(cluster: Cluster, name: str) -> Machine:
    async def probe() -> str:
        for line in cluster.ctl("list-unit-files", "--full", "--no-legend", "--fields", "unit,target").out.splitlines():
            unit, _, target = line.partition("\t")
            if unit.strip() == name and target.strip() not in ("-", "global"):
                return target.strip().split("/")[0]
        return ""

    return cluster.machine(await wait_for(probe, timeout=30, what=f"{name} to be placed"))


def ctl_env(cluster: Cluster, **extra: str) -> dict[str, str]:
    return {**os.environ, "FLEETPYCTL_ENDPOINT": cluster.endpoint, **extra}


# -------------------------------------------------------------------------------------------- list-machines


async def test_list_machines_with_every_flag(cluster: Cluster) -> None:
    machines = sorted(cluster.machines, key=lambda m: m.id)
    short = [[m.id[:8] + "...", m.public_ip, "-"] for m in machines]
    full = [[m.id, m.public_ip, "-"] for m in machines]
    header = ["MACHINE", "IP", "METADATA"]
    assert cluster.ctl("list-machines").out == table(header, *short)
    for flag in ("--full", "-l", "--l"):
        result = cluster.ctl("list-machines", flag)
        assert (result.code, result.out, result.err) == (0, table(header, *full), "")
    assert cluster.ctl("list-machines", "--no-legend").out == table(*short)
    assert cluster.ctl("list-m", "--fields", "ip,machine").out == table(
        ["IP", "MACHINE"], *[[r[1], r[0]] for r in short]
    )
    as_json = json.loads(cluster.ctl("list-machines", "-o", "json").out)
    assert as_json == [{"machine": m.id, "ip": m.public_ip, "metadata": {}} for m in machines]
    empty = cluster.ctl("list-machines", "--fields", "")
    assert (empty.code, empty.out, empty.err) == (1, "", "Must define output format\n")
    bad = cluster.ctl("list-machines", "--fields", "machine,foo")
    assert (bad.code, bad.out, bad.err) == (1, "", 'Invalid key in output format: "foo"\n')


# -------------------------------------------------------------------------------------------- one unit's life


async def test_a_units_life_line_by_line(cluster: Cluster, tmp_path) -> None:
    path = unit_file(str(tmp_path), "golden.service", "golden", "golden")
    with open(path) as handle:
        text = handle.read()
    unit_hash = UnitFile.from_text(text).hash

    result = cluster.ctl("submit", path)
    assert (result.code, result.out, result.err) == (0, "Unit golden.service inactive\n", "")
    assert cluster.ctl("submit", path).out == ""  # idempotent, silent
    assert cluster.ctl("cat", "golden").out == text

    result = cluster.ctl("load", "golden")
    machine = await placed_on(cluster, "golden.service")
    where = legend(machine)
    assert (result.code, result.out, result.err) == (0, f"Unit golden.service loaded on {where}\n", "")
    assert (await unit_status(machine.bus, "golden.service"))[:2] == ("loaded", "inactive")

    result = cluster.ctl("start", "golden.service")
    assert (result.code, result.out, result.err) == (0, f"Unit golden.service launched on {where}\n", "")
    assert await unit_status(machine.bus, "golden.service") == ("loaded", "active", "running")
    assert cluster.ctl("start", "golden").out == ""  # already launched: skipped silently

    listing = cluster.ctl("list-unit-files", "--fields", "unit,hash,dstate,state,target,desc,global").out
    assert f"golden.service\t{unit_hash[:7]}\tlaunched\tlaunched\t{where}\tgolden\t" in listing
    files = json.loads(cluster.ctl("list-unit-files", "-o", "json").out)
    assert {"unit": "golden.service", "hash": unit_hash, "dstate": "launched", "state": "launched"}.items() <= next(
        f for f in files if f["unit"] == "golden.service"
    ).items()
    assert next(f for f in files if f["unit"] == "golden.service")["target"] == machine.id
    units = cluster.ctl("list-units", "--full", "--fields", "unit,machine,load,active,sub,hash").out
    assert f"golden.service\t{legend(machine, full=True)}\tloaded\tactive\trunning\t{unit_hash}\n" in units
    units_json = json.loads(cluster.ctl("list-units", "-o", "json").out)
    assert {"unit": "golden.service", "machine": machine.id, "active": "active", "sub": "running"} in units_json

    # status: systemctl status from the host's own systemd, no SSH
    status = cluster.ctl("status", "golden")
    assert status.code == 0, status
    assert status.out.startswith("● golden.service - golden\n")
    assert "Active: active (running)" in status.out
    assert f"Main PID: {await main_pid(machine.bus, 'golden.service')} (sh)" in status.out

    # journal: the last N lines
    async def two_lines() -> list[str]:
        lines = cluster.ctl("journal", "--lines", "2", "golden").out.splitlines()
        return lines if len(lines) == 2 and all("golden" in line for line in lines) else []

    await wait_for(two_lines, timeout=15, what="two journal lines")

    # restart really stops and starts: a new main process
    before = await main_pid(machine.bus, "golden.service")
    result = cluster.ctl("restart", "golden")
    assert (result.code, result.out, result.err) == (
        0,
        f"Unit golden.service loaded on {where}\nUnit golden.service launched on {where}\n",
        "",
    )
    after = await main_pid(machine.bus, "golden.service")
    assert after not in (0, before)

    result = cluster.ctl("stop", "golden")
    assert (result.code, result.out, result.err) == (
        0,
        f"Unit golden.service loaded on {where}\n",
        "Successfully stopped units [golden.service].\n",
    )
    assert (await unit_status(machine.bus, "golden.service"))[1:] == ("inactive", "dead")
    stopped = cluster.ctl("status", "golden")
    assert stopped.code == 3  # systemctl's own exit code for an inactive unit
    assert "Active: inactive (dead)" in stopped.out
    again = cluster.ctl("stop", "golden")
    assert (again.code, again.out, again.err) == (0, "", "Successfully stopped units [].\n")

    result = cluster.ctl("unload", "golden")
    assert (result.code, result.out, result.err) == (
        0,
        "Unit golden.service inactive\n",
        "Successfully unloaded units [golden.service].\n",
    )
    assert (await unit_status(machine.bus, "golden.service"))[0] == "not-found"
    for args, message in [
        (("status", "golden"), "Unit golden.service does not appear to be loaded.\n"),
        (("journal", "golden"), "Unit golden.service does not appear to be running.\n"),
        (("stop", "golden"), "Unable to stop unit golden.service in state inactive\n"),
        (("restart", "golden"), "Unable to restart unit golden.service in state inactive\n"),
    ]:
        result = cluster.ctl(*args)
        expected_code = 0 if args[0] == "restart" else 1
        assert (result.code, result.out, result.err) == (expected_code, "", message), args

    # --no-block: one Triggered line (fleetctl printed two)
    result = cluster.ctl("start", "--no-block", "golden")
    assert (result.code, result.out, result.err) == (0, "Triggered unit golden.service start\n", "")

    async def running_again() -> bool:
        states = [await unit_status(m.bus, "golden.service") for m in cluster.machines]
        return ("loaded", "active", "running") in states

    await wait_for(running_again, timeout=30, what="golden.service to run again")
    result = cluster.ctl("destroy", "golden")
    assert (result.code, result.out, result.err) == (0, "Destroyed golden.service\n", "")
    result = cluster.ctl("destroy", "golden")
    assert (result.code, result.out, result.err) == (0, "", "Units not found in registry\n")


async def test_errors_and_their_exit_codes(cluster: Cluster, tmp_path) -> None:
    cases = [
        (("cat",), 1, "One unit file must be provided\n"),
        (("cat", "missing"), 1, "Unit missing.service not found\n"),
        (("status", "missing"), 1, "Unit missing.service does not exist.\n"),
        (("journal",), 1, "One unit file must be provided.\n"),
        (("journal", "missing"), 1, "Unit missing.service does not exist.\n"),
        (
            ("start", "nothere"),
            1,
            "Error creating units: unable to find Unit(nothere.service) in Registry or on filesystem\n",
        ),
        (("start",), 1, "No units given\n"),
        (("stop", "missing"), 0, "Units not found in registry\n"),
        (("--driver", "etcd", "list-units"), 2, None),
    ]
    for args, code, err in cases:
        result = cluster.ctl(*args)
        assert result.code == code, (args, result)
        assert result.out == "", (args, result)
        if err is not None:
            assert result.err == err, (args, result)
    for args in (("foo",), ("list-units", "--bogus"), ("list-u",)):
        result = cluster.ctl(*args)
        assert result.code == 2, (args, result)  # fleetctl exited 0 (FLEET-SPEC §9.1)
        assert result.err.startswith("Usage: fleetpyctl") or "Error:" in result.err

    # --block-attempts bounds the wait for a unit that cannot be placed: about 2 s per attempt
    path = write_unit(
        str(tmp_path), "nowhere.service", "[Service]\nExecStart=/bin/sleep 100\n\n[X-Fleet]\nMachineID=0123\n"
    )
    started = time.monotonic()
    result = cluster.ctl("start", "--block-attempts", "1", path)
    elapsed = time.monotonic() - started
    assert (result.code, result.out) == (1, "Unit nowhere.service inactive\n")
    assert result.err == (
        "Error waiting for units: timed out waiting for unit nowhere.service to report state launched\n"
        "Error waiting for unit states, exit status: 1\n"
    )
    assert 2 <= elapsed < 15
    cluster.ctl("destroy", "nowhere", check=True)

    # start honours --block-attempts in its systemd check too: a unit that never becomes active. One that
    # Restart= tries again is activating/auto-restart between tries, which is not final: the wait runs its 4 s.
    restarting = write_unit(
        str(tmp_path),
        "restarting.service",
        "[Service]\nType=oneshot\nExecStart=/bin/false\nRestart=on-failure\nRestartSec=60\n",
    )
    started = time.monotonic()
    result = cluster.ctl("start", "--block-attempts", "2", restarting)
    elapsed = time.monotonic() - started
    assert result.code == 1
    assert (
        "Error waiting for units: Failed to find an active unit restarting.service within 4s, "
        "err: last state loaded/activating/auto-restart\n"
    ) in result.err
    assert "Error waiting for systemd unit states, err: unit restarting.service is not active" in result.err
    assert 4 <= elapsed < 20, elapsed
    cluster.ctl("destroy", "restarting", check=True)


async def test_start_ends_with_the_failure_when_systemd_reports_the_unit_failed(cluster: Cluster, tmp_path) -> None:
    """With the default --block-attempts (wait forever) a unit that fails in systemd used to keep ``start``
    waiting for ever; ``failed`` is final, so the command ends and says where the unit failed. The subprocess
    timeout makes a hang fail the test."""
    failing = write_unit(str(tmp_path), "failing.service", "[Service]\nExecStart=/bin/false\n")
    result = cluster.ctl("start", failing, timeout=30)
    machine = await placed_on(cluster, "failing.service")
    assert (result.code, result.out) == (
        1,
        f"Unit failing.service inactive\nUnit failing.service launched on {legend(machine)}\n",
    )
    assert result.err == (
        f"Error waiting for units: Unit failing.service failed on {legend(machine)}: active state failed "
        "(sub failed)\n"
        "Error waiting for systemd unit states, err: unit failing.service failed\n"
    )
    assert await unit_status(machine.bus, "failing.service") == ("loaded", "failed", "failed")
    cluster.ctl("destroy", "failing", check=True)


async def test_a_unit_that_failed_before_is_waited_for_when_started_again(cluster: Cluster, tmp_path) -> None:
    """A unit keeps systemd's ``failed`` until its next start job runs. Here that job waits three seconds behind
    a oneshot it is ordered after, so the machine reports the unit launched while systemd still says ``failed``
    from the last run, unless the agent clears that before starting it: ``start`` must wait, not report the old
    failure."""
    ready = tmp_path / "ready"
    first = cluster.machines[0]
    pin = f"\n[X-Fleet]\nMachineID={first.id}\n"
    gate = write_unit(str(tmp_path), "gate.service", f"[Service]\nType=oneshot\nExecStart=/bin/sleep 3\n{pin}")
    flaky = write_unit(
        str(tmp_path),
        "flaky.service",
        "[Unit]\nWants=gate.service\nAfter=gate.service\n\n"
        f"[Service]\nExecStart=/bin/sh -c 'test -e {ready} && exec sleep 600'\n{pin}",
    )
    cluster.ctl("load", gate, check=True)
    assert cluster.ctl("start", flaky, timeout=60).code == 1
    assert await unit_status(first.bus, "flaky.service") == ("loaded", "failed", "failed")
    cluster.ctl("stop", "flaky", check=True)
    assert await unit_status(first.bus, "flaky.service") == ("loaded", "failed", "failed"), "stop cleared it"

    ready.touch()
    result = cluster.ctl("start", "flaky", timeout=60)
    assert (result.code, result.err) == (0, ""), result
    assert result.out == f"Unit flaky.service launched on {legend(first)}\n"
    assert await unit_status(first.bus, "flaky.service") == ("loaded", "active", "running")
    cluster.ctl("destroy", "flaky", "gate", check=True)


# -------------------------------------------------------------------------------------------- journal -f


async def test_journal_follow_sees_new_lines_arrive_and_stops_on_the_host_when_the_client_goes(
    cluster: Cluster, tmp_path
) -> None:
    path = unit_file(str(tmp_path), "ticker.service", "ticks", "tick")
    cluster.ctl("start", path, check=True)
    machine = await placed_on(cluster, "ticker.service")
    follower = subprocess.Popen(
        [sys.executable, "-m", "fleetpy.cli.fleetpyctl", "journal", "-f", "--lines", "1", "ticker"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ctl_env(cluster),
        cwd=ROOT,
    )
    try:
        seen: list[tuple[float, str]] = []
        deadline = time.monotonic() + 30
        while len(seen) < 4 and time.monotonic() < deadline:
            line = await asyncio.to_thread(follower.stdout.readline)  # type: ignore[union-attr]
            if not line:
                break
            seen.append((time.monotonic(), line.rstrip("\n")))
        assert len(seen) == 4, (seen, follower.poll())
        assert all(" tick " in line for _, line in seen)
        stamps = [int(line.rsplit(" ", 1)[1]) for _, line in seen]
        assert stamps == sorted(stamps)
        assert len(set(stamps)) == 4
        assert seen[-1][0] - seen[1][0] >= 1.0, "later lines arrive as they are written, about one a second"
    finally:
        follower.send_signal(signal.SIGINT)
        code = follower.wait(15)
    assert code == 130

    client = cluster.registry_client()
    try:

        async def relay_keys_gone() -> bool:
            keys = Keys(cluster.prefix)
            _, requests = await client.get_prefix(keys.requests_all)
            _, replies = await client.get_prefix(f"{keys.prefix}/replies/")
            return not requests and not replies

        await wait_for(relay_keys_gone, timeout=20, what="the request and its replies to leave etcd")
    finally:
        await client.close()

    def journalctl_in_host() -> bool:
        with open(os.path.join(machine.cgroup, "cgroup.procs")) as handle:
            pids = handle.read().split()
        for pid in pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    if handle.read().startswith(b"journalctl"):
                        return True
            except OSError:
                continue
        return False

    async def stopped() -> bool:
        return not journalctl_in_host()

    await wait_for(stopped, timeout=20, what="journalctl --follow to stop on the host")
    cluster.ctl("destroy", "ticker", check=True)


# -------------------------------------------------------------------------------------------- global units


async def test_a_global_unit_everywhere_status_journal_and_a_rolling_restart(cluster: Cluster, tmp_path) -> None:
    path = unit_file(str(tmp_path), "everywhere.service", "everywhere", "everywhere", text=GLOBAL)
    result = cluster.ctl("start", path)
    assert (result.code, result.out, result.err) == (
        0,
        "Unit everywhere.service\nTriggered global unit everywhere.service start\n",
        "",
    )
    machines = sorted(cluster.machines, key=lambda m: m.id)

    async def everywhere() -> bool:
        states = [await unit_status(m.bus, "everywhere.service") for m in machines]
        listed = cluster.ctl("list-units", "--no-legend", "--fields", "unit").out.count("everywhere.service")
        return all(state[1:] == ("active", "running") for state in states) and listed == 3

    await wait_for(everywhere, timeout=30, what="the global unit on every machine")
    files = cluster.ctl("list-unit-files", "--no-legend", "--fields", "unit,dstate,state,target").out
    assert ["everywhere.service", "launched", "-", "global"] in [line.split() for line in files.splitlines()]

    status = cluster.ctl("status", "everywhere")
    assert status.code == 0, status
    headers = [line for line in status.out.splitlines() if line.startswith("-- everywhere.service on ")]
    assert headers == [f"-- everywhere.service on {legend(m)} --" for m in machines]
    assert status.out.count("Active: active (running)") == 3

    async def journals() -> bool:
        out = cluster.ctl("journal", "--lines", "1", "everywhere").out
        return (
            all(f"-- everywhere.service on {legend(m)} --" in out for m in machines) and out.count(" everywhere ") == 3
        )

    await wait_for(journals, timeout=15, what="a journal line from every machine")

    before = {m.id: await main_pid(m.bus, "everywhere.service") for m in machines}
    result = cluster.ctl("restart", "everywhere")
    assert (result.code, result.err) == (0, "")
    assert result.out == "".join(f"Unit everywhere.service launched on {legend(m)}\n" for m in machines)
    for m in machines:
        pid = await main_pid(m.bus, "everywhere.service")
        assert pid not in (0, before[m.id]), m.name

    result = cluster.ctl("stop", "everywhere")
    assert (result.code, result.out) == (0, "Triggered global unit everywhere.service stop\n")
    cluster.ctl("destroy", "everywhere", check=True)


# -------------------------------------------------------------------------------------------- ssh


async def test_ssh_runs_the_system_client_with_an_argument_list(cluster: Cluster, tmp_path) -> None:
    """No sshd runs in sandbox hosts: a stand-in ``ssh`` first on PATH records the arguments it was given. With
    ``--tunnel`` the API is reached through it too: a session that runs ``fd-forward`` (the tunnel's) is logged
    and its remote command run here, on the tunnel host that this machine stands in for."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ssh"
    tunnel_log = tmp_path / "tunnel-sessions"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$*" in *" fd-forward "*)\n'
        f'  for a in "$@"; do printf "%s\\n" "$a"; done > {tunnel_log}\n'
        '  for last; do :; done; exec sh -c "$last";;\n'
        "esac\n"
        'for a in "$@"; do printf "%s\\n" "$a"; done\nexit 7\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = ctl_env(
        cluster,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        HOME=str(tmp_path),
        FLEETPYCTL_TUNNEL_COMMAND=f"{sys.executable} -m fleetpy.cli.fleetpyctl",
    )
    machine = sorted(cluster.machines, key=lambda m: m.id)[0]

    def ssh(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fleetpy.cli.fleetpyctl", *args],
            capture_output=True,
            text=True,
            env={**env, **(extra_env or {})},
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )

    known = f"UserKnownHostsFile={tmp_path}/.fleetctl/known_hosts"
    result = ssh("ssh", machine.id[:10], "echo", "-n", "a b")
    assert result.returncode == 7  # the remote command's exit code
    assert result.stdout.splitlines() == [
        "-l", "core", "-o", "ConnectTimeout=10", "-o", "StrictHostKeyChecking=yes", "-o", known,
        "--", machine.public_ip, "echo", "-n", "a b",
    ]  # fmt: skip
    result = ssh(
        "--ssh-username", "admin", "--tunnel", "bastion:2200", "--strict-host-key-checking=false", "ssh",
        "-A", "--ssh-port", "2222", "--machine", machine.id[:8], "--", "uptime",
    )  # fmt: skip
    assert result.stdout.splitlines() == [
        "-l", "admin", "-o", "ConnectTimeout=10", "-o", "StrictHostKeyChecking=no", "-o", known,
        "-p", "2222", "-A", "-J", "bastion:2200", "--", machine.public_ip, "uptime",
    ]  # fmt: skip
    socket_path = cluster.endpoint.removeprefix("unix://")
    assert tunnel_log.read_text().splitlines() == [
        "-l", "admin", "-o", "ConnectTimeout=10", "-o", "StrictHostKeyChecking=no", "-o", known, "-p", "2200",
        "-T", "-e", "none", "-a", "-x", "-o", "BatchMode=yes", "--", "bastion",
        f"{sys.executable} -m fleetpy.cli.fleetpyctl fd-forward {socket_path}",
    ]  # fmt: skip
    via_env = ssh("ssh", "--machine", machine.id, extra_env={"FLEETPYCTL_SSH_USERNAME": "envuser"})
    assert via_env.stdout.splitlines()[:2] == ["-l", "envuser"]

    path = unit_file(str(tmp_path), "sshtarget.service", "ssh target", "x", pause="5")
    cluster.ctl("start", path, check=True)
    target = await placed_on(cluster, "sshtarget.service")
    by_unit = ssh("ssh", "--unit", "sshtarget", "hostname")
    assert by_unit.stdout.splitlines()[-2:] == [target.public_ip, "hostname"]
    assert ssh("ssh", "sshtarget.service").stdout.splitlines()[-1] == target.public_ip

    for args, message in [
        (("ssh",), "Unable to proceed: one machine or unit must be provided\n"),
        (("ssh", "--machine", "x", "--unit", "y"), "Both machine and unit flags provided, please specify only one.\n"),
        (("ssh", "--machine", "zzzz"), "Unable to proceed: machine does not exist\n"),
        (("ssh", "--unit", "missing"), "Unable to proceed: unit does not exist\n"),
        (("ssh", "nothing-matches"), "Unable to proceed: could not find matching unit or machine\n"),
    ]:
        result = ssh(*args)
        assert (result.returncode, result.stdout, result.stderr) == (1, "", message), args
    no_client = ssh("ssh", machine.id, extra_env={"PATH": str(tmp_path / "empty")})
    assert no_client.returncode == 255
    assert no_client.stderr.startswith("Unable to SSH to remote host: cannot run ssh")
    cluster.ctl("destroy", "sshtarget", check=True)


# -------------------------------------------------------------------------------------------- metrics


async def _scrape(socket_path: str) -> dict[str, float]:
    """Every sample of a /metrics page: ``name{labels}`` → value."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket_path)) as session,
        session.get("http://fleetpyd/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def _total(samples: list[dict[str, float]], key: str) -> float:
    return sum(s.get(key, 0.0) for s in samples)


async def test_metrics_parse_and_their_counters_move_when_units_are_scheduled(cluster: Cluster, tmp_path) -> None:
    sockets = [os.path.join(m.dir, "run", "fleetpy", "fleetpy.sock") for m in cluster.machines]
    before = [await _scrape(s) for s in sockets]
    fleet_names = [
        "fleet_engine_leader_start_time{}",
        "fleet_engine_task_count_total{type=attemptscheduleunit}",
        "fleet_engine_reconcile_count_total{}",
        "fleet_engine_reconcile_duration_second_count{}",
        "fleet_registry_operation_count_total{type=get}",
        "fleetpy_reconcile_total{loop=agent}",
        "fleetpy_etcd_operations_total{op=transaction}",
    ]
    for name in fleet_names:
        assert any(name in s for s in before), name
    assert sum(1 for s in before if s.get("fleet_engine_leader_start_time{}", 0) > 0) == 1, "one leader"
    assert _total(before, "fleet_engine_leader_start_time{}") > time.time() - 3600  # set, not added up

    path = unit_file(str(tmp_path), "counted.service", "counted", "c", pause="5")
    cluster.ctl("start", path, check=True)
    machine = await placed_on(cluster, "counted.service")

    async def moved() -> list[dict[str, float]]:
        after = [await _scrape(s) for s in sockets]
        key = "fleet_engine_task_count_total{type=attemptscheduleunit}"
        ok = _total(after, key) > _total(before, key) and _total(after, "fleetpy_convergence_seconds_count{}") > _total(
            before, "fleetpy_convergence_seconds_count{}"
        )
        return after if ok else []

    after = await wait_for(moved, timeout=20, what="the scheduling counters to move")
    assert _total(after, "fleet_engine_reconcile_count_total{}") > _total(
        before, "fleet_engine_reconcile_count_total{}"
    )
    assert _total(after, "fleetpy_etcd_operations_total{op=transaction}") > _total(
        before, "fleetpy_etcd_operations_total{op=transaction}"
    )
    index = cluster.machines.index(machine)
    assert after[index]["fleetpy_convergence_seconds_count{}"] > before[index].get(
        "fleetpy_convergence_seconds_count{}", 0
    )

    supervisor = await _scrape(cluster.api_socket)
    assert supervisor["fleetpy_units{current=launched,desired=launched}"] >= 1
    cluster.ctl("destroy", "counted", check=True)


# ------------------------------------------------------------------------------ --no-block, --replace, templates


async def test_no_block_replace_and_instances_of_a_template(cluster: Cluster, tmp_path) -> None:
    template = unit_file(str(tmp_path), "web@.service", "web %i", "web", pause="5")
    result = cluster.ctl("start", os.path.join(str(tmp_path), "web@1.service"), os.path.join(str(tmp_path), "web@2"))
    assert result.code == 0, result
    first = await placed_on(cluster, "web@1.service")
    second = await placed_on(cluster, "web@2.service")
    lines = result.out.splitlines()
    assert lines[:2] == ["Unit web@1.service inactive", "Unit web@2.service inactive"]
    assert sorted(lines[2:]) == sorted(
        [f"Unit web@1.service launched on {legend(first)}", f"Unit web@2.service launched on {legend(second)}"]
    )
    assert (await unit_status(first.bus, "web@1.service"))[1:] == ("active", "running")
    assert cluster.ctl("cat", "web@1").out == cluster.ctl("cat", "web@2").out  # the template's own text
    template_listed = [
        line.split()
        for line in cluster.ctl("list-unit-files", "--no-legend", "--fields", "unit,dstate,target").out.splitlines()
    ]
    assert ["web@1.service", "launched", legend(first)] in template_listed

    for command, verb in (("stop", "stop"), ("unload", "unload"), ("load", "load")):
        result = cluster.ctl(command, "--no-block", "web@1.service")
        assert result.code == 0, (command, result)
        assert result.out == f"Triggered unit web@1.service {verb}\n", command
    assert (
        cluster.ctl("list-unit-files", "--no-legend", "--fields", "unit,dstate").out.count("web@1.service\tloaded") == 1
    )

    # --replace: a changed file replaces a running unit, which restarts with the new content where it runs
    with open(template) as handle:
        changed = handle.read().replace("web %i", "web two")
    path = write_unit(str(tmp_path), "web@2.service", changed)
    before = await main_pid(second.bus, "web@2.service")
    result = cluster.ctl("start", "--replace", path)
    assert result.code == 0, result
    assert result.out.startswith("Unit web@2.service inactive\n")
    moved_to = await placed_on(cluster, "web@2.service")
    assert result.out.endswith(f"Unit web@2.service launched on {legend(moved_to)}\n")
    assert "Description=web two" in cluster.ctl("cat", "web@2").out
    assert (await unit_status(moved_to.bus, "web@2.service"))[1:] == ("active", "running")
    assert await main_pid(moved_to.bus, "web@2.service") != before
    same = cluster.ctl("submit", "--replace", path)
    assert (same.code, same.out) == (0, "Found same Unit(web@2.service) in Registry, nothing to do\n")
    cluster.ctl("destroy", "web@1", "web@2", "web@", check=True)
