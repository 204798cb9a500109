"""fleetctl's output formats (FLEET-SPEC §1.1, §1.4): tab-padded tables and machine legends. Pure code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def tabwrite(rows: Sequence[Sequence[str]], *, tabwidth: int = 8, padding: int = 1) -> str:
    """Go's ``tabwriter.NewWriter(out, 0, 8, 1, '\\t', 0)``: every column but the last is padded with TAB
    characters to the next multiple of ``tabwidth`` after its widest cell plus ``padding``."""
    if not rows:
        return ""
    columns = max(len(r) for r in rows)
    widths = [0] * columns
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))
    widths = [-(-(w + padding) // tabwidth) * tabwidth for w in widths]
    lines = []
    for row in rows:
        out = []
        for i, cell in enumerate(row):
            if i < len(row) - 1:
                out.append(cell + "\t" * -(-(widths[i] - len(cell)) // tabwidth))
            else:
                out.append(cell)
        lines.append("".join(out))
    return "\n".join(lines) + "\n"


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
