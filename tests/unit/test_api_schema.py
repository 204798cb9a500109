"""fleet API v1 shapes and page tokens (FLEET-SPEC §4.2, §4.4)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpy.api.schema import (
    BadRequest,
    decode_token,
    encode_token,
    go_urlsafe_b64decode,
    machine_json,
    options_json,
    page,
    parse_options,
    state_json,
    unit_json,
)
from fleetpy.model import DesiredState, Machine, MachineID, UnitState
from fleetpy.unit import UnitOption

# ------------------------------------------------------------------------------------------------------------
# Page tokens


@pytest.mark.parametrize(
    ("limit", "number", "token"),
    [
        pytest.param(100, 2, "ZAACAA==", id="limit 100 page 2"),
        pytest.param(2, 2, "AgACAA==", id="limit 2 page 2"),
        pytest.param(19, 11852, "EwBMLg==", id="limit 19 page 11852"),
        pytest.param(1023, 0, "_wMAAA==", id="limit 1023 page 0 uses the URL-safe alphabet"),
    ],
)
def test_token_encoding_matches_fleet(limit: int, number: int, token: str) -> None:
    assert encode_token(limit, number) == token
    assert go_urlsafe_b64decode(token) == limit.to_bytes(2, "little") + number.to_bytes(2, "little")


@pytest.mark.parametrize(
    ("values", "limit", "expected"),
    [
        pytest.param([], 100, 1, id="no token is the first page"),
        pytest.param(["ZAACAA=="], 100, 2, id="page two"),
        pytest.param(["EwBMLg=="], 19, 11852, id="a large page"),
        pytest.param(["ZAAC\nAA==\r\n"], 100, 2, id="newlines are skipped as Go skips them"),
        pytest.param(["ZAACAAAA"], 100, 2, id="bytes after the first four are ignored"),
    ],
)
def test_decode_token(values: list[str], limit: int, expected: int) -> None:
    assert decode_token(values, limit) == expected


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param(["ZAACAA==", "ZAACAA=="], "too many values for page token", id="two tokens"),
        pytest.param([""], "EOF", id="an empty token"),
        pytest.param(["\n"], "EOF", id="a token of nothing but a newline"),
        pytest.param(["ZAACAA"], "illegal base64 data at input byte 4", id="missing padding"),
        pytest.param(["ZAAC AA=="], "illegal base64 data at input byte 4", id="a space"),
        pytest.param(["ZAACAA==x"], "illegal base64 data at input byte 8", id="data after the padding"),
        pytest.param(["ZAACAA="], "illegal base64 data at input byte 7", id="half the padding"),
        pytest.param(["ZA=A"], "illegal base64 data at input byte 2", id="padding followed by data"),
        pytest.param(["Z==="], "illegal base64 data at input byte 1", id="padding too early"),
        pytest.param(["ZAAC+/8="], "illegal base64 data at input byte 4", id="the standard alphabet is refused"),
        pytest.param(["é"], "illegal base64 data at input byte 0", id="a non-ASCII character"),
        pytest.param(["ZA=="], "unexpected EOF", id="one byte"),
        pytest.param(["ZAA="], "unexpected EOF", id="two bytes"),
        pytest.param(["ZAAC"], "unexpected EOF", id="three bytes"),
        pytest.param(["AgACAA=="], "token limit must be 100", id="a token for another page size"),
        pytest.param(["ZAAAAA=="], "token page must be greater than zero", id="page zero"),
    ],
)
def test_bad_tokens(values: list[str], message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        decode_token(values, 100)
    assert str(caught.value) == message


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(1, 65535), st.integers(1, 65535))
def test_tokens_round_trip(limit: int, number: int) -> None:
    assert decode_token([encode_token(limit, number)], limit) == number


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(st.sampled_from("AZaz09-_=+/ \n\r.é"), max_size=12))
def test_token_decoding_raises_nothing_but_bad_request(token: str) -> None:
    try:
        decode_token([token], 100)
    except BadRequest:
        pass


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=9))
def test_go_decoder_reads_what_python_encodes(data: bytes) -> None:
    import base64

    assert go_urlsafe_b64decode(base64.urlsafe_b64encode(data).decode()) == data


# ------------------------------------------------------------------------------------------------------------
# Pages


ITEMS = [f"u{i}" for i in range(5)]


@pytest.mark.parametrize(
    ("items", "query", "limit", "expected"),
    [
        pytest.param([], {}, 100, {}, id="an empty collection is an empty object"),
        pytest.param(ITEMS, {}, 100, {"units": ITEMS}, id="everything fits on the first page"),
        pytest.param(
            ITEMS, {}, 2, {"units": ["u0", "u1"], "nextPageToken": "AgACAA=="}, id="a full page has a next token"
        ),
        pytest.param(
            ITEMS,
            {"nextPageToken": ["AgACAA=="]},
            2,
            {"units": ["u2", "u3"], "nextPageToken": "AgADAA=="},
            id="the second page",
        ),
        pytest.param(ITEMS, {"nextPageToken": ["AgADAA=="]}, 2, {"units": ["u4"]}, id="a short last page"),
        pytest.param(
            ITEMS[:4],
            {"nextPageToken": ["AgACAA=="]},
            2,
            {"units": ["u2", "u3"], "nextPageToken": "AgADAA=="},
            id="an exactly full last page still has a token",
        ),
        pytest.param(ITEMS[:4], {"nextPageToken": ["AgADAA=="]}, 2, {}, id="the page after the end is empty"),
    ],
)
def test_page(items: list[str], query: dict[str, list[str]], limit: int, expected: dict[str, Any]) -> None:
    assert page(items, "units", query, limit) == expected


def test_page_refuses_a_bad_token() -> None:
    with pytest.raises(BadRequest, match="token limit must be 2"):
        page(ITEMS, "units", {"nextPageToken": ["ZAACAA=="]}, 2)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.integers(0, 30), st.integers(1, 7))
def test_following_tokens_lists_everything_once(count: int, limit: int) -> None:
    items = list(range(count))
    seen: list[int] = []
    query: dict[str, list[str]] = {}
    for _ in range(count + 2):
        body = page(items, "units", query, limit)
        seen.extend(body.get("units", []))
        if "nextPageToken" not in body:
            break
        query = {"nextPageToken": [body["nextPageToken"]]}
    assert seen == items


# ------------------------------------------------------------------------------------------------------------
# Entities


def test_unit_json_key_order_and_omitted_fields() -> None:
    options = [UnitOption("Service", "ExecStart", "/bin/true")]
    body = unit_json(
        name="a.service", desired=DesiredState.LAUNCHED, current=DesiredState.LOADED, machine="m1", options=options
    )
    assert list(body) == ["currentState", "desiredState", "machineID", "name", "options"]
    assert body["options"] == [{"name": "ExecStart", "section": "Service", "value": "/bin/true"}]
    assert list(body["options"][0]) == ["name", "section", "value"]
    bare = unit_json(name="g.service", desired=DesiredState.LAUNCHED, current=None, machine=None, options=[])
    assert bare == {"desiredState": "launched", "name": "g.service"}


def test_state_json_omits_empty_fields() -> None:
    state = UnitState("a.service", MachineID("m1"), "loaded", "active", "", "abc", DesiredState.LAUNCHED)
    assert state_json(state) == {
        "hash": "abc",
        "machineID": "m1",
        "name": "a.service",
        "systemdActiveState": "active",
        "systemdLoadState": "loaded",
    }


def test_machine_json() -> None:
    assert machine_json(Machine(MachineID("m1"))) == {"id": "m1"}
    full = machine_json(Machine(MachineID("m1"), "10.0.0.1", {"z": "1", "a": "2"}))
    assert full == {"id": "m1", "metadata": {"a": "2", "z": "1"}, "primaryIP": "10.0.0.1"}
    assert list(full) == ["id", "metadata", "primaryIP"]


def test_options_json_keeps_file_order() -> None:
    options = [UnitOption("B", "x", "1"), UnitOption("A", "y", "2")]
    assert [o["section"] for o in options_json(options)] == ["B", "A"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(None, [], id="no options"),
        pytest.param([], [], id="an empty list"),
        pytest.param(
            [{"section": "Service", "name": "ExecStart", "value": "/bin/true"}],
            [UnitOption("Service", "ExecStart", "/bin/true")],
            id="one option",
        ),
        pytest.param([{"name": "A"}], [UnitOption("", "A", "")], id="missing fields are empty strings"),
    ],
)
def test_parse_options(raw: Any, expected: list[UnitOption]) -> None:
    assert parse_options(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param("x", "unable to decode body: options must be a list", id="not a list"),
        pytest.param(["x"], "unable to decode body: options[0] must be an object", id="not an object"),
        pytest.param(
            [{"section": "S", "name": 1, "value": "v"}],
            "unable to decode body: options[0].name must be a string",
            id="a number",
        ),
    ],
)
def test_parse_options_refuses(raw: Any, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_options(raw)
    assert str(caught.value) == message
