"""A test certificate authority made with the `openssl` command line: a CA, and server or
client certificates it signs, as PEM files (what a Kubernetes TLS Secret holds)."""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.services.process import require_binary


@dataclass(frozen=True)
class Certificate:
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class Authority:
    directory: Path
    ca_file: Path
    key_file: Path

    def issue(self, name: str, hosts: tuple[str, ...] = ()) -> Certificate:
        """A certificate with common name `name` for these DNS names and IP addresses
        (subject alternative names), usable by a server and by a client."""
        cert_file = self.directory / f"{name}.crt"
        key_file = self.directory / f"{name}.key"
        request = self.directory / f"{name}.csr"
        extensions = self.directory / f"{name}.ext"
        names = [f"IP:{host}" if _is_ip(host) else f"DNS:{host}" for host in hosts] or [
            f"DNS:{name}"
        ]
        extensions.write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            f"subjectAltName={','.join(names)}\n"
        )
        _openssl(*_NEW_KEY, "-keyout", key_file, "-out", request, "-subj", f"/CN={name}")
        _openssl(
            "x509", "-req", "-in", request, "-CA", self.ca_file, "-CAkey", self.key_file,
            "-CAcreateserial", "-days", "2", "-sha256", "-extfile", extensions, "-out", cert_file,
        )  # fmt: skip
        return Certificate(cert_file, key_file)


def new_authority(directory: Path, name: str = "observer test CA") -> Authority:
    directory.mkdir(parents=True, exist_ok=True)
    slug = name.replace(" ", "-")
    ca_file, key_file = directory / f"{slug}.crt", directory / f"{slug}.key"
    _openssl(
        *_NEW_KEY, "-x509", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", key_file, "-out", ca_file,
    )  # fmt: skip
    return Authority(directory, ca_file, key_file)


# P-256 keys: quick to make, and every TLS stack here (OpenSSL, BoringSSL in gRPC, Java)
# takes them; -noenc writes the key unencrypted, as a Secret holds it.
_NEW_KEY = ("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-noenc")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _openssl(*args: str | Path) -> None:
    openssl = require_binary("TLS certificates", "openssl")
    result = subprocess.run(
        [str(openssl), *map(str, args)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")
