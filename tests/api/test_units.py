"""``/units``: JSON shapes (FLEET-SPEC §4.2), GET/DELETE, and the PUT state machine of §4.3 with the §9.8 fixes.

Every refused request is checked to have written nothing under the test's prefix.
"""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict

from fleetpy.model import DesiredState
from tests.api.conftest import V1, Api, hash_of, options_of
from tests.api.seeding import add_machine, explain, place, report

HELLO = "[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/sleep 100\n"
OTHER = "[Unit]\nDescription=Other\n\n[Service]\nExecStart=/bin/sleep 200\n"
GLOBAL = "[Service]\nExecStart=/bin/sleep 100\n\n[X-Fleet]\nGlobal=true\n"
TEMPLATE = "[Service]\nExecStart=/bin/echo %i\n"
HELLO_OPTIONS = [
    {"name": "Description", "section": "Unit", "value": "Hello"},
    {"name": "ExecStart", "section": "Service", "value": "/bin/sleep 100"},
]


# ---------------------------------------------------------------------------------------------- shapes


async def test_an_empty_cluster_lists_an_empty_object(api: Api) -> None:
    for path in ("/units", "/machines", "/state"):
        reply = await api.get(V1 + path)
        assert (reply.status, reply.raw) == (200, b"{}")


async def test_a_created_unit_has_fleets_keys_in_fleets_order(api: Api) -> None:
    reply = await api.put_text("hello.service", HELLO)
    assert (reply.status, reply.raw) == (201, b"")
    one = (await api.get(V1 + "/units/hello.service")).json
    assert list(one) == ["currentState", "desiredState", "name", "options"]
    assert one == {
        "currentState": "inactive",
        "desiredState": "inactive",
        "name": "hello.service",
        "options": HELLO_OPTIONS,
    }
    assert [list(o) for o in one["options"]] == [["name", "section", "value"]] * 2
    listed = (await api.get(V1 + "/units")).json
    assert listed == {"units": [one]}
    view = await api.registry.get_unit("hello.service")
    assert view is not None
    assert view.record.hash == hash_of(HELLO)
    assert await api.registry.get_body(hash_of(HELLO)) == HELLO


async def test_a_placed_unit_shows_its_machine_and_what_the_machine_achieved(api: Api) -> None:
    assert (await api.put_text("hello.service", HELLO, "launched")).status == 201
    await add_machine(api.registry, "m1", "10.0.0.1")
    await place(api.registry, "hello.service", "m1")
    unit = (await api.get(V1 + "/units/hello.service")).json
    assert list(unit) == ["currentState", "desiredState", "machineID", "name", "options"]
    assert (unit["currentState"], unit["desiredState"], unit["machineID"]) == ("inactive", "launched", "m1")
    await report(api.registry, "m1", "hello.service", achieved=DesiredState.LAUNCHED)
    assert (await api.get(V1 + "/units/hello.service")).json["currentState"] == "launched"
    assert (await api.get(V1 + "/units")).json["units"][0]["currentState"] == "launched"
    # a state for another body of the unit is not this unit's state
    await report(api.registry, "m1", "hello.service", achieved=DesiredState.LAUNCHED, unit_hash=hash_of(OTHER))
    assert (await api.get(V1 + "/units/hello.service")).json["currentState"] == "inactive"


async def test_a_unit_the_engine_could_not_place_carries_its_reason_after_fleets_fields(api: Api) -> None:
    assert (await api.put_text("hello.service", HELLO, "launched")).status == 201
    reason = 'no machine can run it: MachineID ruled out 1 of 1 machine (agent ID does not match required "x")'
    await explain(api.registry, "hello.service", reason)
    one = (await api.get(V1 + "/units/hello.service")).json
    assert list(one) == ["currentState", "desiredState", "name", "options", "reason"]
    assert one["reason"] == reason
    assert (await api.get(V1 + "/units")).json == {"units": [one]}
    # once placed, a reason the engine has not cleared yet is not shown
    await add_machine(api.registry, "m1")
    await place(api.registry, "hello.service", "m1")
    assert "reason" not in (await api.get(V1 + "/units/hello.service")).json
    assert "reason" not in (await api.get(V1 + "/units")).json["units"][0]


async def test_a_global_unit_has_no_current_state_in_the_list_nor_alone(api: Api) -> None:
    assert (await api.put_text("g.service", GLOBAL, "launched")).status == 201
    await add_machine(api.registry, "m1")
    await report(api.registry, "m1", "g.service")
    one = (await api.get(V1 + "/units/g.service")).json
    assert list(one) == ["desiredState", "name", "options"]
    assert (await api.get(V1 + "/units")).json == {"units": [one]}


