"""What each console page shows: devices, users, policies, and what a read-only operator sees."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from authority.admin import Admin
from authority.console import people_pages
from authority.db import Device, User
from authority.orgs import find_org
from tests.unit.console.client import (
    PENDING,
    REFUSAL,
    REGISTERED,
    Console,
    element_text,
    post_forms,
)

# Devices


def test_the_devices_page_shows_registered_and_pending_devices_with_the_reason(
    deployer: Console, fleet: None
) -> None:
    html = deployer.get("/devices").text
    assert 'table id="devices"' in html
    rows = dict(
        re.findall(r'<tr data-guid="([^"]+)".*?<td class="status">([^<]*)</td>', html, re.S)
    )
    assert rows[REGISTERED] == "registered"
    assert rows[PENDING] == ("installed, not registered: " + REFUSAL.replace("'", "&#39;"))
    registered_row = html.split(f'data-guid="{REGISTERED}"')[1].split("</tr>")[0]
    for cell in (
        "laptop-jane",
        "jane@example.com",
        "acme",
        "linux",
        "0.1.0",
        "backing_up",
        "2026-03-01 09:30 UTC",
        f"/devices/{REGISTERED}",
    ):
        assert cell in registered_row
    pending_row = html.split(f'data-guid="{PENDING}"')[1].split("</tr>")[0]
    for cell in ("desk-7", "windows", "awaiting_registration", "none yet"):
        assert cell in pending_row


def test_the_devices_page_filters_by_organization_and_protection(
    deployer: Console, fleet: None, admin: Admin
) -> None:
    admin.org_create("globex", "local", None, None)
    assert f'data-guid="{PENDING}"' in deployer.get("/devices?org=acme").text
    assert "data-guid=" not in deployer.get("/devices?org=globex").text
    unprotected = deployer.get("/devices?not_protected=1").text
    assert f'data-guid="{PENDING}"' in unprotected
    assert f'data-guid="{REGISTERED}"' not in unprotected  # registered, backed up, no error
    with admin.db.transaction() as s:
        device = s.scalars(select(Device).where(Device.guid == REGISTERED)).one()
        device.last_error = "backup failed: disk full"
    assert f'data-guid="{REGISTERED}"' in deployer.get("/devices?not_protected=1").text
    assert deployer.get("/devices?org=nope").status_code == 404


def test_long_lists_come_in_pages_that_keep_their_filters(
    deployer: Console, fleet: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(people_pages, "PAGE_ROWS", 1)
    first = deployer.get("/devices?org=acme").text
    assert first.count("data-guid=") == 1
    assert "2 devices" in first and "Devices 1 to 1 of 2" in first
    assert 'id="next-page" href="/devices?org=acme&amp;page=2"' in first
    assert 'id="previous-page"' not in first
    second = deployer.get("/devices?org=acme&page=2").text
    assert second.count("data-guid=") == 1 and "Devices 2 to 2 of 2" in second
    assert 'id="next-page"' not in second
    assert deployer.get("/devices?org=acme&page=9").text.count("data-guid=") == 1  # the last
    assert 'id="next-page"' in deployer.get("/devices?org=acme&page=0").text  # the first
    assert "data-user=" in deployer.get("/users?page=1").text


def test_a_device_page_lists_its_registration_attempts(deployer: Console, fleet: None) -> None:
    html = deployer.get(f"/devices/{PENDING}").text
    assert "username_not_email" in html
    assert REFUSAL.replace("'", "&#39;") in html
    assert "installed, not registered:" in html
    backed_up = deployer.get(f"/devices/{REGISTERED}").text
    assert "4.0 KiB" in backed_up and "/home/jane" in backed_up
    assert deployer.get(f"/devices/{uuid.uuid4()}").status_code == 404


# Users


def test_the_users_page_flags_sso_unmatched_and_hidden_passwords(
    deployer: Console, admin: Admin, fleet: None
) -> None:
    admin.org_create("idp", "sso", None, None)
    with admin.db.transaction() as s:
        s.add(
            User(
                org=find_org(s, "idp"), username="ghost", needs_mapping=True, password_hidden=False
            )
        )
    html = deployer.get("/users").text
    jane = html.split('data-user="jane@example.com"')[1].split("</tr>")[0]
    assert "password hidden" in jane and "Reset password" in jane
    ghost = html.split('data-user="ghost"')[1].split("</tr>")[0]
    assert "SSO unmatched" in ghost and "Reset password" not in ghost  # not a local user
    only_idp = deployer.get("/users?org=idp").text
    assert "ghost" in only_idp and "jane@example.com" not in only_idp


# Policy


def test_the_policy_page_holds_exactly_what_policy_show_gives(
    deployer: Console, admin: Admin
) -> None:
    view = admin.policy_show("acme")  # the CLI's `policy show --json`
    html = deployer.get("/orgs/acme/policy").text
    install_args = view["install_args"]
    for element_id, key in (
        ("cp-args", "cp_args"),
        ("msiexec", "msiexec"),
        ("deploy-properties", "deploy_properties"),
        ("linux-command", "linux"),
    ):
        assert element_text(html, element_id) == install_args[key]
        assert f'<button type="button" class="copy" data-copy="{element_id}"' in html
    assert element_text(html, "token") == view["token"]
    assert element_text(html, "deployment-url") == view["deployment_url"]
    for pin in view["tls_pins"]:
        assert pin["sha1"] in html and pin["sha256"] in html


def test_the_policy_page_shows_each_script_with_its_hash_and_text(
    deployer: Console, admin: Admin, tmp_path: Path
) -> None:
    script = tmp_path / "detect.sh"
    script.write_text('echo "AGENT_USERNAME=a@example.com"\necho "AGENT_USER_HOME=/home/a"\n')
    admin.org_create("globex", "local", None, None)
    admin.policy_create("globex", True, [f"linux={script}"])
    [stored] = admin.policy_show("globex")["scripts"]
    html = deployer.get("/orgs/globex/policy").text
    assert stored["sha256"] in html and "detect.sh" in html and "/bin/bash" in html
    assert "AGENT_USER_HOME=/home/a" in html and "<details>" in html
    assert "manual" in html
    assert "none: agents on Windows report that no detection script is set" in html


# Read-only operators


def test_a_read_only_operator_sees_every_page_and_no_form_that_changes(
    viewer: Console, fleet: None
) -> None:
    for path in (
        "/devices",
        "/orgs",
        "/orgs/acme",
        "/orgs/acme/policy",
        "/users",
        f"/devices/{PENDING}",
    ):
        response = viewer.get(path)
        assert response.status_code == 200, path
        assert post_forms(response.text) == ["/sign-out"], path
    assert "read-only" in viewer.get("/devices").text
    assert 'id="cp-args"' in viewer.get("/orgs/acme/policy").text


@pytest.mark.parametrize(
    "path",
    [
        "/orgs/acme/policy/rotate",
        "/orgs/acme/policy/delete",
        "/orgs/acme/deactivate",
        "/users/acme/jane@example.com/reset-password",
    ],
)
def test_a_read_only_operator_gets_no_confirmation_page(
    viewer: Console, fleet: None, path: str
) -> None:
    response = viewer.get(path)
    assert response.status_code == 403
    assert "read-only" in response.text and 'id="confirm"' not in response.text
