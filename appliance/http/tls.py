"""HTTPS: the server's ssl.SSLContext from [http] tls_cert, tls_key and tls_minimum_version, its
certificate reload, and the client context the CLI uses.

One function (server_context) builds the server's context, so that the gRPC endpoint to come can
add its ALPN protocol ("h2") on the same port in one place. Every problem with the files is a
ConfigError naming the setting and what to do: at start it stops the server with one line, on
reload the running certificate stays.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from ..config import HttpSettings
from ..errors import ConfigError

log = logging.getLogger("appliance.http")

#: tls_minimum_version values (as config.parse.tls_version normalises them) and OpenSSL's names.
MINIMUM_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
#: What the port speaks after the handshake (ALPN); a later change adds "h2" for gRPC.
ALPN_PROTOCOLS = ("http/1.1",)

_CERT = "http.tls_cert"
_KEY = "http.tls_key"


@dataclass(frozen=True)
class TlsFiles:
    """Settings http.tls_cert, http.tls_key and http.tls_minimum_version."""

    cert: str
    key: str
    minimum_version: str = "1.2"


class _Encrypted(Exception):
    """OpenSSL asked for a passphrase: the key file is encrypted."""


def _no_passphrase() -> str:
    raise _Encrypted  # never let OpenSSL prompt on a terminal nobody watches


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A server context with the certificate and key loaded; ConfigError naming the setting on a bad file."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSIONS[files.minimum_version]
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    context.options |= ssl.OP_NO_RENEGOTIATION  # a client-started renegotiation only costs us CPU
    load_pair(context, files)
    return context


def load_pair(context: ssl.SSLContext, files: TlsFiles) -> None:
    """Load the certificate chain and key files into `context`; ConfigError naming the bad file."""
    _check_certificate(files.cert)
    key_text = _read(_KEY, files.key)
    if "ENCRYPTED" in key_text.partition("-----END")[0]:
        raise _encrypted(files.key)
    try:
        context.load_cert_chain(files.cert, files.key, password=_no_passphrase)
    except _Encrypted:
        raise _encrypted(files.key) from None
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"{_KEY} {files.key} is not the private key of the certificate in {_CERT} {files.cert}:"
                " give the key the certificate was issued for"
            ) from None
        raise ConfigError(
            f"{_KEY} {files.key} holds no usable private key ({e.reason or e}): give a PEM key file"
            " (-----BEGIN PRIVATE KEY-----)"
        ) from None
    except OSError as e:
        raise ConfigError(f"cannot read {_CERT} {files.cert} or {_KEY} {files.key}: {e}") from None


def _read(setting: str, path: str) -> str:
    """The text of a PEM file; ConfigError naming the setting when it cannot be read."""
    try:
        return Path(path).read_text(encoding="ascii", errors="replace")
    except OSError as e:
        raise ConfigError(
            f"cannot read {setting} {path}: {e.strerror or e}; give the path of a PEM file the"
            " appliance's user can read"
        ) from None


def _check_certificate(path: str) -> None:
    """ConfigError unless `path` is a readable PEM file holding at least one certificate."""
    text = _read(_CERT, path)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ssl.SSLError("no PEM certificate")
        probe.load_verify_locations(cadata=text)
    except (ssl.SSLError, ValueError) as e:
        reason = getattr(e, "reason", None) or str(e)
        raise ConfigError(
            f"{_CERT} {path} holds no usable certificate ({reason}): give a PEM file starting with"
            " -----BEGIN CERTIFICATE----- (the server's certificate first, then its intermediates)"
        ) from None


def _encrypted(path: str) -> ConfigError:
    return ConfigError(
        f"{_KEY} {path} is encrypted with a passphrase, which the server cannot ask for at start:"
        f" store it decrypted, readable only by the appliance's user (openssl pkey -in {path} -out"
        " KEY.pem; chmod 600 KEY.pem)"
    )


class ServerTls:
    """The context new connections' handshakes use, and its certificate reload (SIGHUP) from the
    same files.

    The server starts TLS on each connection itself (http.connections), with `context` as it is at
    that moment. A reload builds and checks a whole new context, then swaps it in: loading the new
    files into the context in use instead would leave it with a certificate and no key if a file
    changed between the check and the load. Open connections keep the context they started with."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.context = server_context(files)

    @classmethod
    def of(cls, http: HttpSettings) -> ServerTls | None:
        """The HTTPS context of http.tls_cert and http.tls_key, or None for plain HTTP."""
        if not http.tls_cert:
            return None
        return cls(TlsFiles(http.tls_cert, http.tls_key, http.tls_minimum_version))

    def reload(self) -> None:
        """Serve the certificate and key now in the files to new handshakes (open connections keep
        theirs); ConfigError, with the running certificate still served, when the pair is bad."""
        self.context = server_context(self.files)

    def renew(self) -> None:
        """SIGHUP: reload(), logged; a bad pair is one error line and the running certificate stays."""
        try:
            self.reload()
        except ConfigError as e:
            log.error("certificate reload failed, still serving the previous certificate: %s", e)
            return
        log.info("reloaded the TLS certificate %s and key %s", self.files.cert, self.files.key)


def client_context(ca_file: str | None, verify: bool = True) -> ssl.SSLContext:
    """A client context trusting `ca_file` (else the system CAs), or verifying nothing when not `verify`."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                f"cannot use --tls-ca {ca_file}: {getattr(e, 'strerror', None) or e}; give the PEM file of"
                " the CA that signed the server's certificate"
            ) from None
    return context
