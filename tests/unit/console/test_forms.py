"""The console's forms: each changes what the CLI's command changes, or nothing and says why.

Every changing form is refused without the session's CSRF token and for a read-only
operator, and a form the shared code refuses comes back with the message and what was typed.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from fastapi import FastAPI

from authority.admin import Admin
from authority.console.access import CSRF_REFUSED
from authority.datadir import DataDir
from authority.orgs import find_org
from tests.unit.console.client import Console, browser, element_text, world

UNREACHABLE = "ldap://127.0.0.1:9"  # discard: nothing listens there
BIND_PASSWORD = "bind-secret-4711"


@pytest.fixture
def app(beta_app: FastAPI) -> FastAPI:
    """acme's fleet and "beta", an organization without a policy: what the forms change."""
    return beta_app


CHANGING = [
    ("/orgs", {"name": "globex", "auth": "local"}),
    ("/orgs/test-ldap", {"ldap_url": UNREACHABLE, "ldap_base_dn": "dc=example,dc=com"}),
    ("/orgs/acme/deactivate", {}),
    ("/orgs/beta/policy", {"registration": "silent"}),
    ("/orgs/beta/policy/load", {"load": "linux", "shipped_linux": "fixed_user.sh"}),
    ("/orgs/acme/policy/settings", {"settings": "backup_interval_seconds=3600"}),
    ("/orgs/acme/policy/rotate", {}),
    ("/orgs/acme/policy/delete", {}),
    ("/users/acme/jane@example.com/reset-password", {}),
]


# Refusals


@pytest.mark.parametrize(("path", "fields"), CHANGING)
@pytest.mark.parametrize("token", [None, "forged-token"])
def test_a_post_without_the_session_csrf_token_is_refused_and_changes_nothing(
    deployer: Console, admin: Admin, path: str, fields: dict[str, str], token: str | None
) -> None:
    before = world(admin)
    response = deployer.post(path, fields, csrf=token)
    assert response.status_code == 403
    assert CSRF_REFUSED.replace("'", "&#39;") in response.text
    assert world(admin) == before


def test_another_sessions_token_is_refused(app: FastAPI, deployer: Console, admin: Admin) -> None:
    for other in browser(app, "deployer"):
        before = world(admin)
        response = deployer.post("/orgs/acme/policy/rotate", csrf=other.csrf)
        assert response.status_code == 403
        assert world(admin) == before


@pytest.mark.parametrize(("path", "fields"), CHANGING)
def test_a_read_only_operator_is_refused_and_nothing_changes(
    viewer: Console, admin: Admin, path: str, fields: dict[str, str]
) -> None:
    before = world(admin)
    response = viewer.post(path, fields)
    assert response.status_code == 403
    assert "Your role, read-only," in response.text
    assert world(admin) == before


@pytest.mark.parametrize(("path", "fields"), CHANGING)
def test_a_post_without_a_session_goes_to_sign_in_and_changes_nothing(
    anonymous: Console, admin: Admin, path: str, fields: dict[str, str]
) -> None:
    before = world(admin)
    response = anonymous.post(path, fields, csrf="anything")
    assert response.status_code == 303
    assert response.headers["location"] == "/sign-in"
    assert world(admin) == before


# Organizations


def test_creating_an_organization_redirects_to_it_with_a_notice(
    deployer: Console, admin: Admin
) -> None:
    response = deployer.post("/orgs", {"name": "globex", "auth": "sso", "parent": "acme"})
    assert response.status_code == 303
    assert response.headers["location"] == "/orgs/globex?done=org-created"
    page = deployer.get(response.headers["location"]).text
    assert '<p class="notice" role="status">Organization created.</p>' in page
    assert next(o for o in admin.org_list() if o["name"] == "globex")["parent"] == "acme"


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"name": "", "auth": "local"}, 422, "1-128 printable characters"),
        ({"name": "acme", "auth": "local"}, 409, "already exists"),
        ({"name": "globex", "auth": "kerberos"}, 422, "use one of local, ldap, sso"),
        ({"name": "globex", "auth": "local", "parent": "nope"}, 404, "no organization named"),
        ({"name": "globex", "auth": "ldap"}, 422, "LDAP authentication needs the LDAP URL"),
        (
            {"name": "globex", "auth": "local", "ldap_url": "ldap://x"},
            422,
            "LDAP settings apply to LDAP authentication only",
        ),
        (
            {
                "name": "globex",
                "auth": "ldap",
                "ldap_url": "http://x",
                "ldap_base_dn": "dc=x",
                "ldap_bind_dn": "cn=reader,dc=x",
                "ldap_bind_password": BIND_PASSWORD,
            },
            422,
            "The LDAP URL 'http://x': must start with ldap:// or ldaps://",
        ),
        (
            {
                "name": "globex",
                "auth": "ldap",
                "ldap_url": "ldap://x",
                "ldap_base_dn": "dc=x",
                "ldap_bind_dn": "cn=reader,dc=x",
            },
            422,
            "the bind DN needs the bind password",
        ),
        (
            {
                "name": "globex",
                "auth": "ldap",
                "ldap_url": "ldap://x",
                "ldap_base_dn": "dc=x",
                "ldap_bind_password": BIND_PASSWORD,
            },
            422,
            "a bind password needs a bind DN",
        ),
    ],
)
def test_an_organization_the_rules_refuse_comes_back_with_the_message_and_the_values(
    deployer: Console, admin: Admin, fields: dict[str, str], status: int, message: str
) -> None:
    before = world(admin)
    response = deployer.post("/orgs", fields)
    assert response.status_code == status
    error = re.search(r'<p class="error" role="alert">([^<]*)</p>', response.text)
    assert error is not None
    assert message.lower() in error.group(1).replace("&#39;", "'").lower()
    if fields["name"]:
        assert f'value="{fields["name"]}"' in response.text
    assert BIND_PASSWORD not in response.text  # a password is never sent back
    assert world(admin) == before


