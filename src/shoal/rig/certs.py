"""A throw-away certificate authority for the rig and the tests (openssl's command line).

A site has its own PKI; the rig needs one that exists in seconds: a CA, then for each name a
key and a certificate signed by it, valid for the IP addresses it is reached at (etcd members
and Shoal nodes are addressed by IP, so the addresses are what a client checks). Keys are
EC P-256 (fast to make and to handshake) and written 0600.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from shoal.errors import ConfigError

DAYS = 825


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise ConfigError("openssl not found on PATH: install Debian's openssl package")
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise ConfigError(f"openssl {args[0]} failed: {proc.stderr.strip()[-400:]}")


def _key(path: Path, cwd: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(path), cwd=cwd)
    os.chmod(path, 0o600)


class CertAuthority:
    """The CA in `directory` (ca.pem, ca.key), made on first use and kept after."""

    def __init__(self, directory: Path, name: str = "shoal-rig-ca") -> None:
        self.dir = Path(directory)
        self.ca = self.dir / "ca.pem"
        self.ca_key = self.dir / "ca.key"
        if not self.ca.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            _key(self.ca_key, self.dir)
            _openssl("req", "-x509", "-new", "-key", str(self.ca_key), "-out", str(self.ca),
                     "-days", str(DAYS), "-subj", f"/CN={name}",
                     "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.dir)

    def issue(self, name: str, ips: list[str] = (), dns: list[str] = ()) -> CertFiles:  # type: ignore[assignment]
        """A key and certificate for `name`, for serving and for client authentication,
        valid for `ips` and `dns` names (made once: an existing pair is returned)."""
        files = CertFiles(self.dir / f"{name}.pem", self.dir / f"{name}.key")
        if files.cert.exists() and files.key.exists():
            return files
        csr = self.dir / f"{name}.csr"
        ext = self.dir / f"{name}.ext"
        _key(files.key, self.dir)
        _openssl("req", "-new", "-key", str(files.key), "-out", str(csr), "-subj",
                 f"/CN={name}", cwd=self.dir)
        alt = [f"IP:{ip}" for ip in ips] + [f"DNS:{d}" for d in dns]
        ext.write_text("basicConstraints=CA:FALSE\n"
                       "keyUsage=critical,digitalSignature,keyEncipherment\n"
                       "extendedKeyUsage=serverAuth,clientAuth\n"
                       + (f"subjectAltName={','.join(alt)}\n" if alt else ""))
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey",
                 str(self.ca_key), "-CAcreateserial", "-out", str(files.cert), "-days",
                 str(DAYS), "-extfile", str(ext), cwd=self.dir)
        csr.unlink()
        ext.unlink()
        return files
