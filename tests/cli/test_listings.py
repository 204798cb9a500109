"""list-machines, list-unit-files and list-units, byte for byte as fleetctl prints them (FLEET-SPEC §1.1, §1.4).

Machines, placements and unit states are written into etcd as the agents and the engine would write them
(there are none here), then listed through a real API process.
"""

from __future__ import annotations

import pytest

from fleetpy.model import DesiredState
from fleetpy.registry.store import EtcdRegistry
from fleetpy.unit import UnitFile
from tests.api.seeding import add_machine, explain, place, report
from tests.cli.conftest import Ctl

M1 = "4d3895379ed84e6c9c4a2d5b9b6a1f01"
M2 = "e793afb9c0d14f8e8a5a3c2b1d0e9f12"
M3 = "abc"  # 8 characters or fewer: never shortened
HELLO = "[Unit]\nDescription=Hello World\n\n[Service]\nExecStart=/bin/sleep 100\n"
GLOBAL = "[Service]\nExecStart=/bin/sleep 100\n\n[X-Fleet]\nGlobal=true\n"
TEMPLATE = "[Unit]\nDescription=Web %i\n\n[Service]\nExecStart=/bin/echo %i\n"


def short(text: str) -> str:
    return UnitFile.from_text(text).hash[:7]


def full(text: str) -> str:
    return UnitFile.from_text(text).hash


@pytest.fixture
async def machines(registry: EtcdRegistry) -> None:
    await add_machine(registry, M2, "10.0.0.3")
    await add_machine(registry, M1, "10.0.0.1", {"region": "us-east", "disk": "ssd"})
    await add_machine(registry, M3)


# ---------------------------------------------------------------------------------------------- list-machines

MACHINES = (
    "MACHINE\t\tIP\t\tMETADATA\n"
    "4d389537...\t10.0.0.1\tdisk=ssd,region=us-east\n"
    "abc\t\t-\t\t-\n"
    "e793afb9...\t10.0.0.3\t-\n"
)
MACHINES_FULL = (
    "MACHINE\t\t\t\t\tIP\t\tMETADATA\n"
    f"{M1}\t10.0.0.1\tdisk=ssd,region=us-east\n"
    "abc\t\t\t\t\t-\t\t-\n"
    f"{M2}\t10.0.0.3\t-\n"
)


@pytest.mark.usefixtures("machines")
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param([], MACHINES, id="default"),
        pytest.param(["--full"], MACHINES_FULL, id="--full"),
        pytest.param(["-l"], MACHINES_FULL, id="-l"),
        pytest.param(["--l"], MACHINES_FULL, id="--l, as fleetctl parses it"),
        pytest.param(
            ["--no-legend"],
            "4d389537...\t10.0.0.1\tdisk=ssd,region=us-east\nabc\t\t-\t\t-\ne793afb9...\t10.0.0.3\t-\n",
            id="--no-legend",
        ),
        pytest.param(
            ["--fields", "ip,machine"],
            "IP\t\tMACHINE\n10.0.0.1\t4d389537...\n-\t\tabc\n10.0.0.3\te793afb9...\n",
            id="--fields in another order",
        ),
        pytest.param(
            ["--fields=machine", "--no-legend", "--full"], f"{M1}\nabc\n{M2}\n", id="one column, nothing padded"
        ),
    ],
)
async def test_list_machines(ctl: Ctl, args: list[str], expected: str) -> None:
    result = await ctl("list-machines", *args)
    assert (result.code, result.out, result.err) == (0, expected, "")


async def test_list_machines_of_an_empty_cluster_prints_the_header(ctl: Ctl) -> None:
    result = await ctl("list-machines")
    assert (result.code, result.out) == (0, "MACHINE\tIP\tMETADATA\n")
    assert (await ctl("list-machines", "--no-legend")).out == ""


@pytest.mark.parametrize("command", ["list-machines", "list-unit-files", "list-units"])
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param("", "Must define output format", id="empty"),
        pytest.param("foo", 'Invalid key in output format: "foo"', id="unknown"),
        pytest.param("unit,foo", 'Invalid key in output format: "foo"', id="one unknown"),
        pytest.param("unit,", 'Invalid key in output format: ""', id="an empty field"),
    ],
)
async def test_bad_fields_are_refused(ctl: Ctl, command: str, fields: str, message: str) -> None:
    if command == "list-machines":
        fields = fields.replace("unit", "machine")
    result = await ctl(command, "--fields", fields)
    assert (result.code, result.out, result.err) == (1, "", message + "\n")


