"""fleetpyd's configuration: one ``Settings`` object built from a file, the environment and flags.

Pure code: the caller reads the file and passes its text and ``os.environ``. Sources rise in priority
file < ``FLEETPY_<OPTION>`` environment < command-line flags, as in fleet (FLEET-SPEC §5.1). The file format is
fleet's: an INI file whose unsectioned part holds ``option = value`` lines, values bare or quoted, ``#``/``;``
comments. Unlike fleet, a value that cannot be used is an error naming the option and the source, never
silently replaced by the default.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from fleetpy.errors import ConfigError
from fleetpy.keys import DEFAULT_PREFIX

DEFAULT_CONFIG_FILE = "/etc/fleetpy/fleetpy.conf"
ENV_PREFIX = "FLEETPY_"
DEFAULT_API_SOCKET = "/run/fleetpy/fleetpy.sock"
DEFAULT_DEV_STATE_DIR = "/tmp/fleetpy-dev"  # fleetpyd dev; not under /run, which each sandbox host replaces


@dataclass(frozen=True)
class Settings:
    """Every option of fleetpyd, with its default. Option names follow fleet's where fleet has one."""

    etcd_servers: tuple[str, ...] = ("http://127.0.0.1:2379",)
    etcd_key_prefix: str = DEFAULT_PREFIX
    etcd_username: str = ""
    etcd_password: str = ""
    etcd_cafile: str = ""
    etcd_certfile: str = ""
    etcd_keyfile: str = ""
    etcd_request_timeout: float = 3.0
    agent_ttl: int = 10
    leader_ttl: int = 5
    engine_reconcile_interval: float = 5.0
    agent_reconcile_interval: float = 5.0
    public_ip: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    machine_id: str = ""
    machine_id_file: str = "/etc/machine-id"
    runtime_directory: str = ""  # default: /run/fleetpy, or $XDG_RUNTIME_DIR/fleetpy with systemd_user
    units_directory: str = ""  # default: <runtime_directory>/units
    systemd_user: bool = False
    api_socket: str = DEFAULT_API_SOCKET  # "" disables the unix socket
    api_socket_mode: int = 0o660
    api_socket_group: str = ""  # group (name or number) of the unix socket; "" keeps the daemon's
    api_listen: tuple[str, ...] = ()  # host:port TCP listeners
    api_tls_cert_file: str = ""  # TLS for the TCP listeners: the server's certificate and key
    api_tls_key_file: str = ""
    api_tls_client_ca_file: str = ""  # clients may authenticate with a certificate this CA signed
    api_tokens_file: str = ""  # bearer tokens, one per line, that authenticate clients of the TCP listeners
    api_allow_insecure_tcp: bool = False  # allow plain HTTP listeners on addresses that are not loopback
    unit_allow: tuple[str, ...] = ()  # unit-name patterns this machine may run ("" or empty: any)
    unit_deny: tuple[str, ...] = ()  # unit-name patterns this machine never runs (wins over unit_allow)
    token_limit: int = 100
    disable_engine: bool = False
    disable_agent: bool = False
    disable_watches: bool = False
    verbosity: int = 0
    watch_dir: str = ""  # a directory whose unit files become units of the cluster ("" watches none)


_BOOL_TRUE = {"1", "t", "T", "TRUE", "true", "True", "yes", "on"}
_BOOL_FALSE = {"0", "f", "F", "FALSE", "false", "False", "no", "off", ""}
_DEPRECATED = {"verify_units", "authorized_keys_file", "enable_grpc"}


def parse_list(value: str) -> tuple[str, ...]:
    """fleet's list syntax: ``a,b`` or ``["a", "b"]``.

    fleet trims `` ["`` and ``"] `` off every item; fleetpy drops the brackets only around the whole list, so
    that bracketed IPv6 addresses such as ``[::1]:8080`` survive.
    """
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    items = []
    for item in text.split(","):
        item = item.strip(' "')
        if item:
            items.append(item)
    return tuple(items)


