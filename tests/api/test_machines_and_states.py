"""``/machines`` and ``/state`` (FLEET-SPEC §4.2, §4.3): shapes, order, filters."""

from __future__ import annotations

import pytest

from fleetpy.model import DesiredState, MachineID
from tests.api.conftest import V1, Api
from tests.api.seeding import add_machine, report

HELLO = "[Service]\nExecStart=/bin/sleep 100\n"


async def test_machines_are_sorted_by_id_with_empty_fields_omitted(api: Api) -> None:
    await add_machine(api.registry, "c3", "10.0.0.3", {"region": "us", "disk": "ssd"})
    await add_machine(api.registry, "a1")
    await add_machine(api.registry, "b2", "10.0.0.2")
    body = (await api.get(V1 + "/machines")).json
    assert list(body) == ["machines"]
    assert body["machines"] == [
        {"id": "a1"},
        {"id": "b2", "primaryIP": "10.0.0.2"},
        {"id": "c3", "metadata": {"disk": "ssd", "region": "us"}, "primaryIP": "10.0.0.3"},
    ]
    assert list(body["machines"][2]) == ["id", "metadata", "primaryIP"]
    assert list(body["machines"][2]["metadata"]) == ["disk", "region"]


async def test_dynamic_metadata_is_merged_into_a_machine(api: Api) -> None:
    await add_machine(api.registry, "a1", "", {"region": "us", "disk": "ssd"})
    await api.registry.set_machine_metadata([(MachineID("a1"), "region", "eu"), (MachineID("a1"), "disk", "")])
    assert (await api.get(V1 + "/machines")).json == {"machines": [{"id": "a1", "metadata": {"region": "eu"}}]}


async def test_a_machine_whose_lease_is_gone_is_not_listed(api: Api) -> None:
    lease = await add_machine(api.registry, "a1")
    await add_machine(api.registry, "b2")
    await api.registry.revoke_lease(lease)
    assert (await api.get(V1 + "/machines")).json == {"machines": [{"id": "b2"}]}


@pytest.fixture
async def states(api: Api) -> Api:
    """a.service on m1 and m2, b.service on m1 (published out of order)."""
    for name in ("a.service", "b.service"):
        assert (await api.put_text(name, HELLO)).status == 201
    await add_machine(api.registry, "m2")
    await add_machine(api.registry, "m1")
    await report(api.registry, "m2", "a.service", achieved=DesiredState.LOADED, active="inactive", sub="dead")
    await report(api.registry, "m1", "b.service")
    await report(api.registry, "m1", "a.service")
    return api


def _pairs(body: dict[str, list[dict[str, str]]]) -> list[tuple[str, str]]:
    return [(s["name"], s["machineID"]) for s in body.get("states", [])]


async def test_states_have_fleets_shape_and_are_sorted_by_unit_then_machine(states: Api) -> None:
    body = (await states.get(V1 + "/state")).json
    assert list(body) == ["states"]
    assert _pairs(body) == [("a.service", "m1"), ("a.service", "m2"), ("b.service", "m1")]
    first = body["states"][0]
    assert list(first) == ["hash", "machineID", "name", "systemdActiveState", "systemdLoadState", "systemdSubState"]
    view = await states.registry.get_unit("a.service")
    assert view is not None
    assert first == {
        "hash": view.record.hash,
        "machineID": "m1",
        "name": "a.service",
        "systemdActiveState": "active",
        "systemdLoadState": "loaded",
        "systemdSubState": "running",
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param("?machineID=m1", [("a.service", "m1"), ("b.service", "m1")], id="by machine"),
        pytest.param("?unitName=a.service", [("a.service", "m1"), ("a.service", "m2")], id="by unit"),
        pytest.param("?machineID=m2&unitName=a.service", [("a.service", "m2")], id="by both"),
        pytest.param("?machineID=m2&unitName=b.service", [], id="by both, nothing matches"),
        pytest.param("?machineID=m", [], id="a machine ID prefix matches nothing"),
        pytest.param("?unitName=a", [], id="a unit name prefix matches nothing"),
        pytest.param("?machineID=m2&machineID=m1", [("a.service", "m2")], id="the first value counts"),
        pytest.param(
            "?machineID=&unitName=",
            [("a.service", "m1"), ("a.service", "m2"), ("b.service", "m1")],
            id="empty filters are no filters",
        ),
        pytest.param(
            "?alt=json&foo=bar",
            [("a.service", "m1"), ("a.service", "m2"), ("b.service", "m1")],
            id="unknown parameters are ignored",
        ),
    ],
)
async def test_states_are_filtered(states: Api, query: str, expected: list[tuple[str, str]]) -> None:
    reply = await states.get(V1 + "/state" + query)
    assert reply.status == 200
    assert _pairs(reply.json) == expected
    if not expected:
        assert reply.raw == b"{}"


async def test_one_state_is_the_first_machines(states: Api) -> None:
    reply = await states.get(V1 + "/state/a.service")
    assert reply.status == 200
    assert (reply.json["name"], reply.json["machineID"]) == ("a.service", "m1")
    assert reply.json == (await states.get(V1 + "/state?unitName=a.service")).json["states"][0]


async def test_a_missing_state_is_404(states: Api) -> None:
    # fleet's handler crashes here (§4.1, §9.8)
    for name in ("missing.service", "a"):
        reply = await states.get(f"{V1}/state/{name}")
        assert reply.status == 404
        assert reply.error == (404, "unit state does not exist")


async def test_a_unit_without_a_state_has_no_state(api: Api) -> None:
    assert (await api.put_text("a.service", HELLO)).status == 201
    assert (await api.get(V1 + "/state/a.service")).error == (404, "unit state does not exist")