async def test_units_are_listed_by_name_including_templates(api: Api) -> None:
    for name in ("b.service", "a@.service", "a.service", "c.socket"):
        assert (await api.put_text(name, HELLO)).status == 201
    names = [u["name"] for u in (await api.get(V1 + "/units")).json["units"]]
    assert names == ["a.service", "a@.service", "b.service", "c.socket"]


async def test_a_missing_unit_is_404(api: Api) -> None:
    reply = await api.get(V1 + "/units/missing.service")
    assert (reply.status, reply.error) == (404, (404, "unit does not exist"))
    assert (await api.get(V1 + "/units/not a valid name")).error == (404, "unit does not exist")


# ---------------------------------------------------------------------------------------------- DELETE


async def test_delete_removes_the_unit(api: Api) -> None:
    await api.put_text("hello.service", HELLO)
    reply = await api.call("DELETE", V1 + "/units/hello.service")
    assert (reply.status, reply.raw) == (204, b"")
    assert (await api.get(V1 + "/units/hello.service")).status == 404
    assert (await api.get(V1 + "/units")).raw == b"{}"


async def test_deleting_a_missing_unit_is_404_and_writes_nothing(api: Api) -> None:
    await api.put_text("hello.service", HELLO)
    async with api.unchanged():
        reply = await api.call("DELETE", V1 + "/units/missing.service")
    assert reply.error == (404, "unit does not exist")


# ---------------------------------------------------------------------------------------------- PUT: refused


async def _refused(api: Api, status: int, message: str, method_args: dict[str, Any], name: str = "a.service") -> None:
    async with api.unchanged():
        reply = await api.call("PUT", f"{V1}/units/{name}", **method_args)
    assert reply.status == status, reply.raw
    assert reply.error == (status, message)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        pytest.param({}, "expected 1 Content-Type, got 0", id="no Content-Type"),
        pytest.param({"Content-Type": "text/plain"}, "only acceptable Content-Type is application/json", id="text"),
        pytest.param(
            {"Content-Type": "application/jsonx"}, "only acceptable Content-Type is application/json", id="jsonx"
        ),
    ],
)
async def test_put_needs_json_content(api: Api, headers: dict[str, str], message: str) -> None:
    await api.put_text("a.service", HELLO)
    body = b'{"desiredState":"launched"}'
    await _refused(api, 415, message, {"data": body, "headers": headers, "skip_auto_headers": ["Content-Type"]})


async def test_put_with_two_content_types_is_refused(api: Api) -> None:
    # fleet: 415 "expected 1 Content-Type, got 2". aiohttp's HTTP parser refuses a repeated Content-Type
    # before any handler runs (400, plain text), so the app cannot give fleet's answer; it writes nothing.
    await api.put_text("a.service", HELLO)
    headers = CIMultiDict([("Content-Type", "application/json"), ("Content-Type", "application/json")])
    async with api.unchanged():
        reply = await api.call("PUT", V1 + "/units/a.service", data=b'{"desiredState":"launched"}', headers=headers)
    assert reply.status in (400, 415)


async def test_put_accepts_json_with_parameters(api: Api) -> None:
    body = b'{"options":[{"section":"Service","name":"ExecStart","value":"/x"}]}'
    reply = await api.call(
        "PUT", V1 + "/units/a.service", data=body, headers={"Content-Type": "Application/JSON; charset=utf-8"}
    )
    assert reply.status == 201


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{x", id="not JSON"),
        pytest.param(b"", id="empty"),
        pytest.param(b"[]", id="an array"),
        pytest.param(b'"unit"', id="a string"),
        pytest.param(b'{"options":"x"}', id="options not a list"),
        pytest.param(b'{"options":["x"]}', id="an option not an object"),
        pytest.param(b'{"options":[{"section":"S","name":"N","value":1}]}', id="a value not a string"),
        pytest.param(b'{"name":5}', id="a name not a string"),
        pytest.param(b'{"desiredState":5}', id="a desired state not a string"),
        pytest.param(b"\xff\xfe{", id="not UTF-8"),
    ],
)
async def test_a_body_that_does_not_decode_is_400(api: Api, body: bytes) -> None:
    async with api.unchanged():
        reply = await api.call("PUT", V1 + "/units/a.service", data=body, headers={"Content-Type": "application/json"})
    assert reply.status == 400
    code, message = reply.error
    assert code == 400
    assert message.startswith("unable to decode body: ")


