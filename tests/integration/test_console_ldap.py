"""The console's LDAP forms against a real slapd: "test connection", and an organization whose
bind password was typed in the console finding users as one made with the CLI does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from authority.admin import Admin, init_data
from authority.datadir import DataDir
from authority.orgs import LdapSecrets, LdapSettings, find_org
from authority.users import directory_for
from tests.integration.slapd import (
    ADMIN_DN,
    ADMIN_PASSWORD,
    BASE_DN,
    PEOPLE_DN,
    Slapd,
    require_slapd,
    start_slapd,
)
from tests.unit.console.client import Console, browser, console_app, element_text


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Slapd]:
    """A running slapd holding two people; in CI a missing slapd fails, never skips."""
    require_slapd()
    server = start_slapd(tmp_path / "ldap")
    server.add_user("jdoe", display_name="Jane Doe", mail="jdoe@example.com", password="pw")
    server.add_user("rroe", display_name="Rick Roe", mail="rroe@example.com", password="pw")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def data(tmp_path: Path) -> DataDir:
    folder = DataDir(tmp_path / "authority")
    init_data(folder, "127.0.0.1", 4285)
    return folder


@pytest.fixture
def admin(data: DataDir) -> Iterator[Admin]:
    with Admin(data) as ops:
        yield ops


@pytest.fixture
def app(data: DataDir, admin: Admin) -> Iterator[FastAPI]:
    yield from console_app(data, admin)


@pytest.fixture
def deployer(app: FastAPI) -> Iterator[Console]:
    yield from browser(app, "deployer")


def test_a_connection_test_binds_and_counts_the_users_it_could_find(
    directory: Slapd, admin: Admin
) -> None:
    settings = LdapSettings(url=directory.url, base_dn=PEOPLE_DN, bind_dn=ADMIN_DN)
    result = admin.org_test_ldap(settings, LdapSecrets(bind_password=ADMIN_PASSWORD))
    assert result == (
        f"Connected: bind as {ADMIN_DN} succeeded, search under {PEOPLE_DN} returned 2 entries"
    )


def test_a_connection_test_with_a_wrong_password_says_the_bind_was_refused(
    directory: Slapd, deployer: Console
) -> None:
    response = deployer.post(
        "/orgs/test-ldap",
        {
            "ldap_url": directory.url,
            "ldap_base_dn": BASE_DN,
            "ldap_bind_dn": ADMIN_DN,
            "ldap_bind_password": "not the password",
        },
    )
    assert response.status_code == 200
    result = element_text(response.text, "ldap-result")
    assert result.startswith("Not connected:")
    assert f"refused the authority's bind as {ADMIN_DN!r} (invalid credentials)" in result
    assert "not the password" not in response.text


def test_an_organization_made_in_the_console_finds_its_users(
    directory: Slapd, deployer: Console, admin: Admin
) -> None:
    response = deployer.post(
        "/orgs",
        {
            "name": "Sales",
            "auth": "ldap",
            "ldap_url": directory.url,
            "ldap_base_dn": BASE_DN,
            "ldap_bind_dn": ADMIN_DN,
            "ldap_bind_password": ADMIN_PASSWORD,
        },
    )
    assert response.status_code == 303
    with admin.db.transaction() as s:
        found = directory_for(find_org(s, "Sales")).find_user("jdoe")
    assert found is not None and found.display_name == "Jane Doe"
