"""The server's TLS certificate: self-signed creation, fingerprints, staged rollover.

A self-signed server is trusted by agents through `SSL_WHITELIST` pins. To replace the
certificate without redeploying agents, `tls renew` stages a next certificate whose
fingerprints the policy delivers beside the current ones; once agents have picked them up,
`tls activate` makes it current (the old one is kept as `previous` for a rollback by hand).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from authority.datadir import DataDir, write_atomic
from authority.errors import InvalidInput, NotFound

VALIDITY_DAYS = 3 * 365


@dataclass(frozen=True)
class Fingerprints:
    """What `SSL_WHITELIST` carries: lowercase hex digests of the certificate's DER bytes."""

    sha1: str
    sha256: str
    not_after: dt.datetime

    @classmethod
    def of_pem(cls, pem: bytes) -> Fingerprints:
        cert = x509.load_pem_x509_certificate(pem)
        der = cert.public_bytes(serialization.Encoding.DER)
        return cls(
            sha1=hashlib.sha1(der, usedforsecurity=False).hexdigest(),
            sha256=hashlib.sha256(der).hexdigest(),
            not_after=cert.not_valid_after_utc,
        )


def _subject_alt_names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    dns = {"localhost"}
    ips = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    try:
        ips.add(ipaddress.ip_address(host))
    except ValueError:
        dns.add(host)
    names.extend(x509.DNSName(d) for d in sorted(dns))
    names.extend(x509.IPAddress(i) for i in sorted(ips, key=str))
    return names


def make_self_signed(host: str, now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """A fresh key and a self-signed server certificate for `host`, as PEM (cert, key)."""
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    # The common name is limited to 64 characters; clients match the SAN, so a long host
    # name lives there only.
    common_name = host if len(host) <= 64 else "Holdfast authority"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(host)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


class CertificateStore:
    """The certificates of one data folder, by role: current, next (staged), previous."""

    def __init__(self, data: DataDir) -> None:
        self.folder = data.tls
        # Parsed certificates by file identity: every policy answer carries the pins, and
        # parsing the PEM for each of them cost more than the rest of a check-in.
        self._parsed: dict[Path, tuple[tuple[int, int, int], Fingerprints]] = {}

    def cert_path(self, role: str) -> Path:
        return self.folder / f"{role}.crt"

    def key_path(self, role: str) -> Path:
        return self.folder / f"{role}.key"

    def _write(self, role: str, cert_pem: bytes, key_pem: bytes) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.key_path(role), key_pem, mode=0o600)
        write_atomic(self.cert_path(role), cert_pem, mode=0o644)

    def create_current(self, host: str) -> Fingerprints:
        cert_pem, key_pem = make_self_signed(host)
        self._write("current", cert_pem, key_pem)
        return Fingerprints.of_pem(cert_pem)

    def fingerprints(self, role: str) -> Fingerprints | None:
        path = self.cert_path(role)
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        # A rollover replaces the file (a new inode), so a changed file is never missed.
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        known = self._parsed.get(path)
        if known is not None and known[0] == stamp:
            return known[1]
        found = Fingerprints.of_pem(path.read_bytes())
        self._parsed[path] = (stamp, found)
        return found

    def current(self) -> Fingerprints:
        found = self.fingerprints("current")
        if found is None:
            raise NotFound(f"no current certificate in {self.folder}", code="no_certificate")
        return found

    def renew(self, host: str) -> Fingerprints:
        """Stage a next certificate; a second renew replaces the staged one."""
        cert_pem, key_pem = make_self_signed(host)
        self._write("next", cert_pem, key_pem)
        return Fingerprints.of_pem(cert_pem)

    def activate(self) -> Fingerprints:
        """Make the staged certificate current; the old one becomes `previous`."""
        nxt_cert, nxt_key = self.cert_path("next"), self.key_path("next")
        if not nxt_cert.is_file() or not nxt_key.is_file():
            raise InvalidInput("no staged certificate: run `holdfast-authority tls renew` first")
        cur_cert, cur_key = self.cert_path("current"), self.key_path("current")
        if cur_cert.is_file():
            shutil.copy2(cur_cert, self.cert_path("previous"))
            shutil.copy2(cur_key, self.key_path("previous"))
        # Write the key first: a server reloading between the two renames would otherwise
        # pair the new certificate with the old key and fail its handshakes.
        write_atomic(cur_key, nxt_key.read_bytes(), mode=0o600)
        write_atomic(cur_cert, nxt_cert.read_bytes(), mode=0o644)
        nxt_cert.unlink()
        nxt_key.unlink()
        return self.current()

    def pins(self) -> list[dict[str, str]]:
        """The fingerprints agents should trust: current, and the staged next if any."""
        out = []
        for role in ("current", "next"):
            fp = self.fingerprints(role)
            if fp is not None:
                out.append({"role": role, "sha1": fp.sha1, "sha256": fp.sha256})
        return out


__all__ = ["CertificateStore", "Fingerprints", "make_self_signed"]
