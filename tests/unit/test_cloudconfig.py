"""cloud-config, pure: what fleetpyd takes from one (FLEET-SPEC §5.4), and the one ``fleetpyctl cloud-config``
renders."""

from __future__ import annotations

import base64
import gzip
import json

import pytest

from fleetpy.cli.cloudconfig import package_templates
from fleetpy.cloudconfig import MemberConfig, WriteFile, parse_cloud_config, render_cloud_config
from fleetpy.config import build_settings
from fleetpy.errors import ConfigError
from fleetpy.model import DesiredState

UNIT = "[Service]\nExecStart=/bin/sleep 100\n"


def parse(text: str, **ips: str):  # type: ignore[no-untyped-def]
    return parse_cloud_config("#cloud-config\n" + text, source="user-data", **ips)


def test_coreos_fleet_keys_with_dashes_or_underscores_become_options() -> None:
    cloud = parse(
        "coreos:\n  fleet:\n    etcd-servers: http://10.0.0.1:2379\n    public_ip: $public_ipv4\n"
        "    metadata: region=us-west\n    agent-ttl: 20s\n    disable_engine: true\n",
        public_ipv4="203.0.113.29",
    )
    assert cloud.options == {
        "etcd_servers": "http://10.0.0.1:2379",
        "public_ip": "203.0.113.29",
        "metadata": "region=us-west",
        "agent_ttl": "20s",
        "disable_engine": "true",
    }
    assert cloud.warnings == ()
    settings, warnings = build_settings(layers=[("cloud-config", cloud.options)])
    assert (settings.public_ip, settings.agent_ttl, settings.disable_engine, warnings) == ("203.0.113.29", 20, True, [])


def test_the_fleetpy_section_takes_any_option_and_wins_over_coreos_fleet() -> None:
    cloud = parse(
        "coreos:\n  fleet:\n    metadata: region=a\nfleetpy:\n  metadata: {region: b, disk: ssd}\n"
        "  watch-dir: /etc/fleetpy/units.d\n  etcd_servers: [http://a:2379, http://b:2379]\n"
    )
    assert cloud.options == {
        "metadata": "region=b,disk=ssd",
        "watch_dir": "/etc/fleetpy/units.d",
        "etcd_servers": "http://a:2379,http://b:2379",
    }


def test_private_ipv4_and_unknown_addresses() -> None:
    cloud = parse("fleetpy:\n  public_ip: ${private_ipv4}\n  metadata: ip=$public_ipv4\n", private_ipv4="10.1.2.3")
    assert cloud.options == {"public_ip": "10.1.2.3", "metadata": "ip="}
    assert cloud.warnings == ("$public_ipv4 is unknown on this machine (set COREOS_PUBLIC_IPV4): replaced by ''",)


def test_unknown_keys_warn_and_cloud_init_keys_are_left_to_it() -> None:
    cloud = parse(
        "runcmd: [[echo, hi]]\npackages: [curl]\nbogus: 1\ncoreos:\n  etcd2: {}\n  fleet:\n    nonsense: 1\n"
        "fleetpy:\n  colour: blue\n"
    )
    assert cloud.options == {}
    assert cloud.warnings == (
        "unknown key 'bogus' in user-data - ignoring",
        "coreos.etcd2 is not handled by fleetpyd - ignoring",
        "unknown key coreos.fleet.nonsense - ignoring",
        "unknown key fleetpy.colour - ignoring",
    )


def test_units_for_the_cluster() -> None:
    cloud = parse(
        "fleetpy:\n  units:\n"
        f"    - name: a.service\n      content: {json.dumps(UNIT)}\n"
        f"    - name: b@.service\n      desired: inactive\n      content: {json.dumps(UNIT)}\n"
    )
    assert [(u.name, u.desired, u.unit.text) for u in cloud.units] == [
        ("a.service", DesiredState.LAUNCHED, UNIT),
        ("b@.service", DesiredState.INACTIVE, UNIT),
    ]