def parse_metadata(value: str) -> dict[str, str]:
    """fleet's metadata syntax ``k=v,k2=v2``: trimmed, items without ``=`` skipped, last duplicate wins."""
    result: dict[str, str] = {}
    for item in value.split(","):
        key, sep, val = item.partition("=")
        if sep and key.strip():
            result[key.strip()] = val.strip()
    return result


MIN_TOKEN_LENGTH = 16


def parse_tokens(text: str, source: str = "tokens file") -> frozenset[str]:
    """The bearer tokens of a tokens file: one per line; blank lines and ``#`` comments are skipped. A token
    shorter than 16 characters is refused (it could be guessed), as is one with spaces inside."""
    tokens = set()
    for number, line in enumerate(text.splitlines(), start=1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
            raise ConfigError(
                f"{source}, line {number}: a token must be at least {MIN_TOKEN_LENGTH} characters without spaces"
            )
        tokens.add(token)
    return frozenset(tokens)


def is_loopback(host: str) -> bool:
    """Whether a listen address is a loopback address (``127.0.0.0/8``, ``::1``, ``localhost``). Any other
    name counts as not loopback: what it resolves to may change."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_host(listen: str) -> str:
    return listen.rpartition(":")[0].strip("[]")


def parse_duration(value: str) -> float:
    """``10s``, ``1m30s``, ``500ms``, or a bare number of seconds."""
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {value!r} (examples: 10s, 1m30s, 500ms)")
    return sum(float(n) * units[u] for n, u in parts)


def _convert(name: str, raw: str, default: Any) -> Any:
    if name == "metadata":
        return parse_metadata(raw)
    if name in ("agent_ttl", "leader_ttl"):
        seconds = parse_duration(raw)
        if seconds < 1 or seconds != int(seconds):
            raise ValueError(f"{name} must be a whole number of seconds, at least 1 (got {raw!r})")
        return int(seconds)
    if name == "api_socket_mode":
        return int(raw, 8)
    if isinstance(default, bool):
        if raw in _BOOL_TRUE:
            return True
        if raw in _BOOL_FALSE:
            return False
        raise ValueError(f"expected a boolean (true or false), got {raw!r}")
    if isinstance(default, tuple):
        return parse_list(raw)
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return parse_duration(raw) if name.endswith(("interval", "timeout")) else float(raw)
    return raw


def parse_config_text(text: str, source: str = "config file") -> dict[str, str]:
    """The ``option = value`` pairs of fleet's INI format (only the part before any ``[section]``)."""
    result: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        while line.endswith("\\") and i < len(lines):  # as goini: each line trimmed, then joined
            line = line[:-1] + lines[i].strip()
            i += 1
        stripped = line
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("["):
            break
        key, sep, value = stripped.partition("=")
        if not sep:
            raise ConfigError(f"{source}, line {i}: expected 'option = value', got {stripped!r}")
        value = value.strip()
        if value[:1] in ("'", '"'):
            quote = value[0]
            end = value.find(quote, 1)
            if end == -1:
                raise ConfigError(f"{source}, line {i}: unterminated quoted value for {key.strip()!r}")
            value = value[1:end]
        else:
            value = re.split(r"[#;]", value, maxsplit=1)[0].strip()
        result[key.strip().lower().replace("-", "_")] = value
    return result


OPTION_NAMES = tuple(f.name for f in fields(Settings))


def build_settings(
    *,
    file_values: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    file_name: str = "config file",
    layers: Sequence[tuple[str, Mapping[str, str]]] = (),
) -> tuple[Settings, list[str]]:
    """Settings from the three sources in rising priority, and warnings (unknown or deprecated options).

    ``overrides`` are already-typed values from command-line flags; ``None`` values are ignored. ``layers``
    are further (source name, options) pairs between the file and the environment, such as a cloud-config's.
    """
    warnings: list[str] = []
    defaults = Settings()
    values: dict[str, Any] = {}

    def take(name: str, raw: str, source: str) -> None:
        if name in _DEPRECATED:
            warnings.append(f"Config option {name} is no longer supported - ignoring ({source})")
            return
        if name not in OPTION_NAMES:
            warnings.append(f"unknown option {name!r} in {source} - ignoring")
            return
        try:
            values[name] = _convert(name, raw, getattr(defaults, name))
        except ValueError as exc:
            raise ConfigError(f"invalid value for {name} in {source}: {exc}") from None

    for name, raw in (file_values or {}).items():
        take(name, raw, file_name)
    for source, layer in layers:
        for name, raw in layer.items():
            take(name, raw, source)
    for var, raw in sorted((environ or {}).items()):
        if var.startswith(ENV_PREFIX) and var not in ("FLEETPY_CONFIG", "FLEETPY_CLOUD_CONFIG"):
            take(var[len(ENV_PREFIX) :].lower(), raw, f"environment variable {var}")
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    settings = replace(defaults, **values)
    validate(settings)
    return settings, warnings


def validate(settings: Settings) -> None:
    if not settings.etcd_servers:
        raise ConfigError("etcd_servers is empty: give at least one etcd endpoint, e.g. http://127.0.0.1:2379")
    for server in settings.etcd_servers:
        # the host is a name, an IPv4 address or a bracketed IPv6 address, as the etcd adapter accepts
        if not re.fullmatch(r"(https?://)?([^/\s:\[\]]+|\[[0-9A-Fa-f:.]+\])(:\d+)?/?", server):
            raise ConfigError(f"invalid etcd endpoint {server!r}: expected http://host:port")
    if settings.agent_ttl < 3:
        raise ConfigError(f"agent_ttl must be at least 3s (got {settings.agent_ttl}s)")
    if settings.leader_ttl < 2:
        raise ConfigError(f"leader_ttl must be at least 2s (got {settings.leader_ttl}s)")
    if settings.engine_reconcile_interval <= 0 or settings.agent_reconcile_interval <= 0:
        raise ConfigError("reconcile intervals must be positive")
    if settings.token_limit < 1 or settings.token_limit > 65535:
        raise ConfigError(f"token_limit must be between 1 and 65535 (got {settings.token_limit})")
    if "/" in settings.machine_id:
        raise ConfigError(f"machine_id must not contain '/' (got {settings.machine_id!r})")
    for listen in settings.api_listen:
        if not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}", listen):
            raise ConfigError(f"invalid api_listen address {listen!r}: expected host:port")
    validate_api_security(settings)


