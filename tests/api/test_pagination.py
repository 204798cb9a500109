"""Page tokens (FLEET-SPEC §4.4) with a small ``token_limit``, on every listing."""

from __future__ import annotations

import pytest

from fleetpy.api.schema import encode_token
from tests.api.conftest import V1, Api, MakeApi
from tests.api.seeding import add_machine, report

HELLO = "[Service]\nExecStart=/bin/sleep 100\n"


@pytest.fixture
async def small(make_api: MakeApi) -> Api:
    return await make_api(token_limit=2)


async def _collect(api: Api, path: str, key: str) -> tuple[list[list[str]], list[str]]:
    """Follow the tokens: (names per page, the tokens seen)."""
    pages, tokens = [], []
    url = V1 + path
    while True:
        reply = await api.get(url)
        assert reply.status == 200, reply.raw
        body = reply.json
        assert set(body) <= {key, "nextPageToken"}
        pages.append([item.get("name", item.get("id")) for item in body.get(key, [])])
        if "nextPageToken" not in body:
            return pages, tokens
        tokens.append(body["nextPageToken"])
        separator = "&" if "?" in path else "?"
        url = f"{V1}{path}{separator}nextPageToken={body['nextPageToken']}"


def test_tokens_are_fleets() -> None:
    assert encode_token(100, 2) == "ZAACAA=="
    assert encode_token(2, 2) == "AgACAA=="
    assert encode_token(19, 11852) == "EwBMLg=="


async def test_units_come_in_pages(small: Api) -> None:
    for i in range(5):
        assert (await small.put_text(f"u{i}.service", HELLO)).status == 201
    pages, tokens = await _collect(small, "/units", "units")
    assert pages == [["u0.service", "u1.service"], ["u2.service", "u3.service"], ["u4.service"]]
    assert tokens == ["AgACAA==", "AgADAA=="]


async def test_a_full_last_page_still_has_a_token_and_the_next_page_is_empty(small: Api) -> None:
    for i in range(4):
        assert (await small.put_text(f"u{i}.service", HELLO)).status == 201
    pages, _ = await _collect(small, "/units", "units")
    assert pages == [["u0.service", "u1.service"], ["u2.service", "u3.service"], []]
    assert (await small.get(V1 + "/units?nextPageToken=AgADAA==")).raw == b"{}"


async def test_machines_come_in_pages(small: Api) -> None:
    for machine in ("m3", "m1", "m2"):
        await add_machine(small.registry, machine)
    pages, tokens = await _collect(small, "/machines", "machines")
    assert pages == [["m1", "m2"], ["m3"]]
    assert tokens == ["AgACAA=="]


async def test_states_are_filtered_before_they_are_paged(small: Api) -> None:
    for name in ("a.service", "b.service", "c.service"):
        assert (await small.put_text(name, HELLO)).status == 201
    for machine in ("m1", "m2"):
        await add_machine(small.registry, machine)
        for name in ("a.service", "b.service", "c.service"):
            await report(small.registry, machine, name)
    pages, _ = await _collect(small, "/state?machineID=m2", "states")
    assert pages == [["a.service", "b.service"], ["c.service"]]
    pages, _ = await _collect(small, "/state", "states")
    assert [len(p) for p in pages] == [2, 2, 2, 0]


@pytest.mark.parametrize("path", ["/units", "/machines", "/state"])
@pytest.mark.parametrize(
    ("query", "message"),
    [
        pytest.param("nextPageToken=AgACAA==&nextPageToken=AgACAA==", "too many values for page token", id="two"),
        pytest.param("nextPageToken=", "EOF", id="empty"),
        pytest.param("nextPageToken=AgAC", "unexpected EOF", id="three bytes"),
        pytest.param("nextPageToken=AgA=", "unexpected EOF", id="two bytes"),
        pytest.param("nextPageToken=ZAACAA==", "token limit must be 2", id="another limit"),
        pytest.param("nextPageToken=AgAAAA==", "token page must be greater than zero", id="page zero"),
    ],
)
async def test_bad_tokens_are_400_with_fleets_messages(small: Api, path: str, query: str, message: str) -> None:
    await add_machine(small.registry, "m1")
    reply = await small.get(f"{V1}{path}?{query}")
    assert reply.status == 400
    assert reply.error == (400, message)


@pytest.mark.parametrize("path", ["/units", "/machines", "/state"])
@pytest.mark.parametrize("token", ["A", "ZAACAA", "Ag*CAA=="])
async def test_a_token_that_is_not_base64_is_400(small: Api, path: str, token: str) -> None:
    reply = await small.get(f"{V1}{path}?nextPageToken={token}")
    assert reply.status == 400
    assert reply.error[1].startswith("illegal base64 data")
