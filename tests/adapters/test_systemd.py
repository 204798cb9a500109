"""The D-Bus adapter against a real ``systemd --user`` in a sandbox host, and the agent's unit directory."""

from __future__ import annotations

import os
import uuid

import pytest

from fleetpy.devcluster import SandboxHost
from fleetpy.errors import InvalidUnit, SystemdError, SystemdUnavailable
from fleetpy.systemd.dbus import DbusSystemd, unescape_path
from fleetpy.systemd.unitdir import UnitDirectory
from fleetpy.unit import hash_text
from tests.support import systemd_at, wait_for

SLEEPER = "[Service]\nExecStart=/bin/sleep 1000\n"


def unique(prefix: str = "sd") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}.service"


@pytest.mark.parametrize(
    ("segment", "name"),
    [
        pytest.param("t1_2eservice", "t1.service", id="dots are escaped"),
        pytest.param("web_401_2eservice", "web@1.service", id="at signs are escaped"),
        pytest.param("a_2db_5fc_2eservice", "a-b_c.service", id="dashes and underscores are escaped"),
    ],
)
def test_bus_paths_unescape_to_unit_names(segment: str, name: str) -> None:
    assert unescape_path(segment) == name


async def test_link_reload_start_stop_and_disable_a_unit(host: SandboxHost, units_dir: str) -> None:
    name = unique()
    unitdir = UnitDirectory(units_dir)
    path = unitdir.write(name, SLEEPER)
    changes: list[str] = []
    async with systemd_at(host.bus) as systemd:
        systemd.on_change(changes.append)
        await systemd.link([path])
        await systemd.reload()
        assert (await systemd.statuses([name]))[name].load == "loaded"
        await systemd.start(name)

        async def running() -> bool:
            status = (await systemd.statuses([name]))[name]
            return (status.active, status.sub) == ("active", "running")

        await wait_for(running, timeout=10, what="the unit to run")
        assert await systemd.main_pid(name) > 0
        await wait_for(_async(lambda: name in changes), timeout=5, what="a PropertiesChanged signal for the unit")

        await systemd.stop(name)

        async def stopped() -> bool:
            return (await systemd.statuses([name]))[name].active == "inactive"

        await wait_for(stopped, timeout=10, what="the unit to stop")
        await systemd.disable([name])
        await systemd.reset_failed(name)
        unitdir.remove(name)
        await systemd.reload()
        assert (await systemd.statuses([name]))[name].load == "not-found"
        link = os.path.join(host.run_dir, "user", "0", "systemd", "user", name)
        assert not os.path.lexists(link)


def _async(predicate):  # type: ignore[no-untyped-def]
    async def probe() -> bool:
        return bool(predicate())

    return probe


async def test_an_install_section_is_enabled_at_runtime(host: SandboxHost, units_dir: str) -> None:
    name = unique("inst")
    path = UnitDirectory(units_dir).write(name, SLEEPER + "\n[Install]\nWantedBy=default.target\n")
    async with systemd_at(host.bus) as systemd:
        await systemd.link([path])
        await systemd.enable([path])
        await systemd.reload()
        wants = os.path.join(host.run_dir, "user", "0", "systemd", "user", "default.target.wants", name)
        assert os.path.lexists(wants)
        await systemd.disable([name])
        assert not os.path.lexists(wants)


async def test_unknown_units_are_reported_not_found_and_stopping_them_is_harmless(host: SandboxHost) -> None:
    async with systemd_at(host.bus) as systemd:
        name = unique("nope")
        assert (await systemd.statuses([name]))[name].load == "not-found"
        await systemd.stop(name)
        await systemd.reset_failed(name)
        with pytest.raises(SystemdError) as raised:
            await systemd.start(name)
        assert "NoSuchUnit" in raised.value.name or "not found" in str(raised.value)


async def test_an_unreachable_bus_is_a_transient_error(tmp_path) -> None:
    systemd = DbusSystemd(f"unix:path={tmp_path}/no-such-bus")
    with pytest.raises(SystemdUnavailable):
        await systemd.connect()
    with pytest.raises(SystemdUnavailable):
        await systemd.statuses(["x.service"])


def test_the_unit_directory_writes_atomically_and_lists_hashes(tmp_path) -> None:
    unitdir = UnitDirectory(str(tmp_path / "units"))
    unitdir.ensure()
    unitdir.write("a.service", SLEEPER)
    (tmp_path / "units" / ".a.service.partial").write_text("half")
    (tmp_path / "units" / "notes.txt").write_text("not a unit")
    assert unitdir.units() == {"a.service": hash_text(SLEEPER)}
    assert oct(os.stat(unitdir.path_of("a.service")).st_mode & 0o777) == "0o644"
    unitdir.remove("a.service")
    unitdir.remove("a.service")
    assert unitdir.units() == {}


@pytest.mark.parametrize("name", ["../x.service", "a/b.service", ".hidden", "x\0.service", ""])
def test_the_unit_directory_refuses_names_that_are_not_unit_names(tmp_path, name: str) -> None:
    with pytest.raises(InvalidUnit):
        UnitDirectory(str(tmp_path)).write(name, SLEEPER)
