"""The agent's own unit directory: the files fleetpy wrote, and only those.

Files are written atomically (a temporary file renamed into place), so systemd never reads half a unit. The
directory is the agent's memory across restarts: what is in it is what this machine was running, and its
content hash says which version.
"""

from __future__ import annotations

import os

from fleetpy.errors import InvalidUnit
from fleetpy.unit import UNIT_TYPES, hash_text, validate_name


class UnitDirectory:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def ensure(self) -> None:
        os.makedirs(self.path, mode=0o755, exist_ok=True)

    def path_of(self, name: str) -> str:
        """The file of unit ``name``; ``InvalidUnit`` for a name that is not a unit name (no traversal)."""
        validate_name(name)
        return os.path.join(self.path, name)

    def write(self, name: str, text: str) -> str:
        """Write atomically: a dotfile beside the target (ignored by ``units``), renamed into place. Only this
        agent writes here (one agent per runtime directory), so a fixed temporary name cannot collide."""
        target = self.path_of(name)
        temporary = os.path.join(self.path, f".{name}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                os.fchmod(handle.fileno(), 0o644)
            os.replace(temporary, target)
        except BaseException:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
            raise
        return target

    def wrote(self, name: str, fragment: str) -> bool:
        """Whether systemd's file for ``name`` (its ``FragmentPath``) is this directory's file or a link to it
        (``LinkUnitFiles`` puts a link in the manager's runtime unit directory)."""
        ours = self.path_of(name)
        return fragment == ours or os.path.realpath(fragment) == ours

    def remove(self, name: str) -> None:
        try:
            os.unlink(self.path_of(name))
        except FileNotFoundError:
            pass

    def read(self, name: str) -> str | None:
        try:
            with open(self.path_of(name), encoding="utf-8") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def units(self) -> dict[str, str]:
        """Unit name → hash of the file's content, for every unit file in the directory."""
        result: dict[str, str] = {}
        try:
            entries = os.listdir(self.path)
        except FileNotFoundError:
            return result
        for name in entries:
            if name.startswith(".") or name.rpartition(".")[2] not in UNIT_TYPES:
                continue
            try:
                text = self.read(name)
            except (InvalidUnit, UnicodeDecodeError, OSError):
                continue
            if text is not None:
                result[name] = hash_text(text)
        return result