async def test_list_machines_when_the_api_cannot_be_reached(ctl: Ctl, workdir: str) -> None:
    result = await ctl("list-machines", env={"FLEETPYCTL_ENDPOINT": f"unix://{workdir}/gone.sock"})
    assert result.code == 1
    assert result.out == ""
    assert result.err == (
        f"Error retrieving list of active machines from fleet API (cannot reach the fleetpy API at "
        f"unix://{workdir}/gone.sock: No such file or directory)\n"
        "Possible issues:\n"
        "  etcd is unhealthy and/or lost quorum\n"
        "  connection cannot be established to any etcd servers\n"
    )


# ---------------------------------------------------------------------------------------------- list-unit-files


@pytest.fixture
async def units(ctl: Ctl, registry: EtcdRegistry, machines: None, files: str) -> None:
    """global (launched), hello (launched on M1), pending (launched, not placed), short (loaded on M3),
    web@ (a template)."""
    for name, text in (
        ("global.service", GLOBAL),
        ("hello.service", HELLO),
        ("pending.service", HELLO),
        ("short.service", HELLO),
        ("web@.service", TEMPLATE),
    ):
        with open(f"{files}/{name}", "w") as handle:
            handle.write(text)
        assert (await ctl("submit", f"{files}/{name}")).code == 0
    assert (await ctl("start", "--no-block", "global.service", "hello.service", "pending.service")).code == 0
    assert (await ctl("load", "--no-block", "short.service")).code == 0
    await place(registry, "hello.service", M1)
    await place(registry, "short.service", M3)
    await report(registry, M1, "hello.service")
    await report(registry, M3, "short.service", achieved=DesiredState.LOADED, active="inactive", sub="dead")
    await report(registry, M1, "global.service")
    await report(registry, M2, "global.service")


@pytest.mark.usefixtures("units")
async def test_list_unit_files(ctl: Ctl) -> None:
    h, g, t = short(HELLO), short(GLOBAL), short(TEMPLATE)
    result = await ctl("list-unit-files")
    assert (result.code, result.err) == (0, "")
    assert result.out == (
        "UNIT\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET\n"
        f"global.service\t{g}\tlaunched\t-\t\tglobal\n"
        f"hello.service\t{h}\tlaunched\tlaunched\t4d389537.../10.0.0.1\n"
        f"pending.service\t{h}\tlaunched\tinactive\t-\n"
        f"short.service\t{h}\tloaded\t\tloaded\t\tabc\n"
        f"web@.service\t{t}\tinactive\tinactive\t-\n"
    )


@pytest.mark.usefixtures("units")
async def test_list_unit_files_full(ctl: Ctl) -> None:
    result = await ctl("list-unit-files", "--full", "--no-legend", "--fields", "unit,hash,target")
    assert (result.code, result.err) == (0, "")
    assert result.out == (
        f"global.service\t{full(GLOBAL)}\tglobal\n"
        f"hello.service\t{full(HELLO)}\t{M1}/10.0.0.1\n"
        f"pending.service\t{full(HELLO)}\t-\n"
        f"short.service\t{full(HELLO)}\tabc\n"
        f"web@.service\t{full(TEMPLATE)}\t-\n"
    )


@pytest.mark.usefixtures("units")
async def test_list_unit_files_other_fields(ctl: Ctl) -> None:
    result = await ctl("list-unit-files", "--fields", "unit,desc,global,dstate")
    assert (result.code, result.err) == (0, "")
    assert result.out == (
        "UNIT\t\tDESC\t\tGLOBAL\tDSTATE\n"
        "global.service\t-\t\ttrue\tlaunched\n"
        "hello.service\tHello World\tfalse\tlaunched\n"
        "pending.service\tHello World\tfalse\tlaunched\n"
        "short.service\tHello World\tfalse\tloaded\n"
        "web@.service\tWeb %i\t\tfalse\tinactive\n"
    )