def validate_api_security(settings: Settings) -> None:
    """The API's TCP listeners: TLS unless on loopback (or explicitly allowed), and always a way for clients to
    authenticate. The unix socket is protected by its file mode and group."""
    if bool(settings.api_tls_cert_file) != bool(settings.api_tls_key_file):
        raise ConfigError("api_tls_cert_file and api_tls_key_file must be given together")
    if settings.api_tls_client_ca_file and not settings.api_tls_cert_file:
        raise ConfigError("api_tls_client_ca_file needs TLS: set api_tls_cert_file and api_tls_key_file too")
    for listen in settings.api_listen:
        problem = tcp_listener_problem(settings, listen_host(listen), tls=bool(settings.api_tls_cert_file))
        if problem:
            raise ConfigError(f"api_listen {listen} {problem}")


def tcp_listener_problem(settings: Settings, host: str, *, tls: bool) -> str:
    """Why a TCP listener on ``host`` may not serve the API with these settings (``""``: it may)."""
    if not tls and not settings.api_allow_insecure_tcp and not is_loopback(host):
        return (
            "would serve the API over plain TCP on an address that is not loopback: set api_tls_cert_file and "
            "api_tls_key_file, or api_allow_insecure_tcp = true if something else protects that network"
        )
    if not (settings.api_tokens_file or settings.api_tls_client_ca_file):
        return (
            "needs a way to authenticate clients: api_tokens_file (bearer tokens) or api_tls_client_ca_file "
            "(client certificates)"
        )
    return ""
