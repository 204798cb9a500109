"""fleetctl's output formats (FLEET-SPEC §1.1, §1.4): tab-padded tables and machine legends. Pure code."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence


def tabwrite(rows: Sequence[Sequence[str]], *, tabwidth: int = 8, padding: int = 1) -> str:
    """What fleetctl prints for ``rows`` joined by TABs and newlines through Go's
    ``tabwriter.NewWriter(out, 0, 8, 1, '\\t', 0)``: each cell but a line's last is padded with TAB characters
    to the next multiple of ``tabwidth`` after the widest cell of its column block plus ``padding``.

    A column block is a run of consecutive lines that all have a cell in that column (Go's rule), and a cell
    that itself holds a TAB, vertical tab or newline splits as it would in fleetctl's output.
    """
    if not rows:
        return ""
    text = "".join("\t".join(row) + "\n" for row in rows)
    lines = [re.split("[\t\v]", line) for line in text.split("\n")]
    out: list[str] = []

    def write_lines(widths: list[int], start: int, stop: int) -> None:
        for i in range(start, stop):
            for j, cell in enumerate(lines[i]):
                out.append(cell)
                if j < len(widths):
                    cell_width = -(-widths[j] // tabwidth) * tabwidth
                    out.append("\t" * -(-(cell_width - len(cell)) // tabwidth))
            if i + 1 < len(lines):
                out.append("\n")

    def format_block(widths: list[int], start: int, stop: int) -> None:
        column = len(widths)
        this = start
        while this < stop:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            write_lines(widths, start, this)
            start = this
            width = 0
            while this < stop and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + padding)
                this += 1
            format_block([*widths, width], start, this)
            start = this
        write_lines(widths, start, stop)

    format_block([], 0, len(lines))
    return "".join(out)


def machine_id_legend(machine_id: str, full: bool) -> str:
    if full or len(machine_id) <= 8:
        return machine_id
    return f"{machine_id[:8]}..."


def machine_legend(machine_id: str, public_ips: Mapping[str, str], full: bool) -> str:
    """``4d389537.../10.0.0.1``: the (short) ID, and the public IP when the machine has one."""
    legend = machine_id_legend(machine_id, full)
    ip = public_ips.get(machine_id, "")
    return f"{legend}/{ip}" if ip else legend


def format_metadata(metadata: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(metadata.items())) or "-"


def check_fields(requested: str, valid: Sequence[str]) -> list[str]:
    """Parse ``--fields``; ``ValueError`` with fleetctl's messages."""
    fields = [f for f in requested.split(",")] if requested else []
    if not requested.strip():
        raise ValueError("Must define output format")
    for name in fields:
        if name not in valid:
            raise ValueError(f'Invalid key in output format: "{name}"')
    return fields