@pytest.mark.usefixtures("units")
async def test_list_unit_files_reason_says_why_a_unit_is_not_placed(ctl: Ctl, registry: EtcdRegistry) -> None:
    await explain(registry, "pending.service", "no machine can run it: Conflicts ruled out 3 of 3 machines (x)")
    result = await ctl("list-unit-files", "--fields", "unit,target,reason")
    assert (result.code, result.err) == (0, "")
    assert result.out == (
        "UNIT		TARGET			REASON\n"
        "global.service	global			-\n"
        "hello.service	4d389537.../10.0.0.1	-\n"
        "pending.service	-			no machine can run it: Conflicts ruled out 3 of 3 machines (x)\n"
        "short.service	abc			-\n"
        "web@.service	-			-\n"
    )


@pytest.mark.usefixtures("units")
async def test_tmachine_is_target_with_a_warning(ctl: Ctl) -> None:
    result = await ctl("list-unit-files", "--fields", "unit,tmachine", "--no-legend")
    assert result.code == 0
    assert result.err == 'WARNING: The "tmachine" field is deprecated. Use "target" instead\n'
    assert result.out.splitlines()[:2] == ["global.service\tglobal", "hello.service\t4d389537.../10.0.0.1"]
    assert (await ctl("list-unit-files", "--fields", "tmachine")).out.startswith("TMACHINE\n")


async def test_list_unit_files_of_an_empty_cluster(ctl: Ctl) -> None:
    result = await ctl("list-unit-files")
    assert (result.code, result.out, result.err) == (0, "UNIT\tHASH\tDSTATE\tSTATE\tTARGET\n", "")


# ---------------------------------------------------------------------------------------------- list-units


@pytest.mark.usefixtures("units")
async def test_list_units(ctl: Ctl) -> None:
    result = await ctl("list-units")
    assert (result.code, result.err) == (0, "")
    assert result.out == (
        "UNIT\t\tMACHINE\t\t\tACTIVE\t\tSUB\n"
        "global.service\t4d389537.../10.0.0.1\tactive\t\trunning\n"
        "global.service\te793afb9.../10.0.0.3\tactive\t\trunning\n"
        "hello.service\t4d389537.../10.0.0.1\tactive\t\trunning\n"
        "short.service\tabc\t\t\tinactive\tdead\n"
    )


@pytest.mark.usefixtures("units")
async def test_list_units_full_with_other_fields(ctl: Ctl) -> None:
    result = await ctl("list-units", "-l", "--fields", "unit,hash,load,machine", "--no-legend")
    assert (result.code, result.err) == (0, "")
    assert result.out == (
        f"global.service\t{full(GLOBAL)}\tloaded\t{M1}/10.0.0.1\n"
        f"global.service\t{full(GLOBAL)}\tloaded\t{M2}/10.0.0.3\n"
        f"hello.service\t{full(HELLO)}\tloaded\t{M1}/10.0.0.1\n"
        f"short.service\t{full(HELLO)}\tloaded\tabc\n"
    )
    short_hashes = await ctl("list-units", "--fields", "hash", "--no-legend")
    assert short_hashes.out == f"{short(GLOBAL)}\n{short(GLOBAL)}\n{short(HELLO)}\n{short(HELLO)}\n"


async def test_list_units_shows_missing_values_as_dashes(ctl: Ctl, registry: EtcdRegistry) -> None:
    await add_machine(registry, M1, "10.0.0.1")
    await report(registry, M1, "odd.service", unit_hash="", load="", active="", sub="")
    result = await ctl("list-units", "--fields", "unit,hash,load,active,sub")
    assert result.out == "UNIT\t\tHASH\tLOAD\tACTIVE\tSUB\nodd.service\t-\t-\t-\t-\n"


async def test_list_units_of_an_empty_cluster(ctl: Ctl) -> None:
    result = await ctl("list-units")
    assert (result.code, result.out, result.err) == (0, "UNIT\tMACHINE\tACTIVE\tSUB\n", "")


@pytest.mark.parametrize("command", ["list-unit-files", "list-units"])
async def test_listing_units_when_the_api_cannot_be_reached(ctl: Ctl, workdir: str, command: str) -> None:
    result = await ctl(command, env={"FLEETPYCTL_ENDPOINT": f"unix://{workdir}/gone.sock"})
    assert (result.code, result.out) == (1, "")
    assert result.err == (
        "Error retrieving list of units from repository: cannot reach the fleetpy API at "
        f"unix://{workdir}/gone.sock: No such file or directory\n"
    )
