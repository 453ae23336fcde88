"""The CLI's side of the HTTP API: the flags that name a server, and a small stdlib client for it."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .. import config
from ..errors import ApplianceError
from ..http.tls import client_context

DEFAULT_HOST = "http://127.0.0.1:8181"


class CliError(Exception):
    """A problem to report as one line on stderr, with a non-zero exit."""


def client_flags(p: argparse.ArgumentParser, database: bool = False) -> None:
    """--host, --token, the TLS flags (and --database) for a command that talks to a server."""
    p.add_argument(
        "-H",
        "--host",
        default=os.environ.get("APPLIANCE_HOST", DEFAULT_HOST),
        help=f"server URL (env APPLIANCE_HOST; default {DEFAULT_HOST})",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("APPLIANCE_TOKEN"),
        help="auth token (env APPLIANCE_TOKEN; default: the local admin-token file)",
    )
    p.add_argument(
        "--tls-ca",
        default=os.environ.get("APPLIANCE_TLS_CA") or os.environ.get("INFLUXDB3_TLS_CA"),
        metavar="PATH",
        help="CA certificate (PEM) to trust for an https:// host, e.g. a private CA"
        " (env APPLIANCE_TLS_CA or INFLUXDB3_TLS_CA; default: the system CAs)",
    )
    p.add_argument(
        "--tls-no-verify",
        action="store_true",
        help="do not verify the server's certificate (insecure: anyone on the path can read the token)",
    )
    if database:
        p.add_argument(
            "-d",
            "--database",
            default=os.environ.get("APPLIANCE_DATABASE"),
            help="database name (env APPLIANCE_DATABASE)",
        )


class Client:
    """A small HTTP client for the appliance API (stdlib only, so the CLI starts fast)."""

    def __init__(
        self, host: str, token: str | None, tls_ca: str | None = None, tls_verify: bool = True
    ) -> None:
        self.host = host.rstrip("/")
        self.tls_ca = tls_ca
        self.tls_verify = tls_verify
        self._tls: ssl.SSLContext | None = None
        if token is not None:
            self.token: str | None = token
            self.token_source = "the token given with --token or APPLIANCE_TOKEN"
        else:
            self.token, self.token_source = _local_token()

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> bytes:
        """One call to the API (path from http/routes.py); CliError with the server's message on failure."""
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
        url = f"{self.host}{path}" + (f"?{query}" if query else "")
        req = urllib.request.Request(url, data=body, method=method)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=300, context=self._context()) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            text = _error_text(e.read())
            if e.code == 401:
                raise CliError(f"401 {text}\n{self._token_hint()}") from None
            raise CliError(f"{e.code} {text}") from None
        except urllib.error.URLError as e:
            raise CliError(f"cannot reach {self.host}: {e.reason}; {self._reach_hint(e.reason)}") from None
        except ConnectionResetError as e:  # http.client.RemoteDisconnected: it hung up without an answer
            raise CliError(f"cannot reach {self.host}: {e}; {self._reach_hint(e)}") from None

    def _context(self) -> ssl.SSLContext | None:
        """The TLS context for an https:// host (--tls-ca, --tls-no-verify); None for http://."""
        if not self.host.lower().startswith("https://"):
            return None
        if self._tls is None:
            try:
                self._tls = client_context(self.tls_ca, self.tls_verify)
            except ApplianceError as e:
                raise CliError(str(e)) from None
        return self._tls

    def _reach_hint(self, reason: object) -> str:
        """What to try when the server could not be reached, by what went wrong."""
        if isinstance(reason, ssl.SSLCertVerificationError):
            return (
                "the server's certificate is not trusted: pass --tls-ca PATH (or set APPLIANCE_TLS_CA) with"
                " the CA certificate that signed it"
            )
        if isinstance(reason, ssl.SSLError):
            return "the TLS handshake failed: does the server serve HTTPS on that port (http.tls_cert)?"
        if isinstance(reason, ConnectionResetError) and self.host.lower().startswith("http://"):
            return "the server hung up: if it serves HTTPS (http.tls_cert), use --host https://..."
        return "is `appliance serve` running? (set --host or APPLIANCE_HOST)"

    def _token_hint(self) -> str:
        """What a 401 means here: which token was sent, or where the CLI looked for one."""
        fix = (
            "pass the admin token with --token TOKEN or set APPLIANCE_TOKEN (the server keeps it in"
            " <data-dir>/admin-token; for a server started with --data-dir DIR, set"
            " APPLIANCE_SERVER_DATA_DIR=DIR so the CLI finds DIR/admin-token)"
        )
        if self.token is None:
            return f"no token was sent: {self.token_source}; {fix}"
        return f"the server refused {self.token_source}; {fix}"

    def json(self, method: str, path: str, payload: dict[str, Any]) -> bytes:
        """A call with a JSON body."""
        return self.request(method, path, body=json.dumps(payload).encode(), content_type="application/json")


def _error_text(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    if isinstance(doc, dict):
        lines = [str(doc.get("error") or doc.get("message") or text)]
        data = doc.get("data")
        for item in data if isinstance(data, list) else [data] if isinstance(data, dict) else []:
            lines.append(
                f"  line {item.get('line_number')}: {item.get('error_message')} ({item.get('original_line')!r})"
            )
        return "\n".join(lines)
    return text


def _local_token() -> tuple[str | None, str]:
    """The admin token of the local server's data dir when readable, and where it came from (or was sought)."""
    try:
        data_dir = config.load().server.data_dir
    except ApplianceError as e:
        return None, f"the CLI could not read the configuration to find the admin-token file ({e})"
    path = Path(data_dir).expanduser() / "admin-token"
    try:
        token = path.read_text().strip()
    except OSError as e:
        return None, f"the CLI looked for the admin token in {path} ({e.strerror or e})"
    if not token:
        return None, f"the admin-token file {path} is empty"
    return token, f"the admin token read from {path}"


def client(args: argparse.Namespace) -> Client:
    """The client for the server the command's flags name."""
    return Client(args.host, args.token, args.tls_ca, not args.tls_no_verify)


def database(args: argparse.Namespace) -> str:
    """The database the command's flags name; CliError when none was given."""
    if not args.database:
        raise CliError("no database given: pass -d NAME or set APPLIANCE_DATABASE")
    return str(args.database)


def print_body(out: bytes) -> None:
    """A response body on stdout, ending with one newline."""
    text = out.decode()
    sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")