async def test_a_body_name_that_differs_from_the_url_is_400(api: Api) -> None:
    body = {"name": "b.service", "options": options_of(HELLO)}
    await _refused(
        api, 400, 'name in URL "a.service" differs from unit name in request body "b.service"', {"json": body}
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        pytest.param("foo", 'unit name must contain "."', id="no dot"),
        pytest.param("foo.", 'unit name cannot end in "."', id="ends in a dot"),
        pytest.param("foo.servICE", 'invalid unit type: "servICE"', id="unknown type"),
        pytest.param("foo@1.mount", 'invalid unit type for template: "mount"', id="instance of a mount"),
        pytest.param("this+that.mount", "invalid character '+' in unit name", id="a plus"),
        pytest.param("@foo.service", 'unit name cannot start in "@"', id="starts with @"),
        pytest.param("a" * 250 + ".service", "unit name exceeds maximum length (256)", id="too long"),
    ],
)
async def test_invalid_names_are_400_with_fleets_messages(api: Api, name: str, message: str) -> None:
    await _refused(api, 400, message, {"json": {"options": options_of(HELLO)}}, name=name)


@pytest.mark.parametrize("options", [None, []], ids=["no options", "empty options"])
async def test_creating_without_options_is_409(api: Api, options: list[Any] | None) -> None:
    body: dict[str, Any] = {"desiredState": "launched"}
    if options is not None:
        body["options"] = options
    await _refused(api, 409, "unit does not exist and options field empty", {"json": body})


@pytest.mark.parametrize(
    ("xfleet", "message"),
    [
        pytest.param("MachineID=abc\nGlobal=true", "MachineID cannot be used with Global", id="MachineID+Global"),
        pytest.param("Conflicts=x*\nReplaces=y*", "Conflicts cannot be used with Replaces", id="Conflicts+Replaces"),
        pytest.param("Global=true\nMachineOf=b.service", "Global cannot be used with Peers", id="Global+MachineOf"),
        pytest.param(
            "MachineOf=b.service\nConflicts=b.*",
            'unresolvable requirements: peer "b.service" matches conflict "b.*"',
            id="a peer that conflicts",
        ),
    ],
)
async def test_creating_invalid_options_is_400(api: Api, xfleet: str, message: str) -> None:
    text = f"[Service]\nExecStart=/x\n\n[X-Fleet]\n{xfleet}\n"
    await _refused(api, 400, message, {"json": {"options": options_of(text)}})


async def test_a_line_too_long_is_400(api: Api) -> None:
    options = [{"section": "Service", "name": "ExecStart", "value": "x" * 2100}]
    await _refused(api, 400, "line too long (max 2048 bytes)", {"json": {"options": options}})


@pytest.mark.parametrize("desired", ["bogus", "Launched", "active"])
async def test_an_invalid_desired_state_on_create_is_400(api: Api, desired: str) -> None:
    async with api.unchanged():
        reply = await api.put_text("a.service", HELLO, desired)
    assert reply.status == 400  # fleet: 500 (§9.8)
    assert repr(desired) in reply.error[1] or f'"{desired}"' in reply.error[1]


@pytest.mark.parametrize("desired", ["loaded", "launched"])
async def test_a_template_cannot_be_created_active(api: Api, desired: str) -> None:
    await _refused(
        api,
        400,
        'cannot activate template "t@.service"',
        {"json": {"options": options_of(TEMPLATE), "desiredState": desired}},
        name="t@.service",
    )


async def test_updating_without_a_desired_state_is_409(api: Api) -> None:
    await api.put_text("a.service", HELLO)
    message = "must provide DesiredState to update existing unit"
    await _refused(api, 409, message, {"json": {}})
    await _refused(api, 409, message, {"json": {"name": "a.service", "options": options_of(HELLO)}})
    await _refused(api, 409, message, {"json": {"desiredState": ""}})


@pytest.mark.parametrize("desired", ["bogus", "whatever", "LAUNCHED"])
async def test_an_invalid_desired_state_on_update_is_400(api: Api, desired: str) -> None:
    await api.put_text("a.service", HELLO)
    async with api.unchanged():
        reply = await api.put("a.service", {"desiredState": desired})
    assert reply.status == 400  # fleet stores it and breaks the unit (§9.8)
    assert (await api.get(V1 + "/units/a.service")).json["desiredState"] == "inactive"


