"""cloud-config, pure: reading one for ``fleetpyd --cloud-config``, and rendering one that makes a host a member.

Reading (``parse_cloud_config``): a ``#cloud-config`` YAML document in which ``$public_ipv4`` and
``$private_ipv4`` are replaced first (as coreos-cloudinit did, FLEET-SPEC §5.4). fleetpyd uses

* ``coreos.fleet``: CoreOS's fleet keys (``-`` and ``_`` alike), which become fleetpyd options;
* ``fleetpy``: any fleetpyd option (it wins over ``coreos.fleet``), and ``units``: units for the cluster,
  submitted (and by default launched) once the machine has joined;
* ``write_files``: files to write before anything else (``path``, ``content``, ``encoding``, ``permissions``,
  ``owner``, ``append``), as cloud-init writes them.

Other keys that cloud-init handles (``runcmd``, ``packages``, ``users``, ...) are left to it silently; keys that
neither knows, and keys fleetpyd does not use inside its sections, give warnings. Malformed YAML, a missing
header and unusable values are ``ConfigError``s.

Rendering (``render_cloud_config``): the Jinja2 templates shipped in ``fleetpy/templates`` (the caller reads
them), which are also the source of ``units/``.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2
import yaml

from fleetpy.config import OPTION_NAMES
from fleetpy.errors import ConfigError, InvalidUnit
from fleetpy.model import DesiredState
from fleetpy.unit import UnitFile, name_info, validate_unit

HEADER = "#cloud-config"
# CoreOS's coreos.fleet keys (coreos-cloudinit config/fleet.go), after "-" → "_".
COREOS_FLEET_KEYS = frozenset(
    "agent_ttl authorized_keys_file disable_engine engine_reconcile_interval etcd_cafile etcd_certfile etcd_keyfile "
    "etcd_key_prefix etcd_request_timeout etcd_servers etcd_username etcd_password metadata public_ip token_limit "
    "verbosity verify_units".split()
)
# Top-level keys cloud-init (or coreos-cloudinit) handles itself: not fleetpyd's business, and not unknown.
CLOUD_INIT_KEYS = frozenset(
    "apt apt_preserve_sources_list bootcmd ca_certs ca-certs chpasswd disable_root disk_setup final_message fqdn "
    "fs_setup groups growpart hostname locale manage_etc_hosts mounts ntp package_reboot_if_required "
    "package_update package_upgrade packages password phone_home power_state preserve_hostname resize_rootfs "
    "rsyslog runcmd snap ssh ssh_authorized_keys ssh_deletekeys ssh_genkeytypes ssh_keys ssh_pwauth swap "
    "timezone user users yum_repos manage_resolv_conf resolv_conf write_metadata merge_how".split()
)
WRITE_FILE_KEYS = frozenset({"path", "content", "encoding", "permissions", "owner", "append", "defer"})
UNIT_KEYS = frozenset({"name", "content", "desired"})


@dataclass(frozen=True, slots=True)
class WriteFile:
    path: str
    content: bytes
    permissions: int | None = None  # None: 0644 for a new file, unchanged for an existing one
    owner: str = ""  # "user[:group]", "" keeps the writer's
    append: bool = False


@dataclass(frozen=True, slots=True)
class CloudUnit:
    """A unit for the cluster, submitted once the machine has joined."""

    name: str
    unit: UnitFile
    desired: DesiredState = DesiredState.LAUNCHED


@dataclass(frozen=True)
class CloudConfig:
    options: Mapping[str, str] = field(default_factory=dict)  # fleetpyd options, as the config file has them
    write_files: tuple[WriteFile, ...] = ()
    units: tuple[CloudUnit, ...] = ()
    warnings: tuple[str, ...] = ()


def substitute(text: str, *, public_ipv4: str, private_ipv4: str) -> tuple[str, list[str]]:
    """``$public_ipv4``/``$private_ipv4`` (also ``${...}``) replaced; warnings for those that are unknown."""
    warnings = []
    values = {"public_ipv4": public_ipv4, "private_ipv4": private_ipv4}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if not values[name]:
            warnings.append(f"${name} is unknown on this machine (set COREOS_{name.upper()}): replaced by ''")
        return values[name]

    result = re.sub(r"\$\{(public_ipv4|private_ipv4)\}|\$(public_ipv4|private_ipv4)\b", replace, text)
    return result, sorted(set(warnings))


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return ",".join(str(v) for v in value)
    if where.endswith(".metadata") and isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    raise ConfigError(f"{where}: expected a string, a number or a boolean, got {type(value).__name__}")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def _decode_content(content: Any, encoding: str, where: str) -> bytes:
    steps = {
        "": [], "text/plain": [], "b64": ["b64"], "base64": ["b64"], "gz": ["gz"], "gzip": ["gz"],
        "gz+b64": ["b64", "gz"], "gzip+b64": ["b64", "gz"], "gz+base64": ["b64", "gz"], "gzip+base64": ["b64", "gz"],
    }.get(encoding.lower())  # fmt: skip
    if steps is None:
        raise ConfigError(f"{where}.encoding: unknown encoding {encoding!r} (b64, gzip or gz+b64)")
    if content is None:
        return b""
    if isinstance(content, bytes):  # YAML's !!binary
        raw = content
    elif isinstance(content, str):
        raw = content.encode()
    else:
        raise ConfigError(f"{where}.content: expected text, got {type(content).__name__}")
    try:
        for step in steps:
            raw = base64.b64decode(raw, validate=False) if step == "b64" else gzip.decompress(raw)
    except (binascii.Error, OSError, EOFError) as exc:
        raise ConfigError(f"{where}.content: cannot decode it as {encoding}: {exc}") from None
    return raw


def _read_options(
    entries: Mapping[str, Any], known: Collection[str], where: str, options: dict[str, str], warnings: list[str]
) -> None:
    """fleetpyd options from a section (``a-b`` spells ``a_b``): unknown keys are warned about and skipped,
    null values left out."""
    for raw_key, value in entries.items():
        key = raw_key.replace("-", "_")
        if key not in known:
            warnings.append(f"unknown key {where}.{raw_key} - ignoring")
            continue
        if value is not None:
            options[key] = _scalar(value, f"{where}.{raw_key}")


def _write_file(entry: Any, where: str, warnings: list[str]) -> WriteFile:
    item = _mapping(entry, where)
    for key in sorted(set(item) - WRITE_FILE_KEYS):
        warnings.append(f"unknown key {where}.{key} - ignoring")
    path = item.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(f"{where}.path: expected an absolute path, got {path!r}")
    permissions = item.get("permissions")
    mode: int | None = None
    if isinstance(permissions, int) and not isinstance(permissions, bool):
        mode = permissions  # YAML reads 0644 as an octal number already
    elif isinstance(permissions, str):
        try:
            mode = int(permissions, 8)
        except ValueError:
            raise ConfigError(
                f"{where}.permissions: expected an octal mode such as '0644', got {permissions!r}"
            ) from None
    elif permissions is not None:
        raise ConfigError(f"{where}.permissions: expected an octal mode such as '0644'")
    encoding = item.get("encoding") or ""
    return WriteFile(
        path=path,
        content=_decode_content(item.get("content"), str(encoding), where),
        permissions=mode,
        owner=str(item.get("owner") or ""),
        append=bool(item.get("append", False)),
    )


def _unit(entry: Any, where: str, warnings: list[str]) -> CloudUnit:
    item = _mapping(entry, where)
    for key in sorted(set(item) - UNIT_KEYS):
        warnings.append(f"unknown key {where}.{key} - ignoring")
    name, content = item.get("name"), item.get("content")
    if not isinstance(name, str) or not isinstance(content, str):
        raise ConfigError(f"{where}: a unit needs a name and a content (its unit file)")
    try:
        desired = DesiredState.parse(str(item.get("desired", "launched")))
        unit = UnitFile.from_text(content)
        validate_unit(name, unit)
        if desired != DesiredState.INACTIVE and name_info(name).is_template:
            raise InvalidUnit(f'cannot activate template "{name}"')
    except (ValueError, InvalidUnit) as exc:
        raise ConfigError(f"{where} ({name}): {exc}") from None
    return CloudUnit(name, unit, desired)


def parse_cloud_config(text: str, *, source: str, public_ipv4: str = "", private_ipv4: str = "") -> CloudConfig:
    """What fleetpyd takes from a cloud-config (module docstring). ``source`` names the file in messages."""
    first = text.lstrip("\ufeff").split("\n", 1)[0].strip()
    if first != HEADER:
        raise ConfigError(f"{source}: not a cloud-config: its first line must be {HEADER!r}, not {first[:40]!r}")
    text, warnings = substitute(text, public_ipv4=public_ipv4, private_ipv4=private_ipv4)
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: malformed YAML: {exc}") from None
    top = _mapping(document, source)
    options: dict[str, str] = {}
    for key in sorted(set(top) - {"coreos", "fleetpy", "write_files"} - CLOUD_INIT_KEYS):
        warnings.append(f"unknown key {key!r} in {source} - ignoring")

    coreos = _mapping(top.get("coreos"), "coreos")
    for key in sorted(set(coreos) - {"fleet"}):
        warnings.append(f"coreos.{key} is not handled by fleetpyd - ignoring")
    _read_options(_mapping(coreos.get("fleet"), "coreos.fleet"), COREOS_FLEET_KEYS, "coreos.fleet", options, warnings)

    own = _mapping(top.get("fleetpy"), "fleetpy")
    units_entry = own.pop("units", None)
    _read_options(own, OPTION_NAMES, "fleetpy", options, warnings)

    if units_entry is not None and not isinstance(units_entry, list):
        raise ConfigError("fleetpy.units: expected a list of units ({name, content[, desired]})")
    units = tuple(_unit(u, f"fleetpy.units[{i}]", warnings) for i, u in enumerate(units_entry or []))
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        raise ConfigError(f"fleetpy.units: a unit is listed twice ({', '.join(sorted(names))})")

    files_entry = top.get("write_files")
    if files_entry is not None and not isinstance(files_entry, list):
        raise ConfigError("write_files: expected a list of files ({path, content, ...})")
    files = tuple(_write_file(f, f"write_files[{i}]", warnings) for i, f in enumerate(files_entry or []))
    return CloudConfig(options=options, write_files=files, units=units, warnings=tuple(warnings))


# ------------------------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class MemberConfig:
    """What ``fleetpyctl cloud-config`` asks for: how the new host reaches the cluster, and what it brings."""

    etcd_servers: tuple[str, ...]
    prefix: str = "/fleetpy"
    metadata: str = ""
    options: Sequence[tuple[str, str]] = ()  # more fleetpyd options, for the cloud-config's fleetpy section
    units: Sequence[tuple[str, str]] = ()  # (name, unit file) for the cluster
    tls: Mapping[str, str] = field(default_factory=dict)  # "ca", "cert", "key" → PEM text
    install: str = "fleetpy"  # what pip installs
    venv: str = "/opt/fleetpy"
    user_data: str = "/var/lib/cloud/instance/user-data.txt"  # where cloud-init keeps this file on the host


TLS_DIR = "/etc/fleetpy/tls"
DEFAULT_ARGUMENTS = "--config /etc/fleetpy/fleetpy.conf"


def _environment(templates: Mapping[str, str]) -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.DictLoader(dict(templates)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    environment.filters["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)
    return environment


def render_unit_files(
    templates: Mapping[str, str],
    *,
    fleetpyd: str = "/usr/local/bin/fleetpyd",
    arguments: str = DEFAULT_ARGUMENTS,
    api_socket: str = "/run/fleetpy/fleetpy.sock",
    config: MemberConfig | None = None,
) -> dict[str, str]:
    """``fleetpyd.service``, ``fleetpyd.socket`` and ``fleetpy.conf``; with the defaults, ``units/``'s files."""
    environment = _environment(templates)
    tls = config.tls if config else {}
    conf = {
        "generated": config is not None,
        "etcd_servers": config.etcd_servers if config else ("http://127.0.0.1:2379",),
        "prefix": config.prefix if config else "/fleetpy",
        "metadata": config.metadata if config else "",
        "tls": {f"etcd_{name}file": f"{TLS_DIR}/{name}.pem" for name in ("ca", "cert", "key") if name in tls},
    }
    return {
        "fleetpyd.service": environment.get_template("fleetpyd.service.j2").render(
            fleetpyd=fleetpyd, arguments=arguments
        ),
        "fleetpyd.socket": environment.get_template("fleetpyd.socket.j2").render(api_socket=api_socket),
        "fleetpy.conf": environment.get_template("fleetpy.conf.j2").render(conf),
    }


def render_cloud_config(templates: Mapping[str, str], config: MemberConfig) -> str:
    """A cloud-config that installs fleetpy on a fresh host, writes its configuration and units, and starts
    ``fleetpyd``, which reads the same file (``--cloud-config``) for its ``coreos.fleet``/``fleetpy`` sections."""
    fleetpyd = f"{config.venv}/bin/fleetpyd"
    files = render_unit_files(
        templates, fleetpyd=fleetpyd, arguments=f"{DEFAULT_ARGUMENTS} --cloud-config {config.user_data}", config=config
    )
    tls_files = {f"{TLS_DIR}/{name}.pem": config.tls[name] for name in ("ca", "cert", "key") if name in config.tls}
    text = (
        _environment(templates)
        .get_template("cloud-config.yaml.j2")
        .render(
            config=config,
            fleetpyd=fleetpyd,
            files=files,
            tls_files=tls_files,
            fleetpy_options=list(config.options),
        )
    )
    parse_cloud_config(text, source="the generated cloud-config", public_ipv4="192.0.2.1")  # it must read back
    return text
