"""Facts about this host: its machine ID and the IP address it is reached at."""

from __future__ import annotations

import socket

from fleetpy.errors import ConfigError


def read_machine_id(path: str = "/etc/machine-id") -> str:
    try:
        with open(path) as handle:
            machine_id = handle.read().strip()
    except OSError as exc:
        raise ConfigError(f"unable to determine local machine ID: cannot read {path}: {exc.strerror}") from None
    if not machine_id or "/" in machine_id:
        raise ConfigError(f"unable to determine local machine ID: {path} holds no usable ID")
    return machine_id


def detect_public_ip() -> str:
    """The source address of the default route (found without sending a packet), or ``""``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: connect() on UDP only picks a route
            address = str(probe.getsockname()[0])
        except OSError:
            return ""
    return "" if address.startswith("127.") or address == "0.0.0.0" else address
