"""fleetpyctl plan and set-metadata (fleetpy's own commands) against a real API process.

Machines and placements are written into etcd as the agents and the engine would write them; ``plan`` must
write nothing, ``set-metadata`` only the machine's dynamic metadata.
"""

from __future__ import annotations

import json

import pytest

from fleetpy.registry.etcd import EtcdClient
from fleetpy.registry.store import EtcdRegistry
from tests.api.seeding import add_machine, place
from tests.cli.conftest import Ctl

M1 = "4d3895379ed84e6c9c4a2d5b9b6a1f01"
M2 = "4d38aaaa9ed84e6c9c4a2d5b9b6a1f02"
M3 = "e793afb9c0d14f8e8a5a3c2b1d0e9f12"
SLEEP = "[Service]\nExecStart=/bin/sleep {}\n"


async def snapshot(client: EtcdClient, prefix: str) -> list[tuple[str, bytes, int]]:
    _, kvs = await client.get_prefix(prefix + "/")
    return [(kv.key, kv.value, kv.mod_revision) for kv in kvs]


@pytest.fixture
async def cluster(ctl: Ctl, registry: EtcdRegistry, files: str) -> None:
    """M1 (ssd) runs b, M2 (ssd) runs c, M3 (no disk) runs nothing."""
    await add_machine(registry, M1, "10.0.0.1", {"disk": "ssd"})
    await add_machine(registry, M2, "10.0.0.2", {"disk": "ssd"})
    await add_machine(registry, M3, "10.0.0.3")
    for name, machine in (("b.service", M1), ("c.service", M2)):
        with open(f"{files}/{name}", "w") as handle:
            handle.write(SLEEP.format(name))
        assert (await ctl("start", "--no-block", f"{files}/{name}")).code == 0
        await place(registry, name, machine)


@pytest.mark.usefixtures("cluster")
async def test_plan_shows_where_units_would_go_and_why_not_elsewhere(
    ctl: Ctl, files: str, client: EtcdClient, prefix: str
) -> None:
    with open(f"{files}/a.service", "w") as handle:
        handle.write(SLEEP.format("a") + "[X-Fleet]\nMachineMetadata=disk=ssd\nConflicts=b.service\n")
    before = await snapshot(client, prefix)
    result = await ctl("plan", f"{files}/a.service", "b.service")
    assert (result.code, result.err) == (0, "")
    assert result.out == (
        "a.service: would run on 4d38aaaa.../10.0.0.2\n"
        "\tMACHINE\t\t\tUNITS\tVERDICT\n"
        "\te793afb9.../10.0.0.3\t0\truled out by MachineMetadata: local Machine metadata insufficient\n"
        "\t4d389537.../10.0.0.1\t1\truled out by Conflicts: found conflict with locally-scheduled Unit(b.service)\n"
        "\t4d38aaaa.../10.0.0.2\t1\tchosen: the least loaded machine that passes every check\n"
        "b.service: runs on 4d389537.../10.0.0.1\n"
        "\tMACHINE\t\t\tUNITS\tVERDICT\n"
        "\te793afb9.../10.0.0.3\t0\tpasses every check\n"
        "\t4d389537.../10.0.0.1\t1\truns it and keeps it\n"
        "\t4d38aaaa.../10.0.0.2\t2\truled out by Conflicts: found conflict with locally-scheduled Unit(a.service)\n"
    )
    assert await snapshot(client, prefix) == before, "plan wrote to etcd"


@pytest.mark.usefixtures("cluster")
async def test_plan_lists_the_changes_it_makes_to_other_units(ctl: Ctl, files: str) -> None:
    with open(f"{files}/new.service", "w") as handle:
        handle.write(SLEEP.format("new") + "[X-Fleet]\nReplaces=b.service\nMachineMetadata=disk=ssd\n")
    result = await ctl("plan", f"{files}/new.service")
    assert (result.code, result.err) == (0, "")
    assert result.out == (
        "new.service: would run on 4d389537.../10.0.0.1\n"
        "\tMACHINE\t\t\tUNITS\tVERDICT\n"
        "\te793afb9.../10.0.0.3\t0\truled out by MachineMetadata: local Machine metadata insufficient\n"
        "\t4d389537.../10.0.0.1\t1\tchosen: the least loaded machine that passes every check\n"
        "\t4d38aaaa.../10.0.0.2\t1\tpasses every check, as many units, but its ID sorts after the chosen "
        "machine's\n"
        "Other changes the plan makes:\n"
        "\tb.service would leave 4d389537.../10.0.0.1: replaced by Unit(new.service)\n"
        "\tb.service would be placed on e793afb9.../10.0.0.3: target state launched and unit not scheduled\n"
    )


