"""The server certificate: what it names, its fingerprints, and the renew/activate rollover."""

from __future__ import annotations

import hashlib
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from authority.datadir import DataDir
from authority.errors import InvalidInput, NotFound
from authority.tls import CertificateStore, Fingerprints, make_self_signed


def alt_names(cert_pem: bytes) -> tuple[list[str], list[str]]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return dns, ips


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def store(tmp_path: Path) -> CertificateStore:
    certs = CertificateStore(DataDir(tmp_path))
    certs.create_current("backup.example.com")
    return certs


# The certificate


def test_certificate_names_the_host_localhost_and_loopback() -> None:
    cert_pem, _ = make_self_signed("backup.example.com")
    dns, ips = alt_names(cert_pem)
    assert "backup.example.com" in dns
    assert "localhost" in dns
    assert "127.0.0.1" in ips


@pytest.mark.parametrize("host", ["192.0.2.10", "2001:db8::5"])
def test_ip_host_goes_into_the_ip_address_names(host: str) -> None:
    cert_pem, _ = make_self_signed(host)
    dns, ips = alt_names(cert_pem)
    assert ipaddress.ip_address(host) in {ipaddress.ip_address(i) for i in ips}
    assert host not in dns
    assert "127.0.0.1" in ips


def test_certificate_is_a_server_certificate_not_a_ca() -> None:
    cert = x509.load_pem_x509_certificate(make_self_signed("backup.example.com")[0])
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage


def test_key_belongs_to_the_certificate() -> None:
    cert_pem, key_pem = make_self_signed("backup.example.com")
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    as_der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(*as_der) == cert.public_key().public_bytes(*as_der)


def test_each_certificate_is_new() -> None:
    first = Fingerprints.of_pem(make_self_signed("h.example.com")[0])
    second = Fingerprints.of_pem(make_self_signed("h.example.com")[0])
    assert first.sha1 != second.sha1


def test_fingerprints_are_hashes_of_the_der_bytes() -> None:
    cert_pem, _ = make_self_signed("backup.example.com")
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    fp = Fingerprints.of_pem(cert_pem)
    assert fp.sha1 == hashlib.sha1(der, usedforsecurity=False).hexdigest()
    assert fp.sha256 == hashlib.sha256(der).hexdigest()
    assert fp.sha1 == fp.sha1.lower()
    assert len(fp.sha1) == 40
    assert len(fp.sha256) == 64


# The store and its rollover


def test_new_store_pins_only_the_current_certificate(store: CertificateStore) -> None:
    current = store.current()
    assert store.pins() == [{"role": "current", "sha1": current.sha1, "sha256": current.sha256}]


def test_store_without_certificate_says_so(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as caught:
        CertificateStore(DataDir(tmp_path)).current()
    assert caught.value.code == "no_certificate"


def test_renew_adds_the_next_certificate_to_the_pins(store: CertificateStore) -> None:
    current = store.current()
    staged = store.renew("backup.example.com")
    assert store.pins() == [
        {"role": "current", "sha1": current.sha1, "sha256": current.sha256},
        {"role": "next", "sha1": staged.sha1, "sha256": staged.sha256},
    ]
    assert store.current() == current  # the server keeps presenting the current one


def test_second_renew_replaces_the_staged_certificate(store: CertificateStore) -> None:
    store.renew("backup.example.com")
    replacement = store.renew("backup.example.com")
    assert [p["sha1"] for p in store.pins()] == [store.current().sha1, replacement.sha1]


def test_activate_makes_next_current_keeps_previous_and_clears_next(
    store: CertificateStore,
) -> None:
    old = store.current()
    staged = store.renew("backup.example.com")
    activated = store.activate()
    assert activated.sha1 == staged.sha1
    assert store.current().sha1 == staged.sha1
    previous = store.fingerprints("previous")
    assert previous is not None
    assert previous.sha1 == old.sha1
    assert store.fingerprints("next") is None
    assert not store.key_path("next").exists()
    assert [p["role"] for p in store.pins()] == ["current"]


def test_activated_key_matches_the_activated_certificate(store: CertificateStore) -> None:
    store.renew("backup.example.com")
    store.activate()
    for role in ("current", "previous"):
        cert = x509.load_pem_x509_certificate(store.cert_path(role).read_bytes())
        key = serialization.load_pem_private_key(store.key_path(role).read_bytes(), None)
        as_der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        assert key.public_key().public_bytes(*as_der) == cert.public_key().public_bytes(*as_der)


def test_activate_without_renew_is_refused_and_changes_nothing(store: CertificateStore) -> None:
    before = store.current()
    with pytest.raises(InvalidInput, match="tls renew"):
        store.activate()
    assert store.current() == before
    assert store.fingerprints("previous") is None


def test_private_keys_are_readable_by_the_owner_only(store: CertificateStore) -> None:
    store.renew("backup.example.com")
    assert mode(store.key_path("current")) == 0o600
    assert mode(store.key_path("next")) == 0o600
    store.activate()
    assert mode(store.key_path("current")) == 0o600
    assert mode(store.key_path("previous")) == 0o600


def test_certificates_are_world_readable(store: CertificateStore) -> None:
    assert mode(store.cert_path("current")) == 0o644
