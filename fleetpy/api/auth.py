"""Who may use the API: the unix socket by its file mode and group, TCP listeners by credentials.

fleet had no authentication at all (FLEET-SPEC §8): whoever reached the API could run anything as root on every
machine. fleetpyd's rules (docs/security.md):

* The unix socket is created with mode ``api_socket_mode`` (0660) and group ``api_socket_group``: the kernel
  decides who may connect, as for Docker's socket; requests on it need nothing more.
* A request on a TCP listener must authenticate, with a client certificate that ``api_tls_client_ca_file``
  signed (verified during the TLS handshake) or with ``Authorization: Bearer <token>`` naming a token of
  ``api_tokens_file`` (compared in constant time). Anything else is answered 401 before any handler runs.
* TCP listeners speak TLS (``api_tls_cert_file``/``api_tls_key_file``); plain HTTP only on loopback
  addresses, or where ``api_allow_insecure_tcp`` says something else protects the network (config.py
  enforces it at start-up).

The server's TLS context and the tokens are kept in one ``ApiAuth`` object, so that SIGHUP can load new
certificates and tokens without closing a listener. The listeners keep the first TLS context, whose server-name
callback (called for every handshake, with or without SNI) hands the connection to the context now in force:
a new handshake uses the new certificate and only the new client CA, so a CA taken out of the configuration
lets no one in any more.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import ssl

from aiohttp import web

from fleetpy.config import parse_tokens
from fleetpy.errors import ConfigError, Unauthorized

log = logging.getLogger(__name__)


def _read(path: str, option: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {option} {path}: {exc}") from None


def read_tokens(path: str) -> frozenset[str]:
    """The tokens of ``path`` (``ConfigError`` if it cannot be read or holds a bad token). A file other users
    may read is worth a warning: whoever reads a token may use the API."""
    tokens = parse_tokens(_read(path, "api_tokens_file"), path)
    try:
        if os.stat(path).st_mode & 0o004:
            log.warning("api_tokens_file %s is readable by every user: chmod o-r it", path)
    except OSError:
        pass
    return tokens


class ApiAuth:
    """The credentials TCP clients must present, and the server's TLS context for TCP listeners."""

    def __init__(self, *, tokens: frozenset[str] = frozenset(), tls: ssl.SSLContext | None = None) -> None:
        self.tokens = tokens
        self.tls = tls  # the listeners' context: it hands each handshake to ``_current``
        self._current = tls
        if tls is not None:
            tls.sni_callback = self._hand_over

    @classmethod
    def from_files(cls, *, cert_file: str, key_file: str, client_ca_file: str, tokens_file: str) -> ApiAuth:
        auth = cls()
        auth.load(cert_file=cert_file, key_file=key_file, client_ca_file=client_ca_file, tokens_file=tokens_file)
        return auth

    def load(self, *, cert_file: str, key_file: str, client_ca_file: str, tokens_file: str) -> None:
        """(Re)load tokens and TLS files. Everything is read before anything changes, so a bad file leaves the
        previous credentials in force (``ConfigError``). An existing TLS context is updated in place: the
        listeners keep it, and new handshakes see the new certificate and CA."""
        tokens = read_tokens(tokens_file) if tokens_file else frozenset()
        fresh = server_context(cert_file, key_file, client_ca_file) if cert_file else None
        if fresh is not None:
            if self.tls is None:
                self.tls = fresh
                fresh.sni_callback = self._hand_over
            self._current = fresh
        self.tokens = tokens

    def _hand_over(
        self, connection: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None, _: ssl.SSLContext
    ) -> None:
        """During a handshake: use the context now in force (the newest certificate, key and client CA)."""
        if self._current is not None and self._current is not self.tls:
            connection.context = self._current

    def check(self, request: web.Request) -> None:
        """Return if ``request`` may be served; ``Unauthorized`` otherwise."""
        transport = request.transport
        if transport is None:
            raise Unauthorized("the connection is gone")
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            return  # the socket's file mode and group decided already
        if transport.get_extra_info("peercert"):
            return  # a client certificate that the client CA signed (the handshake verified it)
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() == "bearer" and presented.strip():
            candidate = presented.strip().encode()
            # compare with every token, in constant time, so that timing reveals nothing about any of them
            matches = [hmac.compare_digest(candidate, token.encode()) for token in self.tokens]
            if any(matches):
                return
            raise Unauthorized("invalid bearer token")
        raise Unauthorized("authentication required: a client certificate or an Authorization: Bearer token")


def server_context(cert_file: str, key_file: str, client_ca_file: str) -> ssl.SSLContext:
    """The TLS context of the TCP listeners: TLS 1.2 or newer, the server's certificate, and client
    certificates verified against ``client_ca_file`` when one is presented (a client may use a token
    instead; a certificate that does not verify fails the handshake)."""
    # A bare server context, never the system's CAs: only ``client_ca_file`` may vouch for a client.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
        if client_ca_file:
            context.load_verify_locations(cafile=client_ca_file)
            context.verify_mode = ssl.CERT_OPTIONAL
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the API's TLS files ({cert_file}, {key_file}): {exc}") from None
    return context
