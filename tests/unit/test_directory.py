"""The LDAP directory boundary without a directory: filters, settings, TLS, failures as 503s.

tests/integration/test_directory_registration.py runs the same code against a real slapd.
"""

from __future__ import annotations

import datetime as dt
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st
from ldap3.operation.search import MATCH_EQUAL, ROOT, parse_filter
from ldap3.protocol.convert import prepare_filter_for_sending

from authority.directory import (
    Directory,
    is_disabled,
    make_server,
    user_filter,
    username_attribute,
)
from authority.errors import InvalidInput, Unavailable
from authority.orgs import DEFAULT_LDAP_FILTER, LdapSettings

AD_FILTER = "(&(objectClass=user)(sAMAccountName={username}))"
# Any Unicode text but lone surrogates, which no JSON string decoded by FastAPI can reach
# `find_user` with after registration's printable check, and which UTF-8 cannot encode.
USERNAMES = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1)


def _equality_values(template: str, username: str) -> list[tuple[str, bytes]]:
    """The (attribute, value sent on the wire) of each equality match, as ldap3 parses it."""
    root = parse_filter(user_filter(template, username), None, False, False, None, False)
    found: list[tuple[str, bytes]] = []

    def walk(node: Any) -> None:
        if node.tag == MATCH_EQUAL:
            found.append(
                (node.assertion["attr"], prepare_filter_for_sending(node.assertion["value"]))
            )
        for child in node.elements:
            walk(child)

    assert root.tag == ROOT
    walk(root)
    return found


# Filters


@given(USERNAMES)
def test_any_username_is_one_equality_value_and_nothing_else(username: str) -> None:
    assert _equality_values(DEFAULT_LDAP_FILTER, username) == [
        ("objectClass", b"inetOrgPerson"),
        ("uid", username.encode("utf-8")),
    ]


@given(USERNAMES)
def test_the_substituted_part_has_no_unescaped_filter_characters(username: str) -> None:
    built = user_filter("(uid={username})", username)
    value = built[len("(uid=") : -1]
    assert not re.search(r"[*()\0]", value)
    assert "\\" not in re.sub(r"\\[0-9a-f]{2}", "", value)


def test_an_injection_attempt_stays_a_literal_username() -> None:
    assert user_filter(DEFAULT_LDAP_FILTER, "*)(uid=*") == (
        "(&(objectClass=inetOrgPerson)(uid=\\2a\\29\\28uid=\\2a))"
    )
    assert _equality_values(AD_FILTER, "*)(|(cn=*")[1] == ("sAMAccountName", b"*)(|(cn=*")


@pytest.mark.parametrize(
    ("template", "attribute"),
    [(DEFAULT_LDAP_FILTER, "uid"), (AD_FILTER, "sAMAccountName"), ("(mail={username}*)", None)],
)
def test_the_username_attribute_is_the_one_compared_with_the_username(
    template: str, attribute: str | None
) -> None:
    assert username_attribute(template) == attribute


# Disabled accounts


TODAY = dt.date(2026, 1, 1)
TODAY_DAYS = (TODAY - dt.date(1970, 1, 1)).days


@pytest.mark.parametrize(
    ("attributes", "disabled"),
    [
        ({}, False),
        ({"pwdAccountLockedTime": [b"000001010000Z"]}, True),
        ({"shadowExpire": [b"1"]}, True),
        ({"shadowExpire": [str(TODAY_DAYS).encode()]}, True),
        ({"shadowExpire": [str(TODAY_DAYS + 1).encode()]}, False),
        ({"shadowExpire": [b"-1"]}, False),
        ({"shadowExpire": [b"0"]}, False),
        ({"NSACCOUNTLOCK": [b"true"]}, True),
        ({"nsAccountLock": [b"FALSE"]}, False),
        ({"userAccountControl": [b"514"]}, True),  # NORMAL_ACCOUNT | ACCOUNTDISABLE
        ({"userAccountControl": [b"512"]}, False),
        ({"userAccountControl": [b"garbage"]}, False),
    ],
)
def test_disabled_accounts_by_every_directory_convention(
    attributes: dict[str, list[bytes]], disabled: bool
) -> None:
    assert is_disabled(attributes, TODAY) is disabled


