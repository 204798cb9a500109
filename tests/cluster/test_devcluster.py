"""``fleetpyd dev`` itself: what it describes, that fleetpyctl needs no flags, and that nothing outlives it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support import ROOT, unit_status


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except OSError:
        return False


def _start_dev(state_dir: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "fleetpy.cli.fleetpyd", "dev", "--machines", "2", "--state-dir", state_dir, *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_description(process: subprocess.Popen[bytes], state_dir: str) -> dict:  # type: ignore[type-arg]
    path = os.path.join(state_dir, "cluster.json")
    deadline = time.monotonic() + 90
    while not os.path.exists(path):
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"fleetpyd dev exited {process.returncode}:\n{output}")
        assert time.monotonic() < deadline, "fleetpyd dev did not become ready"
        time.sleep(0.1)
    with open(path) as handle:
        return dict(json.load(handle))


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_dev_describes_the_cluster_serves_the_default_endpoint_and_leaves_nothing_behind(
    workdir: str, stop_signal: signal.Signals
) -> None:
    state_dir = os.path.join(workdir, f"dev-{stop_signal.name.lower()}")
    process = _start_dev(state_dir)  # the API on fleetpyctl's default endpoint
    try:
        cluster = _wait_description(process, state_dir)
        assert cluster["pid"] == process.pid
        assert cluster["api"] == "unix:///run/fleetpy/fleetpy.sock"
        assert len(cluster["etcd"]) == 1
        assert cluster["etcd"][0].startswith("http://127.0.0.1:")
        machines = cluster["machines"]
        assert len(machines) == 2
        for machine in machines:
            assert set(machine) >= {"id", "hostname", "public_ip", "pid", "host_pid", "bus"}
            assert _alive(machine["pid"])
            assert _alive(machine["host_pid"])
            with open(f"/proc/{machine['pid']}/cmdline", "rb") as handle:
                assert b"fleetpy.cli.fleetpyd" in handle.read()
            assert (await unit_status(machine["bus"], "default.target"))[1] == "active"

        env = {k: v for k, v in os.environ.items() if k != "FLEETPYCTL_ENDPOINT"}
        listing = subprocess.run(
            [sys.executable, "-m", "fleetpy.cli.fleetpyctl", "list-machines", "--full", "--no-legend"],
            capture_output=True, text=True, env=env, cwd=ROOT, check=False,
        )  # fmt: skip
        assert listing.returncode == 0, listing.stderr
        assert sorted(line.split("\t")[0] for line in listing.stdout.splitlines()) == sorted(m["id"] for m in machines)

        pids = [cluster["etcd_pid"]] + [m["pid"] for m in machines] + [m["host_pid"] for m in machines]
        cgroups = [m["cgroup"] for m in machines]
        process.send_signal(stop_signal)
        assert process.wait(60) == 0
        for pid in pids:
            assert not _alive(pid), f"pid {pid} outlived fleetpyd dev"
        for cgroup in cgroups:
            assert not os.path.exists(cgroup)
        assert not os.path.exists("/run/fleetpy/fleetpy.sock")
        assert not os.path.exists(os.path.join(state_dir, "cluster.json"))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_state_directory_under_run_is_refused_with_the_reason(workdir: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fleetpy.cli.fleetpyd", "dev", "--state-dir", "/run/fleetpy-dev-test",
         "--api-socket", os.path.join(workdir, "refused.sock")],
        capture_output=True, text=True, cwd=ROOT, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "is under /run" in result.stderr
