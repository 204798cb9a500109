"""fleetpy's own error types.

Library exceptions (aetcd, grpc, dbus-next, aiohttp) are translated into these once, at the adapter boundary,
with ``raise ... from exc``. Loops decide what to swallow by class, the API maps classes to status codes in one
place, the CLI maps them to exit codes in one place::

    FleetError
    ├── TransientError            worth retrying: the world may look different in a moment
    │   ├── RegistryUnavailable   etcd cannot be reached or has no quorum
    │   ├── SystemdUnavailable    the systemd manager cannot be reached over D-Bus
    │   └── LeadershipLost        a fenced engine write was refused: another engine leads now
    ├── InvalidUnit               a unit name or unit file breaks fleet's rules (message is fleet's)
    ├── UnitNotFound              no unit of that name in the cluster
    ├── MachineNotFound           no machine of that ID in the cluster
    ├── Conflict                  a compare-and-swap lost, or a request contradicts the stored state
    ├── SystemdError              systemd refused a request (the D-Bus error name and message)
    ├── RegistryAccessDenied      etcd refused fleetpy's credentials or their permissions
    ├── Unauthorized              an API request without valid credentials (TCP listeners)
    └── ConfigError               a configuration file, variable or flag cannot be used
"""

from __future__ import annotations


class FleetError(Exception):
    """Base of every error fleetpy raises on purpose."""


class TransientError(FleetError):
    """Retrying later may succeed."""


class RegistryUnavailable(TransientError):
    """etcd cannot be reached, timed out, or has no quorum."""


class SystemdUnavailable(TransientError):
    """The systemd manager cannot be reached over D-Bus."""


class LeadershipLost(TransientError):
    """A write fenced on the engine leader key was refused."""


class InvalidUnit(FleetError):
    """A unit name or unit file breaks the rules; the message is the one fleet gives."""


class UnitNotFound(FleetError):
    """No unit of that name exists in the cluster."""


class MachineNotFound(FleetError):
    """No machine of that ID exists in the cluster."""


class Conflict(FleetError):
    """A compare-and-swap lost a race, or the request contradicts what is stored."""


class SystemdError(FleetError):
    """systemd answered a request with an error."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}" if message else name)
        self.name = name
        self.message = message


class RegistryAccessDenied(FleetError):
    """etcd refused the username and password, or the user lacks permission: retrying will not help."""


class Unauthorized(FleetError):
    """An API request on a TCP listener came with no valid client certificate or bearer token."""


class ConfigError(FleetError):
    """A configuration file, environment variable or flag cannot be used."""
