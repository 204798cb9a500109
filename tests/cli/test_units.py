"""submit, cat, destroy, load, start, stop and unload (FLEET-SPEC §1.3, §1.4, §1.6) through a real API process.

Nothing places units here, so waits that need a machine are satisfied by writing what the engine and the
agent would write (``tests.api.seeding``) while fleetpyctl waits.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from fleetpy.model import DesiredState
from fleetpy.registry.store import EtcdRegistry
from fleetpy.unit import UnitFile
from tests.api.seeding import add_machine, place, report, unplace
from tests.cli.conftest import Ctl
from tests.support import wait_for, write_unit

M1 = "4d3895379ed84e6c9c4a2d5b9b6a1f01"
HELLO = "[Unit]\nDescription=Hello World\n\n[Service]\nExecStart=/bin/sleep 100\n"
# comments, blank lines, spacing and a repeated section all disappear in the canonical form (§2.6)
MESSY = (
    "# a comment\n[Unit]\nDescription = Hello World\n\n[Service]\n; another\nExecStart=/bin/sleep 100\n"
    "[Unit]\nAfter=network.target\n"
)
MESSY_CANONICAL = "[Unit]\nDescription=Hello World\nAfter=network.target\n\n[Service]\nExecStart=/bin/sleep 100\n"
OTHER = "[Service]\nExecStart=/bin/sleep 200\n"
GLOBAL = "[Service]\nExecStart=/bin/sleep 100\n\n[X-Fleet]\nGlobal=true\n"
TEMPLATE = "[Unit]\nDescription=Web %i\n\n[Service]\nExecStart=/bin/echo %i\n"


async def desired_of(registry: EtcdRegistry, name: str) -> str | None:
    view = await registry.get_unit(name)
    return view.record.desired.value if view is not None else None


# ---------------------------------------------------------------------------------------------- submit and cat


async def test_submit_creates_an_inactive_unit_and_cat_prints_its_canonical_text(
    ctl: Ctl, files: str, registry: EtcdRegistry
) -> None:
    path = write_unit(files, "hello.service", MESSY)
    result = await ctl("submit", path)
    assert (result.code, result.out, result.err) == (0, "Unit hello.service inactive\n", "")
    assert await desired_of(registry, "hello.service") == "inactive"
    cat = await ctl("cat", "hello.service")
    assert (cat.code, cat.out, cat.err) == (0, MESSY_CANONICAL, "")
    assert (await ctl("cat", "hello")).out == MESSY_CANONICAL  # mangled to hello.service


async def test_submitting_the_same_file_again_prints_nothing(ctl: Ctl, files: str, registry: EtcdRegistry) -> None:
    path = write_unit(files, "hello.service", HELLO)
    assert (await ctl("submit", path)).code == 0
    await ctl("start", "--no-block", "hello.service")
    again = await ctl("submit", path)
    assert (again.code, again.out, again.err) == (0, "", "")
    assert await desired_of(registry, "hello.service") == "launched"  # submit never changes the desired state


async def test_submitting_a_different_file_warns_and_keeps_the_cluster_unit(ctl: Ctl, files: str) -> None:
    path = write_unit(files, "hello.service", HELLO)
    assert (await ctl("submit", path)).code == 0
    write_unit(files, "hello.service", OTHER)
    result = await ctl("submit", path)
    assert (result.code, result.out) == (0, "")
    assert result.err == (
        f"WARNING: Unit hello.service in registry differs from local unit file {path}. Add --replace to override.\n"
    )
    assert (await ctl("cat", "hello.service")).out == HELLO


async def test_submit_replace_uploads_a_changed_file(ctl: Ctl, files: str) -> None:
    path = write_unit(files, "hello.service", HELLO)
    assert (await ctl("submit", path)).code == 0
    same = await ctl("submit", "--replace", path)
    assert (same.code, same.out, same.err) == (0, "Found same Unit(hello.service) in Registry, nothing to do\n", "")
    write_unit(files, "hello.service", OTHER)
    replaced = await ctl("submit", "--replace", path)
    assert (replaced.code, replaced.out, replaced.err) == (0, "Unit hello.service inactive\n", "")
    assert (await ctl("cat", "hello.service")).out == OTHER


async def test_submit_replace_refuses_a_launched_unit(ctl: Ctl, files: str) -> None:
    path = write_unit(files, "hello.service", HELLO)
    assert (await ctl("start", "--no-block", path)).code == 0
    write_unit(files, "hello.service", OTHER)
    result = await ctl("submit", "--replace", path)
    assert (result.code, result.out) == (0, "")
    assert result.err == (
        "Warning: can not replace Unit(hello.service) in state 'launched', use the appropriate command\n"
    )
    assert (await ctl("cat", "hello.service")).out == HELLO


async def test_submit_a_global_unit_prints_its_name_without_a_trailing_space(ctl: Ctl, files: str) -> None:
    result = await ctl("submit", write_unit(files, "g.service", GLOBAL))
    assert (result.code, result.out) == (0, "Unit g.service\n")  # fleetctl: "Unit g.service " (§9.6)


async def test_a_name_without_a_type_means_a_service(ctl: Ctl, files: str) -> None:
    write_unit(files, "hello.service", HELLO)
    result = await ctl("submit", os.path.join(files, "hello"))
    assert (result.code, result.out) == (0, "Unit hello.service inactive\n")
    assert (await ctl("cat", "hello.service")).out == HELLO


async def test_an_instance_is_created_from_the_local_template(ctl: Ctl, files: str) -> None:
    write_unit(files, "web@.service", TEMPLATE)
    result = await ctl("submit", os.path.join(files, "web@1.service"), os.path.join(files, "web@2"))
    assert (result.code, result.err) == (0, "")
    assert result.out == "Unit web@1.service inactive\nUnit web@2.service inactive\n"
    assert (await ctl("cat", "web@1.service")).out == TEMPLATE
    listed = await ctl("list-unit-files", "--no-legend", "--fields", "unit,hash")
    digest = UnitFile.from_text(TEMPLATE).hash[:7]
    assert listed.out == f"web@1.service\t{digest}\nweb@2.service\t{digest}\n"


async def test_an_instance_is_created_from_the_clusters_template(ctl: Ctl, files: str) -> None:
    assert (await ctl("submit", write_unit(files, "web@.service", TEMPLATE))).code == 0
    result = await ctl("submit", "web@a.service")
    assert (result.code, result.out) == (0, "Unit web@a.service inactive\n")
    assert (await ctl("cat", "web@a")).out == TEMPLATE


async def test_a_local_template_that_differs_from_the_clusters_instance_warns(ctl: Ctl, files: str) -> None:
    write_unit(files, "web@.service", TEMPLATE)
    instance = os.path.join(files, "web@1.service")
    assert (await ctl("submit", instance)).code == 0
    template = write_unit(files, "web@.service", OTHER)
    result = await ctl("submit", instance)
    assert (result.code, result.out) == (0, "")
    assert result.err == (
        f"WARNING: Unit web@1.service in registry differs from local template unit file {template}. "
        "Add --replace to override.\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["nothere"],
            "Error creating units: unable to find Unit(nothere.service) in Registry or on filesystem",
            id="no such file",
        ),
        pytest.param(
            ["nothere@1.service"],
            "Error creating units: failed getting Unit(nothere@1.service) from "
            "template: unable to find template Unit(nothere@.service) in Registry or on filesystem",
            id="no such template",
        ),
    ],
)
async def test_submitting_what_does_not_exist_fails(ctl: Ctl, args: list[str], message: str) -> None:
    result = await ctl("submit", *args)
    assert (result.code, result.out, result.err) == (1, "", message + "\n")


async def test_submitting_an_invalid_unit_fails_and_creates_nothing(ctl: Ctl, files: str) -> None:
    bad = write_unit(files, "bad.service", "[Service]\nExecStart=/x\n\n[X-Fleet]\nMachineID=a\nGlobal=true\n")
    result = await ctl("submit", bad)
    assert (result.code, result.out) == (1, "")
    assert result.err == "Error creating units: MachineID cannot be used with Global\n"
    assert (await ctl("list-unit-files", "--no-legend")).out == ""


@pytest.mark.parametrize("command", ["submit", "load", "start", "stop", "unload", "destroy"])
async def test_commands_without_units_fail(ctl: Ctl, command: str) -> None:
    result = await ctl(command)
    assert (result.code, result.out, result.err) == (1, "", "No units given\n")


@pytest.mark.parametrize("args", [[], ["a.service", "b.service"]], ids=["none", "two"])
async def test_cat_needs_exactly_one_unit(ctl: Ctl, args: list[str]) -> None:
    result = await ctl("cat", *args)
    assert (result.code, result.out, result.err) == (1, "", "One unit file must be provided\n")


async def test_cat_of_a_missing_unit_fails(ctl: Ctl) -> None:
    result = await ctl("cat", "missing")
    assert (result.code, result.out, result.err) == (1, "", "Unit missing.service not found\n")


async def test_cat_when_the_api_cannot_be_reached(ctl: Ctl, workdir: str) -> None:
    result = await ctl("cat", "hello", env={"FLEETPYCTL_ENDPOINT": f"unix://{workdir}/gone.sock"})
    assert (result.code, result.out) == (1, "")
    assert result.err == (
        f"Error retrieving Unit hello.service: cannot reach the fleetpy API at unix://{workdir}/gone.sock: "
        "No such file or directory\n"
    )


# ---------------------------------------------------------------------------------------------- destroy


async def test_destroy_removes_units_in_the_clusters_order(ctl: Ctl, files: str, registry: EtcdRegistry) -> None:
    for name in ("a.service", "b.service", "c.service"):
        assert (await ctl("submit", write_unit(files, name, HELLO))).code == 0
    result = await ctl("destroy", "c", "missing.service", "a.service", "c.service")
    assert (result.code, result.out, result.err) == (0, "Destroyed a.service\nDestroyed c.service\n", "")
    assert [v.record.name for v in await registry.list_units()] == ["b.service"]


async def test_destroying_only_missing_units_is_not_an_error(ctl: Ctl) -> None:
    result = await ctl("destroy", "missing.service", "other")
    assert (result.code, result.out, result.err) == (0, "", "Units not found in registry\n")


# ---------------------------------------------------------------------------------------------- load and start


async def test_start_no_block_triggers_once(ctl: Ctl, files: str, registry: EtcdRegistry) -> None:
    result = await ctl("start", "--no-block", write_unit(files, "hello.service", HELLO))
    assert (result.code, result.err) == (0, "")
    assert result.out == "Unit hello.service inactive\nTriggered unit hello.service start\n"  # fleetctl: twice
    assert await desired_of(registry, "hello.service") == "launched"
    again = await ctl("start", "--no-block", "hello.service")
    assert (again.code, again.out, again.err) == (0, "", "")  # already launched: nothing to do


@pytest.mark.parametrize(("command", "verb", "desired"), [("load", "load", "loaded"), ("start", "start", "launched")])
async def test_no_block_triggers_each_unit(
    ctl: Ctl, files: str, registry: EtcdRegistry, command: str, verb: str, desired: str
) -> None:
    for name in ("a.service", "b.service"):
        assert (await ctl("submit", write_unit(files, name, HELLO))).code == 0
    assert (await ctl("submit", write_unit(files, "g.service", GLOBAL))).code == 0
    result = await ctl(command, "--no-block", "b", "g", "a")
    assert (result.code, result.err) == (0, "")
    assert result.out == (
        f"Triggered global unit g.service {verb}\nTriggered unit b.service {verb}\nTriggered unit a.service {verb}\n"
    )
    for name in ("a.service", "b.service", "g.service"):
        assert await desired_of(registry, name) == desired


async def test_start_gives_up_after_its_block_attempts(ctl: Ctl, files: str, registry: EtcdRegistry) -> None:
    began = time.monotonic()
    result = await ctl("start", "--block-attempts", "1", write_unit(files, "hello.service", HELLO))
    took = time.monotonic() - began
    assert (result.code, result.out) == (1, "Unit hello.service inactive\n")
    assert result.err == (
        "Error waiting for units: timed out waiting for unit hello.service to report state launched\n"
        "Error waiting for unit states, exit status: 1\n"
    )
    assert 1.5 < took < 8, took  # one attempt is about 2 s
    assert await desired_of(registry, "hello.service") == "launched"


async def test_load_gives_up_after_its_block_attempts(ctl: Ctl, files: str) -> None:
    assert (await ctl("submit", write_unit(files, "hello.service", HELLO))).code == 0
    result = await ctl("load", "--block-attempts=1", "hello")
    assert (result.code, result.out) == (1, "")
    assert result.err == (
        "Error waiting for units: timed out waiting for unit hello.service to report state loaded\n"
        "Error waiting for unit states, exit status: 1\n"
    )


@pytest.mark.parametrize(
    ("command", "achieved", "line"),
    [
        ("start", DesiredState.LAUNCHED, "Unit hello.service launched on 4d389537.../10.0.0.1"),
        ("load", DesiredState.LOADED, "Unit hello.service loaded on 4d389537.../10.0.0.1"),
    ],
)
async def test_a_blocking_command_reports_where_the_unit_runs(
    ctl: Ctl, files: str, registry: EtcdRegistry, command: str, achieved: DesiredState, line: str
) -> None:
    assert (await ctl("submit", write_unit(files, "hello.service", HELLO))).code == 0
    await add_machine(registry, M1, "10.0.0.1")
    waiting = asyncio.create_task(ctl(command, "--block-attempts", "10", "hello.service"))
    # be the engine and the agent: once fleetpyctl has set the desired state, place the unit and report it
    target = "launched" if command == "start" else "loaded"
    await wait_for(lambda: _is(registry, "hello.service", target), timeout=10, what="the desired state")
    await place(registry, "hello.service", M1)
    await report(
        registry, M1, "hello.service", achieved=achieved, active="active" if command == "start" else "inactive"
    )
    result = await waiting
    assert (result.code, result.out, result.err) == (0, line + "\n", "")


async def test_start_waits_for_systemd_as_long_as_its_block_attempts(
    ctl: Ctl, files: str, registry: EtcdRegistry
) -> None:
    """A unit that Restart= will try again (activating/auto-restart between tries) is not final: waited for."""
    assert (await ctl("submit", write_unit(files, "hello.service", HELLO))).code == 0
    await add_machine(registry, M1, "10.0.0.1")
    await place(registry, "hello.service", M1)
    await report(registry, M1, "hello.service", achieved=DesiredState.LAUNCHED, active="activating", sub="auto-restart")
    began = time.monotonic()
    result = await ctl("start", "--block-attempts", "1", "hello.service")
    assert 1.5 < time.monotonic() - began < 8
    assert (result.code, result.out) == (1, "Unit hello.service launched on 4d389537.../10.0.0.1\n")
    assert result.err == (
        "Error waiting for units: Failed to find an active unit hello.service within 2s, err: last state "
        "loaded/activating/auto-restart\nError waiting for systemd unit states, err: unit hello.service is not "
        "active\n"
    )


async def test_start_ends_at_once_when_systemd_reports_the_unit_failed(
    ctl: Ctl, files: str, registry: EtcdRegistry
) -> None:
    """``failed`` is final: with the default block attempts (wait forever) the command still ends. A
    subprocess, whose timeout makes a hang fail the test."""
    assert (await ctl("submit", write_unit(files, "hello.service", HELLO))).code == 0
    await add_machine(registry, M1, "10.0.0.1")
    await place(registry, "hello.service", M1)
    await report(registry, M1, "hello.service", achieved=DesiredState.LAUNCHED, active="failed", sub="failed")
    result = await ctl.process("start", "hello.service")
    assert (result.code, result.out) == (1, "Unit hello.service launched on 4d389537.../10.0.0.1\n")
    assert result.err == (
        "Error waiting for units: Unit hello.service failed on 4d389537.../10.0.0.1: active state failed (sub "
        "failed)\nError waiting for systemd unit states, err: unit hello.service failed\n"
    )


async def _is(registry: EtcdRegistry, name: str, desired: str) -> bool:
    return await desired_of(registry, name) == desired


async def test_loading_a_template_is_refused_by_the_api(ctl: Ctl, files: str) -> None:
    result = await ctl("load", "--no-block", write_unit(files, "web@.service", TEMPLATE))
    assert (result.code, result.out) == (1, "Unit web@.service inactive\n")
    assert result.err == 'Error loading units: googleapi: Error 400: cannot activate template "web@.service"\n'


# ---------------------------------------------------------------------------------------------- stop and unload


@pytest.fixture
async def running(ctl: Ctl, files: str, registry: EtcdRegistry) -> None:
    """hello.service launched on M1 (placed and reported), and g.service, a global unit."""
    assert (await ctl("submit", write_unit(files, "hello.service", HELLO))).code == 0
    assert (await ctl("start", "--no-block", write_unit(files, "g.service", GLOBAL), "hello.service")).code == 0
    await add_machine(registry, M1, "10.0.0.1")
    await place(registry, "hello.service", M1)
    await report(registry, M1, "hello.service")
    await report(registry, M1, "g.service")


@pytest.mark.usefixtures("running")
async def test_stop_no_block(ctl: Ctl, registry: EtcdRegistry) -> None:
    result = await ctl("stop", "--no-block", "hello", "g", "missing")
    assert result.code == 0
    assert result.out == "Triggered global unit g.service stop\nTriggered unit hello.service stop\n"
    assert result.err == "Successfully stopped units [hello.service].\n"
    assert await desired_of(registry, "hello.service") == "loaded"
    assert await desired_of(registry, "g.service") == "loaded"


@pytest.mark.usefixtures("running")
async def test_stop_waits_until_the_machine_has_stopped_the_unit(ctl: Ctl, registry: EtcdRegistry) -> None:
    waiting = asyncio.create_task(ctl("stop", "--block-attempts", "10", "hello.service"))
    await wait_for(lambda: _is(registry, "hello.service", "loaded"), timeout=10, what="the desired state")
    await report(registry, M1, "hello.service", achieved=DesiredState.LOADED, active="inactive", sub="dead")
    result = await waiting
    assert (result.code, result.out) == (0, "Unit hello.service loaded on 4d389537.../10.0.0.1\n")
    assert result.err == "Successfully stopped units [hello.service].\n"


@pytest.mark.usefixtures("running")
async def test_stop_gives_up_after_its_block_attempts(ctl: Ctl) -> None:
    result = await ctl("stop", "--block-attempts", "1", "hello.service")
    assert (result.code, result.out) == (1, "")
    message = "timed out waiting for unit hello.service to report state loaded"
    assert result.err == (f"Error waiting for units: {message}\nFailed to stop units [hello.service]. err: {message}\n")


async def test_stopping_an_inactive_unit_fails(ctl: Ctl, files: str) -> None:
    assert (await ctl("submit", write_unit(files, "hello.service", HELLO))).code == 0
    result = await ctl("stop", "hello")
    assert (result.code, result.out, result.err) == (1, "", "Unable to stop unit hello.service in state inactive\n")


@pytest.mark.parametrize("command", ["stop", "unload"])
async def test_stopping_missing_units_is_not_an_error(ctl: Ctl, command: str) -> None:
    result = await ctl(command, "missing")
    assert (result.code, result.out, result.err) == (0, "", "Units not found in registry\n")


@pytest.mark.usefixtures("running")
async def test_unload_no_block(ctl: Ctl, registry: EtcdRegistry) -> None:
    result = await ctl("unload", "--no-block", "hello.service", "g.service")
    assert result.code == 0
    assert result.out == "Triggered global unit g.service unload\nTriggered unit hello.service unload\n"
    assert result.err == "Successfully unloaded units [hello.service].\n"
    assert await desired_of(registry, "hello.service") == "inactive"


@pytest.mark.usefixtures("running")
async def test_unload_waits_until_the_machine_has_unloaded_the_unit(ctl: Ctl, registry: EtcdRegistry) -> None:
    waiting = asyncio.create_task(ctl("unload", "hello.service"))
    await wait_for(lambda: _is(registry, "hello.service", "inactive"), timeout=10, what="the desired state")
    await unplace(registry, "hello.service", M1)
    result = await waiting
    assert (result.code, result.out) == (0, "Unit hello.service inactive\n")
    assert result.err == "Successfully unloaded units [hello.service].\n"
