"""Status and journal of a unit without SSH: the request an API process leaves for a machine, the commands the
machine's agent runs for it, and the replies it streams back. Pure code (no I/O).

The path (docs/architecture.md, "status and journal"): the API writes ``P/requests/<machine>/<id>`` on a lease
of its own; that machine's inspector (``fleetpy.inspector``), which watches only its own prefix, runs
``systemctl status`` or ``journalctl`` for the unit as an argument list (never through a shell) and writes the
output in chunks under ``P/replies/<id>/`` on the same lease. When the API is done (or its client went away,
or the API died) the lease goes, with it the request and every reply, and the inspector stops the command.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from fleetpy.errors import InvalidUnit
from fleetpy.unit import validate_name

# journalctl --output modes (systemd 252); anything else is refused before a request is written.
OUTPUT_MODES = (
    "short",
    "short-full",
    "short-iso",
    "short-iso-precise",
    "short-precise",
    "short-monotonic",
    "short-delta",
    "short-unix",
    "verbose",
    "export",
    "json",
    "json-pretty",
    "json-sse",
    "json-seq",
    "cat",
    "with-unit",
)
MAX_LINES = 100_000
STARTED = "started"  # reply key: the command runs (a machine that never writes it did not answer)
END = "end"  # reply key: the command ended; its value holds the exit code
CHUNK_DIGITS = 8  # reply keys of output chunks: zero-padded sequence numbers


class Kind(enum.StrEnum):
    STATUS = "status"  # systemctl status
    JOURNAL = "journal"  # journalctl
    RESTART = "restart"  # systemctl restart (fleetpyctl restart of a global unit, one machine at a time)


class BadRelayRequest(ValueError):
    """A status or journal request that cannot be run (the message says why)."""


@dataclass(frozen=True, slots=True)
class RelayRequest:
    """What an API process asks a machine to run for one unit. ``lease`` is the lease the request and its
    replies hang on."""

    kind: Kind
    unit: str
    lines: int = 10
    follow: bool = False
    output: str = "short"
    lease: int = 0

    def check(self) -> RelayRequest:
        """Itself, or ``BadRelayRequest``: the unit name must be a valid unit name (so it can never be read as
        an option), ``lines`` in range, ``output`` one of journalctl's modes."""
        try:
            validate_name(self.unit)
        except InvalidUnit as exc:
            raise BadRelayRequest(f"invalid unit name {self.unit!r}: {exc}") from None
        if not 0 <= self.lines <= MAX_LINES:
            raise BadRelayRequest(f"lines must be between 0 and {MAX_LINES}, got {self.lines}")
        if self.output not in OUTPUT_MODES:
            raise BadRelayRequest(f"invalid output mode {self.output!r}: expected one of {', '.join(OUTPUT_MODES)}")
        if self.follow and self.kind != Kind.JOURNAL:
            raise BadRelayRequest("only the journal can be followed")
        return self


def encode_request(request: RelayRequest) -> bytes:
    body = {
        "kind": request.kind.value,
        "unit": request.unit,
        "lines": request.lines,
        "follow": request.follow,
        "output": request.output,
        "lease": request.lease,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def decode_request(raw: bytes) -> RelayRequest:
    """The request, checked; ``ValueError`` (``BadRelayRequest``) if it is malformed."""
    try:
        body = json.loads(raw)
        request = RelayRequest(
            kind=Kind(body["kind"]),
            unit=str(body["unit"]),
            lines=int(body.get("lines", 10)),
            follow=bool(body.get("follow", False)),
            output=str(body.get("output", "short")),
            lease=int(body.get("lease", 0)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BadRelayRequest(f"malformed request: {exc}") from None
    return request.check()


def command(request: RelayRequest, *, user: bool) -> list[str]:
    """The argument list that answers ``request`` on the machine (fleetctl ran the same over SSH, FLEET-SPEC
    §1.4, §1.5). The unit is passed as one argument (``--unit=NAME`` or after ``--``), never parsed by a shell.

    With a user manager, units log either as user units (a ``systemd --user`` under ``user@.service``) or as
    plain units (a ``systemd --user`` at the root of its own cgroup namespace, as in sandbox hosts): both
    matches are asked for, which journalctl ORs."""
    systemctl = ["systemctl", *(["--user"] if user else [])]
    if request.kind == Kind.STATUS:
        return [*systemctl, "status", "--full", "--no-pager", "--", request.unit]
    if request.kind == Kind.RESTART:
        return [*systemctl, "restart", "--", request.unit]
    args = ["journalctl", "--no-pager", "--lines", str(request.lines), "--output", request.output]
    args.append(f"--unit={request.unit}")
    if user:
        args.append(f"--user-unit={request.unit}")
    if request.follow:
        args.append("--follow")
    return args


def chunk_key(sequence: int) -> str:
    return f"{sequence:0{CHUNK_DIGITS}d}"


def encode_end(code: int, error: str = "") -> bytes:
    body: dict[str, object] = {"code": code}
    if error:
        body["error"] = error
    return json.dumps(body, separators=(",", ":")).encode()


def decode_end(raw: bytes) -> tuple[int, str]:
    """(exit code, error message or ``""``) of an ``end`` reply; a malformed one reads as a failure."""
    try:
        body = json.loads(raw)
        return int(body["code"]), str(body.get("error", ""))
    except (ValueError, KeyError, TypeError):
        return 1, "malformed end of reply"