@pytest.mark.usefixtures("cluster")
async def test_plan_as_json_for_scripts(ctl: Ctl, files: str) -> None:
    with open(f"{files}/new.service", "w") as handle:
        handle.write(SLEEP.format("new") + "[X-Fleet]\nReplaces=b.service\nMachineMetadata=disk=ssd\n")
    result = await ctl("plan", "-o", "json", f"{files}/new.service")
    assert (result.code, result.err) == (0, "")
    assert json.loads(result.out) == {
        "units": [
            {
                "name": "new.service",
                "global": False,
                "machines": [M1],
                "kept": False,
                "reason": None,
                "verdicts": [
                    {
                        "machine": M3,
                        "load": 0,
                        "rule": "MachineMetadata",
                        "message": "local Machine metadata insufficient",
                    },
                    {"machine": M1, "load": 1, "rule": None, "message": None},
                    {"machine": M2, "load": 1, "rule": None, "message": None},
                ],
            }
        ],
        "actions": [
            {
                "type": "Schedule",
                "unit": "new.service",
                "machine": M1,
                "reason": "target state launched and unit not scheduled",
            },
            {"type": "Unschedule", "unit": "b.service", "machine": M1, "reason": "replaced by Unit(new.service)"},
            {
                "type": "Schedule",
                "unit": "b.service",
                "machine": M3,
                "reason": "target state launched and unit not scheduled",
            },
        ],
    }


@pytest.mark.usefixtures("cluster")
async def test_plan_of_a_unit_no_machine_can_run(ctl: Ctl, files: str) -> None:
    with open(f"{files}/x.service", "w") as handle:
        handle.write(SLEEP.format("x") + "[X-Fleet]\nMachineMetadata=cores>=64\n")
    result = await ctl("plan", "--full", f"{files}/x.service")
    assert result.code == 0
    assert result.out.splitlines()[0] == (
        "x.service: would run nowhere: no machine can run it: MachineMetadata ruled out 3 of 3 machines "
        "(local Machine metadata insufficient)"
    )
    assert f"\t{M3}/10.0.0.3\t0\truled out by MachineMetadata: local Machine metadata insufficient" in result.out


@pytest.mark.usefixtures("cluster")
async def test_plan_of_an_instance_uses_its_template(ctl: Ctl, files: str) -> None:
    with open(f"{files}/web@.service", "w") as handle:
        handle.write(SLEEP.format("%i") + "[X-Fleet]\nConflicts=web@*.service\nMachineMetadata=disk=ssd\n")
    assert (await ctl("submit", f"{files}/web@.service")).code == 0
    result = await ctl("plan", "web@1.service")  # no local file: the cluster's template
    assert result.code == 0
    assert result.out.startswith("web@1.service: would run on 4d389537.../10.0.0.1\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], "No units given", id="no units"),
        pytest.param(
            ["nothere.service"],
            "Error planning units: googleapi: Error 404: unit nothere.service does not exist and no options were given",
            id="a unit that is neither a file nor in the cluster",
        ),
    ],
)
async def test_plan_errors(ctl: Ctl, args: list[str], message: str) -> None:
    result = await ctl("plan", *args)
    assert (result.code, result.out, result.err) == (1, "", message + "\n")


@pytest.mark.usefixtures("cluster")
async def test_set_metadata_by_id_prefix_then_remove(ctl: Ctl, client: EtcdClient, prefix: str) -> None:
    result = await ctl("set-metadata", "e793", "role=web", "disk=nvme")
    assert (result.code, result.out, result.err) == (0, "e793afb9...\tdisk=nvme,role=web\n", "")
    result = await ctl("set-metadata", M3, "--remove", "role")
    assert (result.code, result.out) == (0, "e793afb9...\tdisk=nvme\n")
    listing = await ctl("list-machines", "--no-legend")
    assert "e793afb9...\t10.0.0.3\tdisk=nvme\n" in listing.out
    # only the machine's dynamic metadata was written: a removed key is a tombstone that hides it
    _, kvs = await client.get_prefix(f"{prefix}/machine-meta/")
    assert sorted(kv.key.rsplit("/", 2)[-1] for kv in kvs) == ["disk", "role"]


@pytest.mark.usefixtures("cluster")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["ffff", "a=b"], "Unable to set metadata: machine ffff does not exist", id="an unknown machine"),
        pytest.param(["4d38", "a=b"], "Unable to set metadata: 4d38 matches more than one machine", id="ambiguous"),
        pytest.param([M1], "No metadata given", id="nothing to set"),
        pytest.param([M1, "novalue"], "Invalid metadata 'novalue': expected KEY=VALUE", id="not an assignment"),
        pytest.param(
            [M1, "role="],
            "Invalid metadata 'role=': a value is required (use --remove role to remove the key)",
            id="an empty value",
        ),
        pytest.param(
            [M1, "a b=c"],
            "Unable to set metadata: googleapi: Error 400: machine metadata path invalid",
            id="a key the API refuses",
        ),
    ],
)
async def test_set_metadata_errors(ctl: Ctl, client: EtcdClient, prefix: str, args: list[str], message: str) -> None:
    before = await snapshot(client, prefix)
    result = await ctl("set-metadata", *args)
    assert (result.code, result.out, result.err) == (1, "", message + "\n")
    assert await snapshot(client, prefix) == before
