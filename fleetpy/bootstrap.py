"""``fleetpyd --cloud-config``: what a cloud-config asks of the daemon beyond its options (``cloudconfig``
reads the file, purely).

* ``write_files`` are written before the daemon reads its configuration file, so that a cloud-config may
  write that file too. A file already as asked is left alone, so starting again changes nothing; others are
  written atomically (a temporary file renamed into place), parents created as needed.
* ``fleetpy.units`` are submitted once the machine has joined: a unit the cluster lacks is created with its
  desired state; one it has with the same content is left as it is (another host from the same cloud-config,
  or the user, may have changed its state since); one it has with other content is not replaced (a warning
  says so), because it was submitted by other means.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import tempfile
from collections.abc import Sequence

from fleetpy.cloudconfig import CloudUnit, WriteFile
from fleetpy.errors import ConfigError, TransientError
from fleetpy.model import UnitRecord
from fleetpy.registry.base import ApiRegistry
from fleetpy.retry import until_success

log = logging.getLogger(__name__)


def _owner(owner: str) -> tuple[int, int]:
    user, _, group = owner.partition(":")
    try:
        uid = pwd.getpwnam(user).pw_uid if user else -1
        gid = grp.getgrnam(group).gr_gid if group else -1
    except KeyError as exc:
        raise ConfigError(f"unknown user or group in owner {owner!r}: {exc}") from None
    return uid, gid


def write_file(entry: WriteFile) -> bool:
    """Write one file as cloud-init would; ``False`` if it already was as asked. ``ConfigError`` on failure."""
    path = entry.path
    mode = entry.permissions if entry.permissions is not None else 0o644
    try:
        os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
        if entry.append:
            with open(path, "ab") as handle:
                handle.write(entry.content)
        else:
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as handle:
                status = os.fstat(handle.fileno())
                if handle.read() == entry.content and (status.st_mode & 0o7777) == mode and not entry.owner:
                    return False
            fd, temporary = tempfile.mkstemp(prefix=".fleetpy-", dir=os.path.dirname(path))
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(entry.content)
                os.chmod(temporary, mode)
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
                raise
        if entry.owner:
            os.chown(path, *_owner(entry.owner))
    except OSError as exc:
        raise ConfigError(f"write_files: cannot write {path}: {exc.strerror or exc}") from None
    return True


def write_files(entries: Sequence[WriteFile]) -> list[str]:
    """Write every file in order; the paths that were written."""
    return [entry.path for entry in entries if write_file(entry)]


async def submit_units(registry: ApiRegistry, units: Sequence[CloudUnit]) -> None:
    """Submit the cloud-config's units (module docstring), retrying while etcd cannot be reached."""
    for cloud_unit in units:
        async for attempt in until_success(TransientError, log=log, what=f"submitting {cloud_unit.name}"):
            with attempt:
                await _submit(registry, cloud_unit)


async def _submit(registry: ApiRegistry, cloud_unit: CloudUnit) -> None:
    unit = cloud_unit.unit
    name = cloud_unit.name
    existing = await registry.get_unit(name)
    if existing is None:
        record = UnitRecord(name, unit.hash, cloud_unit.desired, unit.is_global, unit.xfleet)
        if await registry.create_unit(record, unit.text):
            log.info("cloud-config: submitted %s (%s)", name, cloud_unit.desired.value)
            return
        existing = await registry.get_unit(name)  # created at the same moment by someone else
    if existing is not None and existing.record.hash != unit.hash:
        log.warning("cloud-config: %s is already in the cluster with other content; it is not replaced", name)
    else:
        log.info("cloud-config: %s is already in the cluster", name)