# Settings


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def settings(**changes: Any) -> LdapSettings:
    values: dict[str, Any] = {"url": "ldap://ldap.example.com", "base_dn": "dc=example,dc=com"}
    return LdapSettings(**{**values, **changes})


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"url": "ldaps://h", "starttls": True}, "--ldap-starttls applies to ldap://"),
        ({"ca_file": "/etc/hostname"}, "needs an ldaps:// URL or --ldap-starttls"),
        ({"url": "ldap://h:port"}, "port is not a number"),
        ({"url": "ldap://"}, "no host name"),
        ({"user_filter": "(uid={username}"}, "is not an LDAP filter"),
    ],
)
def test_unusable_settings_are_refused_at_org_create(
    changes: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(InvalidInput, match=re.escape(complaint)):
        settings(**changes).validate()


def test_a_ca_file_must_hold_pem_certificates(tmp_path: Path, ca_file: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(InvalidInput, match="not a readable PEM file"):
        settings(starttls=True, ca_file=str(garbage)).validate()
    settings(starttls=True, ca_file=str(ca_file)).validate()
    settings(url="ldaps://h", ca_file=str(ca_file)).validate()


def test_settings_stored_before_tls_options_existed_read_as_plain() -> None:
    old = {"url": "ldap://h", "base_dn": "dc=x", "bind_dn": None, "user_filter": None}
    read = LdapSettings.from_dict(old)
    assert (read.starttls, read.ca_file, read.user_filter) == (False, None, DEFAULT_LDAP_FILTER)
    assert LdapSettings.from_dict(settings(starttls=True).as_dict()) == settings(starttls=True)


# TLS construction


def test_ldaps_is_tls_from_the_start_on_port_636_by_default(ca_file: Path) -> None:
    server = make_server(settings(url="ldaps://ldap.example.com", ca_file=str(ca_file)), 5.0)
    assert (server.host, server.port, server.ssl) == ("ldap.example.com", 636, True)
    context = server.tls.context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True


def test_starttls_upgrades_a_plain_connection_and_checks_the_certificate() -> None:
    server = make_server(settings(url="ldap://ldap.example.com:1389", starttls=True), 5.0)
    assert (server.port, server.ssl) == (1389, False)
    assert server.tls.context().check_hostname is True


def test_a_plain_url_without_starttls_makes_no_tls_context() -> None:
    server = make_server(settings(), 5.0)
    assert (server.port, server.ssl) == (389, False)
    assert server.tls is None


# Failures: every one a 503 with the configured Retry-After


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung directory."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def directory(**changes: Any) -> Directory:
    values = {"url": f"ldap://127.0.0.1:{closed_port()}", "base_dn": "dc=example,dc=com"}
    return Directory({**values, **changes}, timeout=1, retry_after=17, org_name="Sales")


def test_a_directory_that_is_down_is_unavailable_with_the_servers_retry_after() -> None:
    with pytest.raises(Unavailable) as caught:
        directory().find_user("jdoe")
    assert caught.value.code == "directory_unavailable"
    assert caught.value.retry_after == 17
    assert caught.value.message.startswith("the directory of organization 'Sales' (ldap://")
    assert "Connection refused" in caught.value.message


def test_a_directory_that_does_not_answer_is_unavailable_after_the_timeout(
    silent_server: int,
) -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        directory(url=f"ldap://127.0.0.1:{silent_server}").find_user("jdoe")
    assert caught.value.code == "directory_unavailable"
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("content", [None, ""])
def test_an_unusable_bind_password_file_is_a_bind_failure_that_names_no_path(
    tmp_path: Path, content: str | None
) -> None:
    password_file = tmp_path / "bind.pw"
    if content is not None:
        password_file.write_text(content)
    with pytest.raises(Unavailable) as caught:
        directory(bind_dn="cn=svc", bind_password_file=str(password_file)).find_user("jdoe")
    assert caught.value.code == "directory_bind_failed"
    assert str(tmp_path) not in caught.value.message  # devices see the message


def test_a_ca_file_removed_after_org_create_is_a_misconfiguration(tmp_path: Path) -> None:
    with pytest.raises(Unavailable) as caught:
        directory(starttls=True, ca_file=str(tmp_path / "gone.pem")).find_user("jdoe")
    assert caught.value.code == "directory_misconfigured"


def test_incomplete_stored_settings_are_a_misconfiguration() -> None:
    with pytest.raises(Unavailable) as caught:
        Directory({"url": "ldap://h"}, org_name="Sales")
    assert caught.value.code == "directory_misconfigured"


@pytest.mark.parametrize(("username", "password"), [("jdoe", ""), ("\ud800", "secret")])
def test_an_empty_password_or_an_impossible_name_never_reaches_the_directory(
    username: str, password: str
) -> None:
    # The directory is down: any contact would raise Unavailable instead of answering None.
    assert directory().authenticate(username, password) is None