def test_write_files_as_cloud_init_reads_them() -> None:
    packed = base64.b64encode(gzip.compress(b"zipped\n")).decode()
    cloud = parse(
        "write_files:\n"
        "  - path: /etc/a\n    content: plain\n    permissions: '0600'\n    owner: root:root\n"
        f"  - path: /etc/b\n    encoding: b64\n    content: {base64.b64encode(b'bytes').decode()}\n"
        f"  - path: /etc/c\n    encoding: gz+b64\n    content: {packed}\n    permissions: 0640\n    append: true\n"
    )
    assert cloud.write_files == (
        WriteFile("/etc/a", b"plain", 0o600, "root:root"),
        WriteFile("/etc/b", b"bytes"),
        WriteFile("/etc/c", b"zipped\n", 0o640, "", append=True),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("coreos: [unclosed\n", "user-data: malformed YAML", id="malformed YAML"),
        pytest.param("- a list\n", "user-data: expected a mapping", id="not a mapping"),
        pytest.param(
            "fleetpy:\n  units: [{name: a.service}]\n", "needs a name and a content", id="a unit without content"
        ),
        pytest.param(
            f"fleetpy:\n  units: [{{name: a.servICE, content: {json.dumps(UNIT)}}}]\n",
            "invalid unit type",
            id="a bad unit name",
        ),
        pytest.param(
            f"fleetpy:\n  units: [{{name: a@.service, content: {json.dumps(UNIT)}}}]\n",
            'cannot activate template "a@.service"',
            id="a template to launch",
        ),
        pytest.param("write_files:\n  - path: relative\n", "expected an absolute path", id="a relative path"),
        pytest.param("write_files:\n  - {path: /a, encoding: rot13}\n", "unknown encoding", id="an unknown encoding"),
        pytest.param("fleetpy:\n  metadata: [[a]]\n", "fleetpy.metadata: expected a string", id="a nested value"),
    ],
)
def test_unusable_cloud_configs_are_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r".*") as caught:
        parse(text)
    assert message in str(caught.value)


def test_the_header_is_required() -> None:
    with pytest.raises(ConfigError, match="first line must be '#cloud-config'"):
        parse_cloud_config("coreos: {}\n", source="user-data")


def test_a_generated_cloud_config_reads_back_with_what_was_asked() -> None:
    member = MemberConfig(
        etcd_servers=("https://10.0.0.1:2379", "https://10.0.0.2:2379"),
        prefix="/prod",
        metadata="region=eu,disk=ssd",
        options=[("agent_ttl", "20s")],
        units=[("web.service", UNIT + "\n[X-Fleet]\nMachineMetadata=region=eu\n")],
        tls={"ca": "CA PEM\n", "cert": "CERT PEM\n", "key": "KEY PEM\n"},
    )
    cloud = parse_cloud_config(render_cloud_config(package_templates(), member), source="x", public_ipv4="192.0.2.7")
    assert cloud.warnings == ()
    assert cloud.options == {
        "etcd_servers": "https://10.0.0.1:2379,https://10.0.0.2:2379",
        "etcd_key_prefix": "/prod",
        "metadata": "region=eu,disk=ssd",
        "public_ip": "192.0.2.7",
        "agent_ttl": "20s",
    }
    assert [u.name for u in cloud.units] == ["web.service"]
    files = {f.path: f for f in cloud.write_files}
    assert sorted(files) == [
        "/etc/fleetpy/fleetpy.conf",
        "/etc/fleetpy/tls/ca.pem",
        "/etc/fleetpy/tls/cert.pem",
        "/etc/fleetpy/tls/key.pem",
        "/etc/systemd/system/fleetpyd.service",
        "/etc/systemd/system/fleetpyd.socket",
    ]
    assert files["/etc/fleetpy/tls/key.pem"] == WriteFile("/etc/fleetpy/tls/key.pem", b"KEY PEM\n", 0o600)
    conf = files["/etc/fleetpy/fleetpy.conf"].content.decode()
    assert "etcd_keyfile = /etc/fleetpy/tls/key.pem\n" in conf
    assert "etcd_servers = https://10.0.0.1:2379,https://10.0.0.2:2379\n" in conf
    service = files["/etc/systemd/system/fleetpyd.service"].content.decode()
    assert (
        "ExecStart=/opt/fleetpy/bin/fleetpyd --config /etc/fleetpy/fleetpy.conf "
        "--cloud-config /var/lib/cloud/instance/user-data.txt\n" in service
    )
