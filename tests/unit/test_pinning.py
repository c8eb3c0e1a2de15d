"""The agent's SSL_WHITELIST: fingerprint spelling, and trust by pin during the handshake."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.pinning import PinMismatch, check_peer, normalise_fingerprint, pinned_context
from authority.tls import make_self_signed

SHA1 = "0123456789abcdef0123456789abcdef01234567"
SHA256 = "00112233445566778899aabbccddeeff" * 2


@pytest.fixture(scope="module")
def server_cert() -> tuple[bytes, bytes]:
    return make_self_signed("backup.example.com")


@pytest.fixture(scope="module")
def der(server_cert: tuple[bytes, bytes]) -> bytes:
    cert = x509.load_pem_x509_certificate(server_cert[0])
    return cert.public_bytes(serialization.Encoding.DER)


# Spelling of a fingerprint


def colons(hex_digits: str) -> str:
    return ":".join(hex_digits[i : i + 2] for i in range(0, len(hex_digits), 2))


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        (SHA1, SHA1),
        (SHA1.upper(), SHA1),
        (colons(SHA1).upper(), SHA1),
        (f"  {SHA1}\n", SHA1),
        (SHA256, SHA256),
        (colons(SHA256), SHA256),
        (colons(SHA256).upper(), SHA256),
    ],
)
def test_fingerprint_case_and_colons_are_ignored(given: str, normal: str) -> None:
    assert normalise_fingerprint(given) == normal


@pytest.mark.parametrize("length", [0, 32, 39, 41, 63, 65, 128])
def test_fingerprint_of_another_length_is_refused(length: int) -> None:
    with pytest.raises(ValueError, match=r"SHA-1 .* or SHA-256"):
        normalise_fingerprint("a" * length)


@pytest.mark.parametrize("text", ["g" * 40, SHA1[:-1] + "z", SHA256[:-1] + " ", "-" * 64])
def test_fingerprint_with_a_non_hex_digit_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="fingerprint"):
        normalise_fingerprint(text)


# Checking the server's certificate


def test_peer_is_accepted_by_its_sha1_pin(der: bytes) -> None:
    check_peer(der, frozenset({hashlib.sha1(der, usedforsecurity=False).hexdigest()}))


def test_peer_is_accepted_by_its_sha256_pin(der: bytes) -> None:
    check_peer(der, frozenset({hashlib.sha256(der).hexdigest()}))


def test_peer_is_accepted_when_any_pin_matches(der: bytes) -> None:
    check_peer(der, frozenset({SHA1, hashlib.sha256(der).hexdigest()}))


def test_peer_with_an_unpinned_certificate_is_refused_with_its_sha1(der: bytes) -> None:
    with pytest.raises(PinMismatch) as caught:
        check_peer(der, frozenset({SHA1, SHA256}))
    assert hashlib.sha1(der, usedforsecurity=False).hexdigest() in str(caught.value)
    assert "SSL_WHITELIST" in str(caught.value)


def test_peer_without_certificate_is_refused() -> None:
    with pytest.raises(PinMismatch):
        check_peer(None, frozenset({SHA1}))


def test_pin_mismatch_is_a_certificate_verification_error() -> None:
    # So every layer that handles TLS verification failures handles a mismatch the same way.
    assert issubclass(PinMismatch, ssl.SSLCertVerificationError)


def test_pinned_context_needs_at_least_one_pin() -> None:
    with pytest.raises(ValueError, match="no fingerprints"):
        pinned_context([])


def test_pinned_context_refuses_a_malformed_pin() -> None:
    with pytest.raises(ValueError, match="'abc'"):
        pinned_context(["abc"])


# The pin enforced in a handshake (in memory: no socket, no network)


def handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> None:
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="backup.example.com")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client_done = server_done = False
    for _ in range(10):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not server_done:
            try:
                server.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
        c_in.write(s_out.read())
        if client_done and server_done:
            return
    raise AssertionError("handshake did not finish")


@pytest.fixture(scope="module")
def server_ctx(
    server_cert: tuple[bytes, bytes], tmp_path_factory: pytest.TempPathFactory
) -> ssl.SSLContext:
    folder: Path = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(server_cert[0])
    (folder / "key.pem").write_bytes(server_cert[1])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


def test_handshake_with_a_pinned_self_signed_server_succeeds(
    der: bytes, server_ctx: ssl.SSLContext
) -> None:
    pin = colons(hashlib.sha1(der, usedforsecurity=False).hexdigest()).upper()
    handshake(pinned_context([pin]), server_ctx)


def test_handshake_with_an_unpinned_server_fails_before_any_request(
    server_ctx: ssl.SSLContext,
) -> None:
    with pytest.raises(PinMismatch):
        handshake(pinned_context([SHA256]), server_ctx)