def test_an_ldap_organization_keeps_its_bind_password_in_a_private_file(
    deployer: Console, admin: Admin, data: DataDir
) -> None:
    fields = {
        "name": "corp/eu",  # any printable name: the file name must still be safe
        "auth": "ldap",
        "ldap_url": "ldaps://ldap.example.com",
        "ldap_base_dn": "dc=example,dc=com",
        "ldap_bind_dn": "cn=reader,dc=example,dc=com",
        "ldap_bind_password": BIND_PASSWORD,
        "ldap_user_filter": "(&(objectClass=person)(sAMAccountName={username}))",
    }
    response = deployer.post("/orgs", fields)
    assert response.status_code == 303
    with admin.db.transaction() as s:
        ldap = find_org(s, "corp/eu").ldap
    assert ldap is not None
    password_file = Path(ldap["bind_password_file"])
    assert password_file.parent == data.root / "ldap"
    assert password_file.read_text() == BIND_PASSWORD
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert ldap["user_filter"] == fields["ldap_user_filter"]
    assert [p.name for p in (data.root / "ldap").iterdir()] == [password_file.name]
    page = deployer.get("/orgs/corp%2Feu")
    assert "cn=reader,dc=example,dc=com" in page.text and BIND_PASSWORD not in page.text


def test_testing_an_unreachable_directory_says_why_and_keeps_the_values(
    deployer: Console, admin: Admin
) -> None:
    before = world(admin)
    fields = {
        "name": "globex",
        "auth": "ldap",
        "ldap_url": UNREACHABLE,
        "ldap_base_dn": "dc=example,dc=com",
        "ldap_bind_dn": "cn=reader,dc=example,dc=com",
        "ldap_bind_password": BIND_PASSWORD,
    }
    response = deployer.post("/orgs/test-ldap", fields)
    assert response.status_code == 200
    result = element_text(response.text, "ldap-result")
    assert result.startswith("Not connected: the LDAP directory (ldap://127.0.0.1:9)")
    assert "cannot be reached" in result and "Traceback" not in response.text
    assert 'value="dc=example,dc=com"' in response.text and 'value="globex"' in response.text
    assert BIND_PASSWORD not in response.text
    assert world(admin) == before


def test_testing_settings_the_rules_refuse_shows_the_rule(deployer: Console) -> None:
    response = deployer.post("/orgs/test-ldap", {"ldap_url": "ldaps://x", "ldap_base_dn": ""})
    assert response.status_code == 422
    assert "The base DN: must not be empty" in element_text(response.text, "ldap-result")


def test_deactivating_says_what_it_does_then_does_it(deployer: Console, admin: Admin) -> None:
    confirm = deployer.get("/orgs/acme/deactivate")
    assert "Its deployment policy stops working at once" in confirm.text
    assert 'id="confirm"' in confirm.text
    response = deployer.post("/orgs/acme/deactivate")
    assert response.headers["location"] == "/orgs/acme?done=org-deactivated"
    assert [o["active"] for o in admin.org_list() if o["name"] == "acme"] == [False]
    assert "does not work" in deployer.get("/orgs/acme/policy").text
    assert deployer.get("/orgs/acme/deactivate").status_code == 409


def test_pasted_ca_certificates_that_are_not_pem_are_refused_and_nothing_is_left(
    deployer: Console, admin: Admin, data: DataDir
) -> None:
    before = world(admin)
    response = deployer.post(
        "/orgs",
        {
            "name": "globex",
            "auth": "ldap",
            "ldap_url": "ldaps://ldap.example.com",
            "ldap_base_dn": "dc=example,dc=com",
            "ldap_ca_pem": "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----",
        },
    )
    assert response.status_code == 422
    assert "The CA certificates (pasted): not a readable PEM file" in response.text
    assert "not base64" in response.text  # the textarea keeps what was pasted
    assert world(admin) == before
    assert list((data.root / "ldap").iterdir()) == []  # the staged files are gone
