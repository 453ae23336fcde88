"""A throw-away certificate authority for HTTPS tests, made with the `openssl` command.

`CertAuthority(dir)` writes a CA (`dir/ca.pem`); `issue(name)` signs a server certificate for
127.0.0.1 and localhost with a fresh serial and returns its files. A missing openssl is an error,
never a skip: Debian and every CI image have it.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: Serial numbers of issued certificates: unique in this process, so a reissue is told apart.
_SERIALS = itertools.count(0x5E_0001)


@dataclass(frozen=True)
class ServerCert:
    """A server certificate, its unencrypted key, and the CA certificate that signed it."""

    cert: Path
    key: Path
    ca: Path
    serial: int


def openssl(*args: str, cwd: Path) -> str:
    """Run `openssl ARGS` in `cwd`; its stdout, or RuntimeError with its stderr."""
    tool = shutil.which("openssl")
    if tool is None:
        raise RuntimeError(
            "openssl not found on PATH: install it (apt-get install openssl); TLS tests need it"
        )
    done = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def encrypted_key(key: Path, out: Path, legacy: bool = False) -> Path:
    """`key` encrypted with the passphrase "x" into `out`: PKCS#8, or with `legacy` the old
    "Proc-Type: 4,ENCRYPTED" PEM header."""
    openssl(
        "ec" if legacy else "pkey",
        "-in",
        str(key),
        "-aes128",
        "-passout",
        "pass:x",
        "-out",
        str(out),
        cwd=out.parent,
    )
    return out


class CertAuthority:
    """A CA (EC P-256, valid one day) in `dir` that issues server certificates."""

    def __init__(self, dir: Path, name: str = "appliance test CA") -> None:
        self.dir = dir
        dir.mkdir(parents=True, exist_ok=True)
        self.cert = dir / "ca.pem"
        self.key = dir / "ca.key"
        openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-days", "1", "-subj", f"/CN={name}", "-keyout", str(self.key), "-out", str(self.cert),
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=dir,
        )  # fmt: skip

    def issue(self, name: str, hosts: str = "IP:127.0.0.1,DNS:localhost") -> ServerCert:
        """A new key and server certificate `dir/name.pem` (key `dir/name.key`) for `hosts`."""
        serial = next(_SERIALS)
        key, csr, ext = self.dir / f"{name}.key", self.dir / f"{name}.csr", self.dir / f"{name}.ext"
        cert = self.dir / f"{name}.pem"
        openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr),
            cwd=self.dir,
        )  # fmt: skip
        ext.write_text(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage=serverAuth\nsubjectAltName={hosts}\n"
        )
        openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-set_serial", str(serial), "-days", "1", "-sha256", "-extfile", str(ext), "-out", str(cert),
            cwd=self.dir,
        )  # fmt: skip
        return ServerCert(cert, key, self.cert, serial)