@pytest.mark.parametrize("desired", ["loaded", "launched"])
async def test_a_template_cannot_be_activated(api: Api, desired: str) -> None:
    await api.put_text("t@.service", TEMPLATE)
    await _refused(
        api, 400, 'cannot activate template "t@.service"', {"json": {"desiredState": desired}}, name="t@.service"
    )


async def test_replacing_with_invalid_options_is_400(api: Api) -> None:
    await api.put_text("a.service", HELLO)
    invalid = "[Service]\nExecStart=/x\n\n[X-Fleet]\nMachineID=abc\nConflicts=b*\n"
    await _refused(api, 400, "MachineID cannot be used with Conflicts", {"json": {"options": options_of(invalid)}})


async def test_replacing_a_template_with_an_active_state_is_400(api: Api) -> None:
    await api.put_text("t@.service", TEMPLATE)
    body = {"options": options_of(OTHER), "desiredState": "launched"}
    await _refused(api, 400, 'cannot activate template "t@.service"', {"json": body}, name="t@.service")


# ---------------------------------------------------------------------------------------------- PUT: accepted


async def test_create_with_a_desired_state(api: Api) -> None:
    assert (await api.put_text("a.service", HELLO, "launched")).status == 201
    unit = (await api.get(V1 + "/units/a.service")).json
    assert (unit["currentState"], unit["desiredState"]) == ("inactive", "launched")


async def test_create_takes_the_name_from_the_url_when_the_body_has_none(api: Api) -> None:
    assert (await api.put("a.service", {"name": "", "options": options_of(HELLO)})).status == 201
    assert (await api.get(V1 + "/units/a.service")).json["name"] == "a.service"


async def test_a_template_can_be_created_inactive(api: Api) -> None:
    assert (await api.put_text("t@.service", TEMPLATE, "inactive")).status == 201
    assert (await api.put("t@.service", {"desiredState": "inactive"})).status == 204


async def test_update_sets_the_desired_state(api: Api) -> None:
    await api.put_text("a.service", HELLO)
    for desired in ("loaded", "launched", "inactive"):
        reply = await api.put("a.service", {"desiredState": desired})
        assert (reply.status, reply.raw) == (204, b"")
        assert (await api.get(V1 + "/units/a.service")).json["desiredState"] == desired


async def test_identical_options_with_a_state_only_update_the_state(api: Api) -> None:
    await api.put_text("a.service", HELLO)
    reply = await api.put_text("a.service", HELLO, "loaded")
    assert reply.status == 204
    view = await api.registry.get_unit("a.service")
    assert view is not None
    assert (view.record.hash, view.record.desired) == (hash_of(HELLO), DesiredState.LOADED)


async def test_setting_the_same_desired_state_again_writes_nothing(api: Api) -> None:
    await api.put_text("a.service", HELLO, "launched")
    async with api.unchanged():
        assert (await api.put("a.service", {"desiredState": "launched"})).status == 204


@pytest.mark.parametrize(("desired", "expected"), [(None, "inactive"), ("loaded", "loaded")])
async def test_different_options_replace_the_unit(api: Api, desired: str | None, expected: str) -> None:
    await api.put_text("a.service", HELLO, "launched")
    reply = await api.put_text("a.service", OTHER, desired)
    assert (reply.status, reply.raw) == (201, b"")
    unit = (await api.get(V1 + "/units/a.service")).json
    assert unit["desiredState"] == expected
    assert unit["options"] == options_of(OTHER)
    assert await api.registry.get_body(hash_of(OTHER)) == OTHER


async def test_a_repeated_section_is_merged(api: Api) -> None:
    text = "[Unit]\nDescription=A\n\n[Service]\nExecStart=/x\n\n[Unit]\nAfter=b.service\n"
    assert (await api.put("a.service", {"options": options_of(text)})).status == 201
    unit = (await api.get(V1 + "/units/a.service")).json
    assert unit["options"] == [
        {"name": "Description", "section": "Unit", "value": "A"},
        {"name": "After", "section": "Unit", "value": "b.service"},
        {"name": "ExecStart", "section": "Service", "value": "/x"},
    ]
    view = await api.registry.get_unit("a.service")
    assert view is not None
    assert view.record.hash == hash_of(text)


async def test_current_state_and_machine_in_a_request_are_ignored(api: Api) -> None:
    body = {"options": options_of(HELLO), "currentState": "launched", "machineID": "m1", "desiredState": "loaded"}
    assert (await api.put("a.service", body)).status == 201
    unit = (await api.get(V1 + "/units/a.service")).json
    assert (unit["currentState"], unit["desiredState"], "machineID" in unit) == ("inactive", "loaded", False)
