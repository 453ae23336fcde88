"""The HTTPS context in-process: settings, files that must stop the start with a clear line,
certificate reload, the minimum version and ALPN, over in-memory handshakes (no sockets)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import config
from appliance.cli.client import Client
from appliance.config import parse
from appliance.errors import ConfigError
from appliance.http.tls import ServerTls, TlsFiles, client_context, server_context
from tests.server import REPO
from tests.tlsca import CertAuthority, ServerCert, encrypted_key


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> ssl.SSLObject:
    """Run a TLS handshake between two contexts through memory; the client's side once done."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = True
        for side in (c, s):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                done = False
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done:
            return c
    raise AssertionError("the handshake did not finish")


def serial(connection: ssl.SSLObject) -> int:
    cert = connection.getpeercert()
    assert cert is not None
    return int(str(cert["serialNumber"]), 16)


def trusting(cert: ServerCert) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert.ca))


@pytest.mark.parametrize(
    ("given", "want"), [("1.2", "1.2"), ("1.3", "1.3"), ("tls-1.3", "1.3"), ("TLSv1.2", "1.2"), (1.3, "1.3")]
)
def test_minimum_version_spellings(given: object, want: str) -> None:
    assert parse.tls_version(given) == want


@pytest.mark.parametrize("bad", ["1.1", "1.0", "tls-1.1", "2", "", "ssl3", "1.2;rm"])
def test_minimum_version_refuses_others_by_name(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"http\.tls_minimum_version .*1\.2 or 1\.3"):
        config.load(None, {"http.tls_minimum_version": bad}, environ={})


def test_the_certificate_and_key_go_together(server_cert: ServerCert) -> None:
    for given in ({"http.tls_cert": str(server_cert.cert)}, {"http.tls_key": str(server_cert.key)}):
        with pytest.raises(ConfigError, match=r"http\.tls_cert and http\.tls_key go together"):
            config.load(None, given, environ={})
    both = {"http.tls_cert": str(server_cert.cert), "http.tls_key": str(server_cert.key)}
    loaded = config.load(None, both, environ={}).http
    assert (loaded.tls_cert, loaded.tls_key, loaded.tls_minimum_version) == (*both.values(), "1.2")


def test_env_sets_the_files(server_cert: ServerCert) -> None:
    env = {"APPLIANCE_HTTP_TLS_CERT": str(server_cert.cert), "APPLIANCE_HTTP_TLS_KEY": str(server_cert.key)}
    assert config.load(None, environ=env).http.tls_key == str(server_cert.key)


def test_serves_its_certificate_with_alpn_http11(server_cert: ServerCert) -> None:
    context = server_context(TlsFiles(str(server_cert.cert), str(server_cert.key)))
    client = trusting(server_cert)
    client.set_alpn_protocols(["h2", "http/1.1"])
    connection = handshake(context, client)
    assert serial(connection) == server_cert.serial
    assert connection.selected_alpn_protocol() == "http/1.1"


def test_minimum_13_refuses_a_12_client(server_cert: ServerCert) -> None:
    context = server_context(TlsFiles(str(server_cert.cert), str(server_cert.key), "1.3"))
    old = trusting(server_cert)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        handshake(context, old)
    assert handshake(context, trusting(server_cert)).version() == "TLSv1.3"
    twelve = server_context(TlsFiles(str(server_cert.cert), str(server_cert.key), "1.2"))
    assert handshake(twelve, old).version() == "TLSv1.2"


def bad_files(
    tmp_path: Path, test_ca: CertAuthority, server_cert: ServerCert
) -> dict[str, tuple[TlsFiles, str]]:
    """Broken certificate/key pairs, and a word the error must hold."""
    other = test_ca.issue("unit-other")
    encrypted = encrypted_key(server_cert.key, tmp_path / "encrypted.key")
    legacy = encrypted_key(server_cert.key, tmp_path / "legacy.key", legacy=True)
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    cert, key = str(server_cert.cert), str(server_cert.key)
    return {
        "missing cert": (TlsFiles(str(tmp_path / "nope.pem"), key), "cannot read http.tls_cert"),
        "missing key": (TlsFiles(cert, str(tmp_path / "nope.key")), "cannot read http.tls_key"),
        "directory": (TlsFiles(str(tmp_path), key), "cannot read http.tls_cert"),
        "junk cert": (TlsFiles(str(junk), key), "http.tls_cert"),
        "key as cert": (TlsFiles(key, key), "no usable certificate"),
        "cert as key": (TlsFiles(cert, cert), "holds no usable private key"),
        "mismatch": (TlsFiles(cert, str(other.key)), "not the private key of the certificate"),
        "encrypted": (TlsFiles(cert, str(encrypted)), "passphrase"),
        "legacy encrypted": (TlsFiles(cert, str(legacy)), "passphrase"),
    }


def test_bad_files_are_one_clear_error(
    tmp_path: Path, test_ca: CertAuthority, server_cert: ServerCert
) -> None:
    for name, (files, words) in bad_files(tmp_path, test_ca, server_cert).items():
        with pytest.raises(ConfigError) as e:
            server_context(files)
        assert words in e.value.message, (name, e.value.message)


def test_reload_serves_the_renewed_certificate_and_keeps_the_old_one_on_a_bad_pair(
    tmp_path: Path, test_ca: CertAuthority
) -> None:
    first, second, third = (test_ca.issue(f"unit-reload-{i}") for i in (1, 2, 3))
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(first.cert, cert)
    shutil.copy(first.key, key)
    tls = ServerTls(TlsFiles(str(cert), str(key)))
    before = handshake(tls.context, trusting(first))
    shutil.copy(second.cert, cert)
    shutil.copy(second.key, key)
    assert serial(handshake(tls.context, trusting(first))) == first.serial  # not before the reload
    tls.reload()
    assert serial(handshake(tls.context, trusting(first))) == second.serial
    assert serial(before) == first.serial

    shutil.copy(third.cert, cert)  # the key stays second's
    with pytest.raises(ConfigError, match="not the private key"):
        tls.reload()
    key.unlink()
    with pytest.raises(ConfigError, match=str(key)):
        tls.reload()
    assert serial(handshake(tls.context, trusting(first))) == second.serial


def test_client_context(tmp_path: Path, server_cert: ServerCert) -> None:
    server = server_context(TlsFiles(str(server_cert.cert), str(server_cert.key)))
    assert serial(handshake(server, client_context(str(server_cert.ca)))) == server_cert.serial
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, client_context(None))  # the system CAs do not know the test CA
    assert client_context(None, verify=False).verify_mode == ssl.CERT_NONE
    with pytest.raises(ConfigError, match="--tls-ca"):
        client_context(str(tmp_path / "nope.pem"))
    junk = tmp_path / "junk.pem"
    junk.write_text("nothing\n")
    with pytest.raises(ConfigError, match="--tls-ca"):
        client_context(str(junk))


def test_cli_client_uses_tls_only_for_https(server_cert: ServerCert) -> None:
    assert Client("http://127.0.0.1:8181", "t")._context() is None
    context = Client("https://gw.lan:8181", "t", str(server_cert.ca))._context()
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED


def test_cli_flags_are_listed() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "appliance", "query", "--help"], cwd=REPO, capture_output=True, text=True
    ).stdout
    assert "--tls-ca" in out and "--tls-no-verify" in out and "INFLUXDB3_TLS_CA" in out
    out = subprocess.run(
        [sys.executable, "-m", "appliance", "serve", "--help"], cwd=REPO, capture_output=True, text=True
    ).stdout
    assert "--tls-cert" in out and "--tls-key" in out and "--tls-minimum-version" in out
