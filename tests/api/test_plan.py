"""``POST /fleetpy/v1/plan``: where units would run and why, computed from etcd as it is, writing nothing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Api, options_of
from tests.api.seeding import add_machine, place, report

PLAN = "/fleetpy/v1/plan"
SLEEP = "[Service]\nExecStart=/bin/sleep 100\n"
NEW = SLEEP + "\n[X-Fleet]\nMachineMetadata=disk=ssd\nConflicts=b.service\n"
NO_SSD = {"rule": "MachineMetadata", "message": "local Machine metadata insufficient"}
CONFLICT_B = {"rule": "Conflicts", "message": "found conflict with locally-scheduled Unit(b.service)"}


@pytest.fixture
async def cluster(api: Api) -> Api:
    """m1 (ssd) runs b, m2 (ssd) runs c, m3 (no disk) runs nothing."""
    await add_machine(api.registry, "m1", "10.0.0.1", {"disk": "ssd"})
    await add_machine(api.registry, "m2", "10.0.0.2", {"disk": "ssd"})
    await add_machine(api.registry, "m3", "10.0.0.3")
    for name, machine in (("b.service", "m1"), ("c.service", "m2")):
        assert (await api.put_text(name, SLEEP.replace("100", name[0]), "launched")).status == 201
        await place(api.registry, name, machine)
    return api


async def plan(api: Api, *units: dict[str, Any]) -> tuple[int, Any]:
    async with api.unchanged():
        reply = await api.call("POST", PLAN, json={"units": list(units)})
    return reply.status, reply.json


async def test_a_new_unit_goes_to_the_least_loaded_machine_that_passes_and_every_machine_says_why(
    cluster: Api,
) -> None:
    status, body = await plan(cluster, {"name": "a.service", "options": options_of(NEW)})
    assert status == 200
    assert body == {
        "units": [
            {
                "name": "a.service",
                "global": False,
                "machines": ["m2"],
                "kept": False,
                "reason": "",
                "verdicts": [
                    {"machineID": "m3", "load": 0, **NO_SSD},
                    {"machineID": "m1", "load": 1, **CONFLICT_B},
                    {"machineID": "m2", "load": 1},
                ],
            }
        ],
        "actions": [
            {
                "type": "Schedule",
                "unit": "a.service",
                "machineID": "m2",
                "reason": "target state launched and unit not scheduled",
            }
        ],
    }


async def test_a_unit_that_would_run_nowhere_has_its_reason(cluster: Api) -> None:
    text = NEW.replace("Conflicts=b.service", "Conflicts=[bc].service")
    status, body = await plan(cluster, {"name": "a.service", "options": options_of(text)})
    assert status == 200
    (unit,) = body["units"]
    assert unit["machines"] == []
    assert unit["reason"] == (
        "no machine can run it: MachineMetadata ruled out 1 of 3 machines (local Machine metadata insufficient); "
        "Conflicts ruled out 2 of 3 machines (found conflict with locally-scheduled Unit(b.service))"
    )
    assert body["actions"] == []


async def test_units_of_the_cluster_are_planned_by_name_and_several_see_each_other(cluster: Api) -> None:
    assert (await cluster.put_text("d.service", SLEEP.replace("100", "d"))).status == 201
    status, body = await plan(
        cluster, {"name": "b.service"}, {"name": "d.service"}, {"name": "e.service", "options": options_of(SLEEP)}
    )
    assert status == 200
    assert [(u["name"], u["machines"], u["kept"]) for u in body["units"]] == [
        ("b.service", ["m1"], True),
        ("d.service", ["m3"], False),
        ("e.service", ["m1"], False),  # m3 got d first: every machine runs one unit, m1 sorts first
    ]


async def test_a_unit_that_replaces_another_shows_the_other_moving(cluster: Api) -> None:
    text = SLEEP + "\n[X-Fleet]\nReplaces=b.service\nMachineMetadata=disk=ssd\n"
    status, body = await plan(cluster, {"name": "new.service", "options": options_of(text)})
    assert status == 200
    assert [(a["type"], a["unit"], a["machineID"], a["reason"]) for a in body["actions"]] == [
        ("Schedule", "new.service", "m1", "target state launched and unit not scheduled"),
        ("Unschedule", "b.service", "m1", "replaced by Unit(new.service)"),
        ("Schedule", "b.service", "m3", "target state launched and unit not scheduled"),
    ]


async def test_a_global_unit_runs_on_every_machine_that_may(cluster: Api) -> None:
    text = SLEEP + "\n[X-Fleet]\nGlobal=true\nMachineMetadata=disk=ssd\n"
    await report(cluster.registry, "m1", "b.service")
    status, body = await plan(cluster, {"name": "g.service", "options": options_of(text)})
    assert status == 200
    (unit,) = body["units"]
    assert (unit["global"], unit["machines"], unit["reason"]) == (True, ["m1", "m2"], "")
    assert {v["machineID"]: v.get("rule", "") for v in unit["verdicts"]} == {
        "m1": "",
        "m2": "",
        "m3": "MachineMetadata",
    }


@pytest.mark.parametrize(
    ("units", "status", "message"),
    [
        pytest.param([{"name": "nothere.service"}], 404, "unit nothere.service does not exist", id="an unknown unit"),
        pytest.param([{"name": "a.servICE"}], 400, 'invalid unit type: "servICE"', id="a bad name"),
        pytest.param(
            [{"name": "a.service", "options": options_of(SLEEP + "[X-Fleet]\nMachineID=x\nGlobal=true\n")}],
            400,
            "MachineID cannot be used with Global",
            id="options fleet refuses",
        ),
        pytest.param([], 400, "units must be a non-empty list", id="no units"),
        pytest.param([{"options": []}], 400, "each unit must be an object with a name", id="no name"),
    ],
)
async def test_bad_requests(cluster: Api, units: list[Any], status: int, message: str) -> None:
    async with cluster.unchanged():
        reply = await cluster.call("POST", PLAN, json={"units": units})
    assert reply.status == status
    assert reply.error[1].startswith(message)


async def test_other_methods_are_405(api: Api) -> None:
    reply = await api.get(PLAN)
    assert reply.error == (405, "only POST supported against this resource")
