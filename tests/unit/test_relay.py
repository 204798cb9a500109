"""Status and journal requests (``fleetpy.relay``): what a machine is asked to run, and what is refused."""

from __future__ import annotations

import pytest

from fleetpy.relay import (
    BadRelayRequest,
    Kind,
    RelayRequest,
    chunk_key,
    command,
    decode_end,
    decode_request,
    encode_end,
    encode_request,
)


@pytest.mark.parametrize(
    ("request_", "user", "expected"),
    [
        pytest.param(
            RelayRequest(Kind.STATUS, "a.service"),
            False,
            ["systemctl", "status", "--full", "--no-pager", "--", "a.service"],
            id="status on the system manager",
        ),
        pytest.param(
            RelayRequest(Kind.STATUS, "a.service"),
            True,
            ["systemctl", "--user", "status", "--full", "--no-pager", "--", "a.service"],
            id="status on a user manager",
        ),
        pytest.param(
            RelayRequest(Kind.JOURNAL, "web@1.service", lines=50, output="cat"),
            False,
            ["journalctl", "--no-pager", "--lines", "50", "--output", "cat", "--unit=web@1.service"],
            id="journal of an instance",
        ),
        pytest.param(
            RelayRequest(Kind.JOURNAL, "a.service", follow=True),
            True,
            [
                "journalctl",
                "--no-pager",
                "--lines",
                "10",
                "--output",
                "short",
                "--unit=a.service",
                "--user-unit=a.service",
                "--follow",
            ],
            id="a followed journal on a user manager matches plain and user units",
        ),
        pytest.param(
            RelayRequest(Kind.RESTART, "-x.service"),
            False,
            ["systemctl", "restart", "--", "-x.service"],
            id="a name starting with a dash stays an argument",
        ),
    ],
)
def test_commands_are_argument_lists(request_: RelayRequest, user: bool, expected: list[str]) -> None:
    assert command(request_.check(), user=user) == expected


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        pytest.param(RelayRequest(Kind.STATUS, "a; rm -rf /"), "invalid unit name", id="not a unit name"),
        pytest.param(RelayRequest(Kind.STATUS, "$(reboot).service"), "invalid unit name", id="a substitution"),
        pytest.param(RelayRequest(Kind.JOURNAL, "a.service", lines=-1), "lines must be", id="negative lines"),
        pytest.param(RelayRequest(Kind.JOURNAL, "a.service", output="--all"), "invalid output mode", id="bad output"),
        pytest.param(RelayRequest(Kind.STATUS, "a.service", follow=True), "only the journal", id="follow status"),
    ],
)
def test_requests_that_are_refused(request_: RelayRequest, message: str) -> None:
    with pytest.raises(BadRelayRequest, match=message):
        request_.check()


def test_requests_round_trip_and_malformed_ones_are_refused() -> None:
    request = RelayRequest(Kind.JOURNAL, "a.service", lines=3, follow=True, output="json", lease=42)
    assert decode_request(encode_request(request)) == request
    for raw in (b"", b"{}", b'{"kind": "reboot", "unit": "a.service"}', b'{"kind": "status", "unit": "x"}'):
        with pytest.raises(BadRelayRequest):
            decode_request(raw)


def test_replies() -> None:
    assert [chunk_key(n) for n in (0, 1, 12345678)] == ["00000000", "00000001", "12345678"]
    assert decode_end(encode_end(3)) == (3, "")
    assert decode_end(encode_end(127, "cannot run journalctl")) == (127, "cannot run journalctl")
    assert decode_end(b"garbage") == (1, "malformed end of reply")
