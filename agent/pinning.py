"""TLS trust by certificate fingerprint, as `SSL_WHITELIST` asks for a self-signed server.

The check runs inside the handshake, before a single byte of the request (which carries
the token) is sent: a server whose certificate is not pinned never sees the request.
With pins, the certificate chain and host name are not checked against a CA: the pin is a
stronger statement than either.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable, Iterable


class PinMismatch(ssl.SSLCertVerificationError):
    """The server's certificate is not one of the pinned fingerprints."""


def normalise_fingerprint(text: str) -> str:
    """Lowercase hex without colons; raises ValueError unless 40 (SHA-1) or 64 (SHA-256) digits."""
    value = text.strip().replace(":", "").lower()
    if len(value) not in (40, 64) or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"{text!r} is not a SHA-1 (40 hex) or SHA-256 (64 hex) fingerprint")
    return value


def fingerprints_of(der: bytes) -> tuple[str, str]:
    return (
        hashlib.sha1(der, usedforsecurity=False).hexdigest(),
        hashlib.sha256(der).hexdigest(),
    )


def check_peer(der: bytes | None, pins: frozenset[str]) -> None:
    if der is None:
        raise PinMismatch("the server presented no certificate")
    sha1, sha256 = fingerprints_of(der)
    if sha1 not in pins and sha256 not in pins:
        raise PinMismatch(
            f"the server's certificate (sha1 {sha1}) is not in SSL_WHITELIST; "
            "if the server's certificate was replaced, deploy with its new fingerprint"
        )


def pinned_context(pins: Iterable[str]) -> ssl.SSLContext:
    """A client context that accepts exactly the certificates whose fingerprint is pinned."""
    wanted = frozenset(normalise_fingerprint(p) for p in pins)
    if not wanted:
        raise ValueError("no fingerprints to pin")
    return _context_checking(lambda der: check_peer(der, wanted))


def recording_context(seen: list[bytes]) -> ssl.SSLContext:
    """A client context that accepts any certificate and appends its DER bytes to `seen`.

    For `holdfast doctor`, which shows support staff the fingerprints a server presents
    before comparing them with the pins. Never for a request that carries a secret.
    """

    def record(der: bytes | None) -> None:
        if der is not None:
            seen.append(der)

    return _context_checking(record)


def _context_checking(check: Callable[[bytes | None], None]) -> ssl.SSLContext:
    """A TLS 1.2+ client context that hands the peer's certificate to `check` in the handshake."""

    class CheckedSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            check(self.getpeercert(binary_form=True))

    class CheckedObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            check(self.getpeercert(binary_form=True))

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.sslsocket_class = CheckedSocket
    context.sslobject_class = CheckedObject
    return context


__all__ = [
    "PinMismatch",
    "check_peer",
    "fingerprints_of",
    "normalise_fingerprint",
    "pinned_context",
    "recording_context",
]
