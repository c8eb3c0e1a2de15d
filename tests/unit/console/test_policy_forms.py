"""The console's policy and user forms: what each changes, and what it refuses and why.

Refusals common to every form (CSRF, roles, no session) are in test_forms.py.
"""

from __future__ import annotations

import logging
import re

import pytest
from fastapi import FastAPI
from sqlalchemy import select

from authority.admin import Admin
from authority.console.access import local_path
from authority.console.forms import editor_text, in_form_words
from authority.console.people_pages import status_of
from authority.db import User
from authority.passwords import verify_password
from authority.policies import find_policy
from tests.unit.console.client import SHIPPED, Console, element_text, world


@pytest.fixture
def app(beta_app: FastAPI) -> FastAPI:
    """acme's fleet and "beta", an organization without a policy: what the forms change."""
    return beta_app


# Policies


def test_a_policy_from_a_loaded_and_edited_shipped_script(deployer: Console, admin: Admin) -> None:
    loaded = deployer.post(
        "/orgs/beta/policy/load",
        {"load": "linux", "shipped_linux": "fixed_user.sh", "registration": "manual"},
    )
    assert loaded.status_code == 200
    shipped = (SHIPPED / "linux" / "fixed_user.sh").read_text()
    assert element_text(loaded.text, "script_linux") == shipped
    assert 'value="fixed_user.sh"' in loaded.text
    assert '<option value="manual" selected>' in loaded.text
    # The administrator edits the two lines; the browser sends the lines with CRLF.
    edited = shipped.replace('"user@example.com"', '"jane@example.com"')
    response = deployer.post(
        "/orgs/beta/policy",
        {
            "registration": "manual",
            "script_linux": edited.replace("\n", "\r\n"),
            "filename_linux": "fixed_user.sh",
        },
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/orgs/beta/policy?done=policy-created"
    with admin.db.transaction() as s:
        policy = find_policy(s, "beta")
        [script] = policy.scripts
        assert (script.os, script.content, policy.manual) == ("linux", edited, True)
    html = deployer.get(response.headers["location"]).text
    assert "Policy created." in html and element_text(html, "cp-args").startswith("DEPLOYMENT_URL=")


def test_a_link_can_open_the_editor_with_a_shipped_script(deployer: Console) -> None:
    html = deployer.get("/orgs/beta/policy?load=windows&shipped_windows=fixed_user.ps1").text
    shipped = (SHIPPED / "windows" / "fixed_user.ps1").read_bytes().decode()
    assert element_text(html, "script_windows").replace("\r\n", "\n") == shipped.replace(
        "\r\n", "\n"
    )
    assert 'id="load-linux"' in html and 'id="create-policy"' in html


def test_an_uploaded_script_wins_over_the_editor(deployer: Console, admin: Admin) -> None:
    uploaded = b"Write-Output 'AGENT_USERNAME=jane@example.com'\r\n"
    response = deployer.post(
        "/orgs/beta/policy",
        {"registration": "silent", "script_windows": "ignored", "filename_windows": "x.ps1"},
        files={"upload_windows": ("detect.ps1", uploaded)},
    )
    assert response.status_code == 303
    with admin.db.transaction() as s:
        [script] = find_policy(s, "beta").scripts
        assert (script.filename, script.content) == ("detect.ps1", uploaded.decode())
        assert script.interpreter[0] == "powershell.exe"


@pytest.mark.parametrize(
    ("fields", "files", "message"),
    [
        ({"script_windows": "echo hi", "filename_windows": "detect.txt"}, None, "must end in .ps1"),
        ({"script_linux": "echo hi"}, None, "give the Linux script a file name"),
        ({"registration": "sometimes"}, None, "choose silent or manual"),
        ({}, {"upload_macos": ("tool.bin", b"\x7fELF\x00\x01")}, "contains NUL bytes"),
        ({"script_linux": "x", "filename_linux": "../x.sh"}, None, "no / or"),
    ],
)
def test_a_policy_the_rules_refuse_comes_back_with_the_message_and_the_scripts(
    deployer: Console,
    admin: Admin,
    fields: dict[str, str],
    files: dict[str, tuple[str, bytes]] | None,
    message: str,
) -> None:
    before = world(admin)
    typed = "#!/bin/sh\necho AGENT_USERNAME=a@example.com\n"
    response = deployer.post(
        "/orgs/beta/policy",
        {"script_macos": typed, "filename_macos": "kept.sh", **fields},
        files=files,
    )
    assert response.status_code == 422
    error = re.search(r'<p class="error" role="alert">([^<]*)</p>', response.text)
    assert error is not None
    assert message.lower() in error.group(1).replace("&#39;", "'").lower()
    if files is None:
        assert element_text(response.text, "script_macos") == typed
    assert world(admin) == before


def test_settings_change_through_policy_set_and_a_refusal_keeps_the_text(
    deployer: Console, admin: Admin
) -> None:
    response = deployer.post(
        "/orgs/acme/policy/settings",
        {"settings": "backup_interval_seconds=3600\n\nexclude=*.iso,tmp/\n"},
    )
    assert response.headers["location"] == "/orgs/acme/policy?done=settings-saved"
    settings = admin.policy_show("acme")["settings"]
    assert (settings["backup_interval_seconds"], settings["exclude"]) == (3600, ["*.iso", "tmp/"])
    before = world(admin)
    refused = deployer.post(
        "/orgs/acme/policy/settings", {"settings": "backup_interval_seconds=5\nnope=1"}
    )
    assert refused.status_code == 422
    assert "below the minimum 60" in refused.text
    assert element_text(refused.text, "settings-lines") == "backup_interval_seconds=5\nnope=1"
    assert element_text(refused.text, "cp-args")  # the rest of the page is there
    assert world(admin) == before
    assert deployer.post("/orgs/acme/policy/settings", {"settings": ""}).status_code == 422


def test_a_new_token_is_explained_then_made(deployer: Console, admin: Admin) -> None:
    old = admin.policy_show("acme")["token"]
    confirm = deployer.get("/orgs/acme/policy/rotate")
    assert (
        "Installs not yet registered with the old token will stop working until redeployed "
        "with the new arguments; registered devices are not affected."
    ) in confirm.text
    assert '<button id="confirm"' in confirm.text
    response = deployer.post("/orgs/acme/policy/rotate")
    assert response.headers["location"] == "/orgs/acme/policy?done=token-rotated"
    new = admin.policy_show("acme")["token"]
    assert new != old
    html = deployer.get(response.headers["location"]).text
    assert new in element_text(html, "cp-args") and old not in html


def test_deleting_a_policy_is_explained_then_done(deployer: Console, admin: Admin) -> None:
    confirm = deployer.get("/orgs/acme/policy/delete")
    assert "Its token stops working at once" in confirm.text
    response = deployer.post("/orgs/acme/policy/delete")
    assert response.headers["location"] == "/orgs/acme?done=policy-deleted"
    assert "Policy deleted" in deployer.get(response.headers["location"]).text
    assert 'id="create-policy"' in deployer.get("/orgs/acme/policy").text
    assert deployer.get("/orgs/acme/policy/delete").status_code == 404
    assert deployer.post("/orgs/acme/policy/rotate").status_code == 404


# Users


def test_a_password_reset_shows_the_new_password_once(deployer: Console, admin: Admin) -> None:
    confirm = deployer.get("/users/acme/jane@example.com/reset-password")
    assert "the old one stops working" in confirm.text
    response = deployer.post("/users/acme/jane@example.com/reset-password")
    assert response.status_code == 200
    assert "It is shown only now" in response.text
    assert response.headers["cache-control"] == "no-store"
    password = element_text(response.text, "new-password")
    with admin.db.transaction() as s:
        user = s.scalars(select(User).where(User.username == "jane@example.com")).one()
        assert user.password_hash is not None and verify_password(password, user.password_hash)
        assert not user.password_hidden
    assert deployer.get("/users/acme/nobody@example.com/reset-password").status_code == 404


# What the forms add to the shared code


@pytest.mark.parametrize(
    ("os_name", "typed", "stored"),
    [
        ("linux", "a\r\nb\r\n", "a\nb\n"),
        ("macos", "a\rb", "a\nb"),
        ("windows", "a\nb\r\n", "a\r\nb\r\n"),
    ],
)
def test_the_editor_stores_the_line_endings_the_script_runs_with(
    os_name: str, typed: str, stored: str
) -> None:
    assert editor_text(os_name, typed) == stored


def test_messages_name_the_form_fields_not_the_cli_options() -> None:
    assert (
        in_form_words("--ldap-bind-dn needs --ldap-bind-password-file")
        == "The bind DN needs the bind password"
    )
    assert in_form_words("--auth ldap needs --ldap-url and --ldap-base-dn") == (
        "LDAP authentication needs the LDAP URL and the base DN"
    )


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("/devices?org=acme", True),
        ("/orgs/a%2Fb/policy", True),
        ("https://evil.example/", False),
        ("//evil.example/", False),
        ("/\\evil.example", False),
        ("/sign-in?next=/x", False),
        ("/devices\r\nSet-Cookie: x=1", False),
        ("", False),
    ],
)
def test_only_a_path_of_this_console_is_a_place_to_return_to(value: str, kept: bool) -> None:
    assert (local_path(value) == value) is kept


