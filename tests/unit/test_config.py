"""fleetpyd's configuration: fleet's INI flavour, FLEETPY_* variables, flags, list and metadata syntax, and
clear errors (FLEET-SPEC §5.1–5.2)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpy.config import (
    Settings,
    build_settings,
    parse_config_text,
    parse_duration,
    parse_list,
    parse_metadata,
    parse_tokens,
)
from fleetpy.errors import ConfigError

# ------------------------------------------------------------------------------------------------------------
# The file format


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", {}, id="an empty file has no options"),
        pytest.param("public_ip=10.0.0.1\n", {"public_ip": "10.0.0.1"}, id="a bare value"),
        pytest.param("public_ip = 10.0.0.1  \n", {"public_ip": "10.0.0.1"}, id="spaces around are trimmed"),
        pytest.param('metadata="a=b, c=d"\n', {"metadata": "a=b, c=d"}, id="a double-quoted value"),
        pytest.param("metadata='a=b'\n", {"metadata": "a=b"}, id="a single-quoted value"),
        pytest.param('public_ip=" 10.0.0.1 "\n', {"public_ip": " 10.0.0.1 "}, id="quotes keep spaces"),
        pytest.param("public_ip=1.2.3.4 # the address\n", {"public_ip": "1.2.3.4"}, id="a hash ends a bare value"),
        pytest.param("public_ip=1.2.3.4;comment\n", {"public_ip": "1.2.3.4"}, id="a semicolon ends a bare value"),
        pytest.param(
            "units_directory='/run/a#b;c' # comment\n",
            {"units_directory": "/run/a#b;c"},
            id="comment characters inside quotes are kept",
        ),
        pytest.param("# comment\n; comment\n   # indented\n\n", {}, id="comment and blank lines"),
        pytest.param(
            "etcd_servers=http://a:2379,\\\nhttp://b:2379\n",
            {"etcd_servers": "http://a:2379,http://b:2379"},
            id="a trailing backslash continues the line",
        ),
        pytest.param(
            "metadata = a=1, \\   \n    b=2\n",
            {"metadata": "a=1, b=2"},
            id="continued lines are trimmed before they are joined as goini does",
        ),
        pytest.param(
            "# a comment \\\npublic_ip=1.2.3.4\n",
            {},
            id="a comment ending in a backslash swallows the next line as goini does",
        ),
        pytest.param("AGENT_TTL=10s\n", {"agent_ttl": "10s"}, id="keys are lower-cased"),
        pytest.param("agent-ttl=10s\n", {"agent_ttl": "10s"}, id="dashes in keys are underscores"),
        pytest.param("verbosity=1\nverbosity=2\n", {"verbosity": "2"}, id="the last assignment wins"),
        pytest.param(
            "verbosity=1\n[section]\nverbosity=2\npublic_ip=x\n",
            {"verbosity": "1"},
            id="sections are ignored",
        ),
        pytest.param("metadata=\n", {"metadata": ""}, id="an empty value"),
    ],
)
def test_parse_config_text(text: str, expected: dict[str, str]) -> None:
    assert parse_config_text(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "verbosity\n",
            "fleet.conf, line 1: expected 'option = value', got 'verbosity'",
            id="a line without an equals sign",
        ),
        pytest.param(
            "# ok\n\npublic_ip='10.0.0.1\n",
            "fleet.conf, line 3: unterminated quoted value for 'public_ip'",
            id="an unterminated quote",
        ),
    ],
)
def test_config_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, "fleet.conf")
    assert str(caught.value) == message


# ------------------------------------------------------------------------------------------------------------
# Lists, metadata, durations


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("http://a:2379", ("http://a:2379",), id="one endpoint"),
        pytest.param("http://a:2379,http://b:2379", ("http://a:2379", "http://b:2379"), id="comma separated"),
        pytest.param(
            '["http://a:2379", "http://b:2379"]', ("http://a:2379", "http://b:2379"), id="fleet's bracketed list"
        ),
        pytest.param("http://a:2379, http://b:2379 ,", ("http://a:2379", "http://b:2379"), id="spaces and empties"),
        pytest.param("", (), id="nothing"),
        pytest.param("[a, b]", ("a", "b"), id="a bracketed list without quotes"),
        pytest.param("[::1]:8080,[::2]:8080", ("[::1]:8080", "[::2]:8080"), id="bracketed IPv6 addresses survive"),
        pytest.param('["[::1]:8080", "10.0.0.1:80"]', ("[::1]:8080", "10.0.0.1:80"), id="IPv6 in a bracketed list"),
    ],
)
def test_parse_list(value: str, expected: tuple[str, ...]) -> None:
    assert parse_list(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("foo=bar, ping=pong", {"foo": "bar", "ping": "pong"}, id="fleet's example"),
        pytest.param("a=1,a=2", {"a": "2"}, id="the last duplicate wins"),
        pytest.param("a=1,junk,b=2", {"a": "1", "b": "2"}, id="items without an equals sign are skipped"),
        pytest.param("a=b=c", {"a": "b=c"}, id="only the first equals sign splits"),
        pytest.param(" a = 1 ", {"a": "1"}, id="keys and values are trimmed"),
        pytest.param("a=", {"a": ""}, id="an empty value is kept"),
        pytest.param("=x", {}, id="an empty key is skipped"),
        pytest.param("", {}, id="nothing"),
    ],
)
def test_parse_metadata(value: str, expected: dict[str, str]) -> None:
    assert parse_metadata(value) == expected


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("10s", 10.0, id="seconds"),
        pytest.param("1m30s", 90.0, id="minutes and seconds"),
        pytest.param("1h", 3600.0, id="an hour"),
        pytest.param("500ms", 0.5, id="milliseconds"),
        pytest.param("1.5s", 1.5, id="fractional seconds"),
        pytest.param("30", 30.0, id="a bare number is seconds"),
        pytest.param(" 2.5 ", 2.5, id="spaces around are ignored"),
    ],
)
def test_parse_duration(value: str, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "s", "10 s", "10S", "ten seconds", "1.2.3s", "-1s", "10x"])
def test_parse_duration_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


# ------------------------------------------------------------------------------------------------------------
# Sources and their priority


def test_defaults() -> None:
    settings, warnings = build_settings()
    assert settings == Settings()
    assert warnings == []
    assert settings.etcd_servers == ("http://127.0.0.1:2379",)
    assert settings.token_limit == 100


def test_environment_overrides_the_file_and_flags_override_both() -> None:
    settings, _ = build_settings(
        file_values={"verbosity": "1", "public_ip": "10.0.0.1", "token_limit": "50"},
        environ={"FLEETPY_VERBOSITY": "2", "FLEETPY_PUBLIC_IP": "10.0.0.2", "PATH": "/bin"},
        overrides={"verbosity": 3, "public_ip": None},
    )
    assert settings.token_limit == 50  # file only
    assert settings.public_ip == "10.0.0.2"  # environment over file; a None flag is no flag
    assert settings.verbosity == 3  # flag over both


def test_an_empty_environment_variable_still_overrides() -> None:
    settings, _ = build_settings(file_values={"public_ip": "10.0.0.1"}, environ={"FLEETPY_PUBLIC_IP": ""})
    assert settings.public_ip == ""


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        pytest.param(
            "etcd_servers", '["http://a:2379", "http://b:2379"]', ("http://a:2379", "http://b:2379"), id="list"
        ),
        pytest.param("metadata", "region=us, disk=ssd", {"region": "us", "disk": "ssd"}, id="metadata"),
        pytest.param("agent_ttl", "1m", 60, id="agent TTL as a duration"),
        pytest.param("agent_ttl", "15", 15, id="agent TTL as bare seconds"),
        pytest.param("engine_reconcile_interval", "2", 2.0, id="an interval as bare seconds"),
        pytest.param("engine_reconcile_interval", "500ms", 0.5, id="an interval as a duration"),
        pytest.param("etcd_request_timeout", "1.5", 1.5, id="a timeout"),
        pytest.param("systemd_user", "true", True, id="bool true"),
        pytest.param("systemd_user", "1", True, id="bool one"),
        pytest.param("systemd_user", "T", True, id="bool T as Go parses it"),
        pytest.param("disable_engine", "False", False, id="bool False"),
        pytest.param("disable_engine", "0", False, id="bool zero"),
        pytest.param("disable_engine", "", False, id="an empty bool is false"),
        pytest.param("token_limit", "19", 19, id="an integer"),
        pytest.param("api_socket_mode", "0600", 0o600, id="an octal mode"),
        pytest.param("unit_deny", "web-*, db@*.service", ("web-*", "db@*.service"), id="unit-name patterns"),
        pytest.param("etcd_servers", "http://[::1]:2379", ("http://[::1]:2379",), id="an IPv6 etcd endpoint"),
        pytest.param("etcd_key_prefix", "/custom/", "/custom/", id="a string"),
    ],
)
def test_values_are_converted(name: str, raw: str, expected: object) -> None:
    from_file, _ = build_settings(file_values={name: raw})
    from_env, _ = build_settings(environ={f"FLEETPY_{name.upper()}": raw})
    assert getattr(from_file, name) == expected
    assert getattr(from_env, name) == expected


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param(
            {"systemd_user": "maybe"},
            "invalid value for systemd_user in fleet.conf: expected a boolean (true or false), got 'maybe'",
            id="a bad boolean",
        ),
        pytest.param(
            {"token_limit": "lots"},
            "invalid value for token_limit in fleet.conf: invalid literal for int() with base 10: 'lots'",
            id="a bad integer",
        ),
        pytest.param(
            {"agent_ttl": "30"},
            None,
            id="a bare agent TTL is fine",
        ),
        pytest.param(
            {"agent_ttl": "1.5s"},
            "invalid value for agent_ttl in fleet.conf: agent_ttl must be a whole number of seconds, at least 1 "
            "(got '1.5s')",
            id="a fractional agent TTL",
        ),
        pytest.param(
            {"agent_ttl": "thirty"},
            "invalid value for agent_ttl in fleet.conf: invalid duration 'thirty' (examples: 10s, 1m30s, 500ms)",
            id="an agent TTL that is not a duration",
        ),
        pytest.param({"agent_ttl": "2s"}, "agent_ttl must be at least 3s (got 2s)", id="an agent TTL too short"),
        pytest.param({"leader_ttl": "1s"}, "leader_ttl must be at least 2s (got 1s)", id="a leader TTL too short"),
        pytest.param({"engine_reconcile_interval": "0"}, "reconcile intervals must be positive", id="a zero interval"),
        pytest.param({"token_limit": "0"}, "token_limit must be between 1 and 65535 (got 0)", id="no page size"),
        pytest.param(
            {"token_limit": "65536"},
            "token_limit must be between 1 and 65535 (got 65536)",
            id="a page size that does not fit a token",
        ),
        pytest.param(
            {"etcd_servers": ""},
            "etcd_servers is empty: give at least one etcd endpoint, e.g. http://127.0.0.1:2379",
            id="no etcd endpoint",
        ),
        pytest.param(
            {"etcd_servers": "unix:///run/etcd.sock"},
            "invalid etcd endpoint 'unix:///run/etcd.sock': expected http://host:port",
            id="an etcd endpoint that is not http",
        ),
        pytest.param(
            {"machine_id": "a/b"}, "machine_id must not contain '/' (got 'a/b')", id="a machine ID with a slash"
        ),
        pytest.param(
            {"api_listen": "8080"},
            "invalid api_listen address '8080': expected host:port",
            id="a listener without a host",
        ),
        pytest.param(
            {"api_socket_mode": "rw"},
            "invalid value for api_socket_mode in fleet.conf: invalid literal for int() with base 8: 'rw'",
            id="a socket mode that is not octal",
        ),
    ],
)
def test_bad_values_are_errors_naming_the_option(values: dict[str, str], message: str | None) -> None:
    if message is None:
        build_settings(file_values=values, file_name="fleet.conf")
        return
    with pytest.raises(ConfigError) as caught:
        build_settings(file_values=values, file_name="fleet.conf")
    assert str(caught.value) == message


def test_a_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="invalid value for verbosity in environment variable FLEETPY_VERBOSITY"):
        build_settings(environ={"FLEETPY_VERBOSITY": "loud"})


def test_flags_are_validated_too() -> None:
    with pytest.raises(ConfigError, match="agent_ttl must be at least 3s"):
        build_settings(overrides={"agent_ttl": 1})


def test_unknown_and_deprecated_options_are_warnings() -> None:
    settings, warnings = build_settings(
        file_values={"verify_units": "true", "no_such_option": "1", "verbosity": "1"},
        environ={"FLEETPY_AUTHORIZED_KEYS_FILE": "/x", "FLEETPY_BOGUS": "1", "FLEETPY_CONFIG": "/etc/x.conf"},
        file_name="fleet.conf",
    )
    assert settings.verbosity == 1
    assert warnings == [
        "Config option verify_units is no longer supported - ignoring (fleet.conf)",
        "unknown option 'no_such_option' in fleet.conf - ignoring",
        "Config option authorized_keys_file is no longer supported - ignoring "
        "(environment variable FLEETPY_AUTHORIZED_KEYS_FILE)",
        "unknown option 'bogus' in environment variable FLEETPY_BOGUS - ignoring",
    ]


def test_fleet_environment_variables_are_not_read() -> None:
    settings, warnings = build_settings(environ={"FLEET_PUBLIC_IP": "10.0.0.1", "FLEETPYCTL_ENDPOINT": "x"})
    assert settings.public_ip == ""
    assert warnings == []


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(st.sampled_from("ab=#;'\" \\\n[]"), max_size=40))
def test_parsing_raises_nothing_but_config_error(text: str) -> None:
    try:
        values = parse_config_text(text)
    except ConfigError:
        return
    assert all(key == key.lower() for key in values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param(
            {"api_listen": "127.0.0.1:8080,[::1]:8080", "api_tokens_file": "/t"},
            None,
            id="plain TCP on loopback with tokens",
        ),
        pytest.param(
            {
                "api_listen": "localhost:8080",
                "api_tls_cert_file": "/c",
                "api_tls_key_file": "/k",
                "api_tls_client_ca_file": "/ca",
            },
            None,
            id="TLS with client certificates",
        ),
        pytest.param(
            {"api_listen": "10.0.0.1:8080", "api_tokens_file": "/t", "api_allow_insecure_tcp": "true"},
            None,
            id="plain TCP elsewhere when explicitly allowed",
        ),
        pytest.param(
            {"api_listen": "10.0.0.1:8080", "api_tokens_file": "/t"},
            "api_listen 10.0.0.1:8080 would serve the API over plain TCP on an address that is not loopback: set "
            "api_tls_cert_file and api_tls_key_file, or api_allow_insecure_tcp = true if something else protects "
            "that network",
            id="plain TCP on a network address",
        ),
        pytest.param(
            {"api_listen": "api.example:8080", "api_tokens_file": "/t"},
            "api_listen api.example:8080 would serve the API over plain TCP on an address that is not loopback: set "
            "api_tls_cert_file and api_tls_key_file, or api_allow_insecure_tcp = true if something else protects "
            "that network",
            id="a host name is not loopback",
        ),
        pytest.param(
            {"api_listen": "[::1]:8080"},
            "api_listen [::1]:8080 needs a way to authenticate clients: api_tokens_file (bearer tokens) or "
            "api_tls_client_ca_file (client certificates)",
            id="TCP without credentials",
        ),
        pytest.param(
            {"api_tls_cert_file": "/c"},
            "api_tls_cert_file and api_tls_key_file must be given together",
            id="a certificate without its key",
        ),
        pytest.param(
            {"api_tls_client_ca_file": "/ca"},
            "api_tls_client_ca_file needs TLS: set api_tls_cert_file and api_tls_key_file too",
            id="client certificates without TLS",
        ),
    ],
)
def test_tcp_listeners_need_tls_off_loopback_and_always_a_way_to_authenticate(
    values: dict[str, str], message: str | None
) -> None:
    if message is None:
        build_settings(file_values=values)
        return
    with pytest.raises(ConfigError) as caught:
        build_settings(file_values=values)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        pytest.param(
            "# ci\n\n  a-long-enough-token-1  \nb-long-enough-token-2\n",
            {"a-long-enough-token-1", "b-long-enough-token-2"},
            id="tokens",
        ),
        pytest.param("", set(), id="none"),
    ],
)
def test_tokens_files(text: str, tokens: set[str]) -> None:
    assert parse_tokens(text) == tokens


@pytest.mark.parametrize("line", ["short", "has a space inside it!!"])
def test_a_weak_or_malformed_token_is_refused(line: str) -> None:
    with pytest.raises(ConfigError, match="tokens, line 2: a token must be at least 16 characters without spaces"):
        parse_tokens(f"# x\n{line}\n", "tokens")
