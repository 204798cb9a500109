"""The hidden commands (FLEET-SPEC §1.4): ``verify``, deprecated, run as ``python -m fleetpy.cli.fleetpyctl``
subprocesses."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from fleetpy.cli.fleetpyctl import main
from tests.support import ROOT

FLEETPYCTL = [sys.executable, "-m", "fleetpy.cli.fleetpyctl"]


def fleetpyctl(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*FLEETPYCTL, *args], input=stdin, capture_output=True, cwd=ROOT, timeout=30, check=False)


# ---------------------------------------------------------------------------------------------- verify


@pytest.mark.parametrize("args", [(), ("hello.service",), ("a", "b", "--whatever")])
def test_verify_is_deprecated_and_exits_2(args: tuple[str, ...]) -> None:
    result = fleetpyctl("verify", *args)
    assert (result.returncode, result.stdout) == (2, b"")
    assert result.stderr.decode() == (
        'Command "verify" is deprecated, DEPRECATED - No longer works\n'
        "WARNING: The signed/verified units feature is DEPRECATED and cannot be used.\n"
    )


def test_the_hidden_commands_are_not_in_the_help() -> None:
    listed = CliRunner().invoke(main, ["--help"], prog_name="fleetpyctl").output
    commands = listed[listed.index("Commands:") :]
    assert "verify" not in commands
    assert "version" in commands