def test_a_status_reads_registered_or_the_latest_reason() -> None:
    base = {"registered": False, "last_error": None, "last_attempt": None}
    assert status_of({**base, "registered": True}) == "registered"
    assert status_of(base) == "installed, not registered: no registration attempt yet"
    assert status_of({**base, "last_error": "no user detected"}) == (
        "installed, not registered: no user detected"
    )
    refused = {"registered": False, "message": "token replaced"}
    assert status_of({**base, "last_error": "x", "last_attempt": refused}) == (
        "installed, not registered: token replaced"
    )


def test_every_change_leaves_an_audit_line_with_who_and_what_but_no_values(
    deployer: Console, viewer: Console, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="authority.console"):
        deployer.post("/orgs/acme/policy/rotate")
        deployer.post("/orgs/acme/policy/settings", {"settings": "backup_interval_seconds=4711"})
        assert viewer.post("/orgs/acme/policy/rotate").status_code == 403
        deployer.post("/orgs/acme/policy/load", {"load": "linux", "shipped_linux": "x.sh"})
    changes = [r.getMessage() for r in caplog.records if "console change" in r.getMessage()]
    assert len(changes) == 2
    assert "console change /orgs/acme/policy/rotate by 'deployer' (deploy role)" in changes[0]
    assert "console change /orgs/acme/policy/settings by 'deployer'" in changes[1]
    assert not any("4711" in r.getMessage() for r in caplog.records)
