"""fleetctl's tables and legends, byte for byte as fleet printed them (FLEET-SPEC §1.1, §1.4)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpy.cli.common import CliError
from fleetpy.cli.output import check_fields, format_metadata, machine_id_legend, machine_legend, tabwrite
from fleetpy.cli.remote import ssh_command
from fleetpy.cli.sshclient import SshOptions


def table(text: str) -> list[list[str]]:
    """The rows fleetctl wrote into its tabwriter to print ``text`` (cells were separated by one TAB)."""
    return [re.split(r"\t+", line) for line in text.splitlines()]


OBSERVED = [
    pytest.param(
        "UNIT\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET\nhello.service\t3750b3e\tlaunched\tlaunched\t4d389537.../10.0.0.1\n",
        id="list-unit-files of one unit",
    ),
    pytest.param(
        "MACHINE\t\tIP\t\tMETADATA\n4d389537...\t10.0.0.1\tdisk=ssd,region=us-east\ne793afb9...\t10.0.0.3\t-\n",
        id="list-machines",
    ),
    pytest.param(
        "UNIT\t\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET\n"
        "conflict.2.service\t52e8acb\tlaunched\tlaunched\te793afb9.../10.0.0.3\n"
        "conflict.3.service\t52e8acb\tlaunched\tinactive\t-\n"
        "global.service\t\ta1ea262\tlaunched\t-\t\tglobal\n",
        id="list-unit-files with a global unit",
    ),
    pytest.param(
        "UNIT\t\t\tMACHINE\t\t\tACTIVE\t\tSUB\n"
        "global@1.service\t4d389537.../10.0.0.1\tinactive\tdead\n"
        "goodbye.service\t\t4d389537.../10.0.0.1\tactive\t\trunning\n",
        id="list-units",
    ),
]


@pytest.mark.parametrize("observed", OBSERVED)
def test_tables_match_fleetctl_byte_for_byte(observed: str) -> None:
    assert tabwrite(table(observed)) == observed


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        pytest.param([], "", id="no rows print nothing"),
        pytest.param([["only"]], "only\n", id="one cell is printed as is"),
        pytest.param([["abcdefg", "x"]], "abcdefg\tx\n", id="seven characters take one tab"),
        pytest.param([["abcdefgh", "x"]], "abcdefgh\tx\n", id="eight characters plus padding take one tab"),
        pytest.param(
            [["abcdefg", "x"], ["abcdefgh", "y"]],
            "abcdefg\t\tx\nabcdefgh\ty\n",
            id="the widest cell sets the column width",
        ),
        pytest.param([["", "x"], ["ab", "y"]], "\tx\nab\ty\n", id="an empty cell is padded too"),
        pytest.param(
            [["aaaa", "b", "c"], ["xxxxxxxxxxxx", "y"], ["z"], ["p", "q"]],
            "aaaa\t\tb\tc\nxxxxxxxxxxxx\ty\nz\np\tq\n",
            id="a line without the column ends the column block as in Go",
        ),
        pytest.param(
            [["a", "b"], ["long description", "x"]],
            "a\t\t\tb\nlong description\tx\n",
            id="the last cell of a line is never padded",
        ),
        pytest.param(
            [["UNIT", "DESC"], ["a.service", "two\nlines"], ["b.service", "x"]],
            "UNIT\t\tDESC\na.service\ttwo\nlines\nb.service\tx\n",
            id="a newline inside a cell breaks the line and the column block",
        ),
        pytest.param(
            [["A", "B", "C"], ["a\tb", "c"]],
            "A\tB\tC\na\tb\tc\n",
            id="a tab inside a cell starts a new cell",
        ),
        pytest.param([["é", "x"], ["abcdefgh", "y"]], "é\t\tx\nabcdefgh\ty\n", id="width counts characters"),
    ],
)
def test_tabwrite(rows: list[list[str]], expected: str) -> None:
    assert tabwrite(rows) == expected


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.lists(
        st.lists(st.text(st.sampled_from("ab.-é"), max_size=12), min_size=3, max_size=3),
        min_size=1,
        max_size=6,
    )
)
def test_columns_start_at_the_same_tab_stop_on_every_line(rows: list[list[str]]) -> None:
    first = -(-(max(len(r[0]) for r in rows) + 1) // 8) * 8
    second = -(-(max(len(r[1]) for r in rows) + 1) // 8) * 8
    expected = "".join(r[0].ljust(first) + r[1].ljust(second) + r[2] + "\n" for r in rows)
    assert "\n".join(line.expandtabs(8) for line in tabwrite(rows).split("\n")) == expected


@pytest.mark.parametrize(
    ("machine", "ips", "full", "legend"),
    [
        pytest.param("4d389537a1b2c3d4", {"4d389537a1b2c3d4": "10.0.0.1"}, False, "4d389537.../10.0.0.1", id="short"),
        pytest.param(
            "4d389537a1b2c3d4", {"4d389537a1b2c3d4": "10.0.0.1"}, True, "4d389537a1b2c3d4/10.0.0.1", id="full"
        ),
        pytest.param("4d389537a1b2c3d4", {}, False, "4d389537...", id="short without an IP"),
        pytest.param("4d389537a1b2c3d4", {}, True, "4d389537a1b2c3d4", id="full without an IP"),
        pytest.param("short", {"short": "5.6.7.8"}, False, "short/5.6.7.8", id="a short ID is not shortened"),
        pytest.param("12345678", {}, False, "12345678", id="eight characters are not shortened"),
        pytest.param("123456789", {}, False, "12345678...", id="nine characters are"),
    ],
)
def test_machine_legend(machine: str, ips: dict[str, str], full: bool, legend: str) -> None:
    assert machine_legend(machine, ips, full) == legend
    assert machine_id_legend(machine, full) == legend.split("/")[0]


@pytest.mark.parametrize(
    ("metadata", "text"),
    [
        pytest.param({}, "-", id="no metadata is a dash"),
        pytest.param({"region": "us-east", "disk": "ssd"}, "disk=ssd,region=us-east", id="sorted by key"),
    ],
)
def test_format_metadata(metadata: dict[str, str], text: str) -> None:
    assert format_metadata(metadata) == text


VALID = ["machine", "ip", "metadata"]


@pytest.mark.parametrize(
    ("requested", "fields"),
    [
        pytest.param("machine,ip,metadata", ["machine", "ip", "metadata"], id="the default"),
        pytest.param("ip", ["ip"], id="one field"),
        pytest.param("ip,ip", ["ip", "ip"], id="a repeated field"),
    ],
)
def test_check_fields(requested: str, fields: list[str]) -> None:
    assert check_fields(requested, VALID) == fields


@pytest.mark.parametrize(
    ("requested", "message"),
    [
        pytest.param("", "Must define output format", id="empty"),
        pytest.param("foo", 'Invalid key in output format: "foo"', id="an unknown field"),
        pytest.param("ip,,machine", 'Invalid key in output format: ""', id="an empty field"),
        pytest.param("IP", 'Invalid key in output format: "IP"', id="fields are case sensitive"),
    ],
)
def test_check_fields_refuses(requested: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_fields(requested, VALID)


# ------------------------------------------------------------------------------------------------------------
# ssh: the machine's address comes from etcd and must never become an ssh option


SSH = SshOptions(username="core", timeout=10, strict_host_key_checking=True, known_hosts_file="", tunnel="")


@pytest.mark.parametrize("address", ["10.0.0.1", "fe80::1", "node-1.example.com"])
def test_ssh_command_ends_options_before_the_address(address: str) -> None:
    argv = ssh_command(address, SSH, port=22, forward_agent=False, tty=False, command=["uptime"])
    assert argv[-3:] == ["--", address, "uptime"]


@pytest.mark.parametrize(
    "address", ["-oProxyCommand=touch /tmp/x", "-p2222", "10.0.0.1 -v", "host;reboot", "", "a" * 300, "h\nx"]
)
def test_ssh_command_refuses_an_address_that_is_not_one(address: str) -> None:
    with pytest.raises(CliError, match="is not an IP address or host name"):
        ssh_command(address, SSH, port=22, forward_agent=False, tty=False, command=[])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_no_address_becomes_an_ssh_option(address: str) -> None:
    try:
        argv = ssh_command(address, SSH, port=22, forward_agent=False, tty=False, command=[])
    except CliError:
        return
    assert argv[-2:] == ["--", address]
    assert not address.startswith("-")
    assert not any(c.isspace() for c in address)
