"""Silent registration in LDAP and SSO organizations: a real authority, a real slapd, real agents.

The authority answers 503 with `--retry-after 1`, and agents retry every second
(agent_process.FAST), so no case waits for a real hourly retry.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from authority.datadir import DataDir
from authority.db import Database, User
from authority.orgs import find_org
from tests.integration.agent_process import Agent
from tests.integration.authority_process import Authority, admin, admin_json, free_port, initialise
from tests.integration.slapd import (
    ADMIN_DN,
    ADMIN_PASSWORD,
    BASE_DN,
    Slapd,
    TlsFiles,
    require_slapd,
    start_slapd,
)

UNMAPPED = "cannot sign in or restore until the mapping is fixed"


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Slapd]:
    """A running slapd holding jdoe (Jane Doe); in CI a missing slapd fails, never skips."""
    require_slapd()
    server = start_slapd(tmp_path / "ldap")
    server.add_user("jdoe", display_name="Jane Doe", mail="jdoe@example.com", password="pw")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bind_password(tmp_path: Path) -> Path:
    path = tmp_path / "bind.pw"
    path.write_text(ADMIN_PASSWORD + "\n")
    return path


@pytest.fixture
def authority(tmp_path: Path, directory: Slapd, bind_password: Path) -> Iterator[Authority]:
    """A running authority with `Sales` (LDAP, over the `directory`) and `Eng` (SSO)."""
    data = tmp_path / "authority"
    port = free_port()
    initialise(data, port)
    ldap_org(
        data,
        "Sales",
        directory.url,
        "--ldap-bind-dn",
        ADMIN_DN,
        "--ldap-bind-password-file",
        str(bind_password),
    )
    admin(data, "org", "create", "Eng", "--auth", "sso")
    server = Authority(data=data, port=port, extra_args=["--retry-after", "1"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def ldap_org(data: Path, name: str, url: str, *options: str) -> None:
    admin(
        data,
        "org",
        "create",
        name,
        "--auth",
        "ldap",
        "--ldap-url",
        url,
        "--ldap-base-dn",
        BASE_DN,
        *options,
    )


def policy(authority: Authority, org: str, username: str) -> dict[str, Any]:
    """Create the org's policy, whose detection script reports `username`; `policy show`."""
    script = authority.data.parent / f"detect-{org}.sh"
    script.write_text(f"echo AGENT_USERNAME='{username}'\necho AGENT_USER_HOME=/home/u\n")
    admin(authority.data, "policy", "create", "--org", org, "--script", f"linux={script}")
    view: dict[str, Any] = admin_json(authority.data, "policy", "show", "--org", org)
    return view


def register(
    authority: Authority, token: str, username: str, guid: str | None = None
) -> httpx.Response:
    with authority.client() as client:
        return client.post(
            "/api/v1/deploy/register",
            headers={"X-Deployment-Token": token},
            json={
                "device_guid": guid or str(uuid.uuid4()),
                "os": "linux",
                "username": username,
                "user_home": "/home/u",
            },
        )


def attempts(authority: Authority, *options: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = admin_json(authority.data, "device", "attempts", *options)
    return found


def users(authority: Authority, org: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = admin_json(authority.data, "user", "list", "--org", org)
    return found


# LDAP


def test_ldap_registers_a_matching_user_with_the_directorys_name_and_email(
    authority: Authority,
) -> None:
    token = policy(authority, "Sales", "JDoe")["token"]
    response = register(authority, token, "JDoe")
    assert response.status_code == 200, response.text
    assert response.json()["username"] == "jdoe"  # the directory's own spelling
    assert response.json()["warning"] is None
    [user] = users(authority, "Sales")
    assert (user["username"], user["display_name"], user["email"]) == (
        "jdoe",
        "Jane Doe",
        "jdoe@example.com",
    )
    assert user["can_sign_in"] is True
    [attempt] = attempts(authority)
    assert (attempt["outcome"], attempt["registered"], attempt["username"]) == (
        "registered",
        True,
        "JDoe",
    )


def test_ldap_no_match_keeps_the_agent_waiting_until_the_user_is_added(
    authority: Authority, directory: Slapd, agent: Agent
) -> None:
    agent.start("--deploy-args", policy(authority, "Sales", "ann")["install_args"]["cp_args"])
    sentence = "user 'ann' not found in the directory of organization 'Sales'"
    waiting = agent.wait_for(
        lambda s: s["phase"] == "awaiting_registration" and s["attempts"] >= 2,
        what="refused registrations",
    )
    assert waiting["last_error"] == sentence
    [pending] = admin_json(authority.data, "device", "list", "--pending")
    assert pending["guid"] == waiting["device_guid"]
    assert pending["last_attempt"]["outcome"] == "directory_user_not_found"
    assert pending["last_attempt"]["message"] == sentence
    assert users(authority, "Sales") == []

    directory.add_user("ann", display_name="Ann Smith", mail="ann@example.com")
    status = agent.wait_phase("backing_up")
    assert status["username"] == "ann"
    assert admin_json(authority.data, "device", "list", "--pending") == []
    outcomes = [a["outcome"] for a in attempts(authority, "--device", status["device_guid"])]
    assert outcomes[0] == "registered"
    assert set(outcomes[1:]) == {"directory_user_not_found"}
    # docs/operations.md, situation 4: the line support staff find, then the recovery.
    log = agent.log()
    assert (
        f" WARNING HF4101 [awaiting_registration] attempt failed: {sentence}; next attempt at "
        in log
    )
    assert "code=directory_user_not_found attempts=1" in log
    assert " INFO    HF0103 [backing_up] recovered after " in log


def test_ldap_directory_down_is_a_503_the_agent_retries_until_it_is_back(
    authority: Authority, directory: Slapd, agent: Agent
) -> None:
    view = policy(authority, "Sales", "jdoe")
    directory.stop()
    response = register(authority, view["token"], "jdoe")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"]["code"] == "directory_unavailable"

    agent.start("--deploy-args", view["install_args"]["cp_args"])
    waiting = agent.wait_for(
        lambda s: s["phase"] == "awaiting_registration" and s["attempts"] >= 1,
        what="a registration refused while the directory is down",
    )
    assert "the directory of organization 'Sales'" in waiting["last_error"]
    assert "is unavailable" in waiting["last_error"]
    assert "(HTTP 503)" in waiting["last_error"]
    # docs/operations.md, situation 5.
    assert " WARNING HF4102 [awaiting_registration] attempt failed: " in agent.log()
    assert "code=directory_unavailable attempts=1" in agent.log()
    directory.start()
    status = agent.wait_phase("backing_up")
    assert status["username"] == "jdoe"
    outcomes = {a["outcome"] for a in attempts(authority, "--org", "Sales")}
    assert outcomes == {"directory_unavailable", "registered"}


@pytest.mark.parametrize("username", ["*)(uid=*", "*", "jdoe)(|(uid=*"])
def test_a_filter_injection_is_a_username_that_matches_no_one(
    authority: Authority, directory: Slapd, username: str
) -> None:
    directory.add_user("ann")  # two users, so an injected wildcard would match (or be ambiguous)
    token = policy(authority, "Sales", "x")["token"]
    response = register(authority, token, username)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "directory_user_not_found"
    assert users(authority, "Sales") == []
    [attempt] = attempts(authority)
    assert (attempt["username"], attempt["outcome"]) == (username, "directory_user_not_found")


def test_a_user_disabled_in_the_directory_is_refused(
    authority: Authority, directory: Slapd
) -> None:
    directory.add_user("old", disabled=True)
    token = policy(authority, "Sales", "old")["token"]
    response = register(authority, token, "old")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "directory_user_disabled"
    assert (
        "'old' is disabled in the directory of organization 'Sales'"
        in (response.json()["error"]["message"])
    )
    assert users(authority, "Sales") == []
    assert attempts(authority)[0]["outcome"] == "directory_user_disabled"


def test_a_refused_service_bind_is_a_503_that_does_not_show_the_password_file(
    authority: Authority, directory: Slapd, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("not the password\n")
    ldap_org(
        authority.data,
        "Ops",
        directory.url,
        "--ldap-bind-dn",
        ADMIN_DN,
        "--ldap-bind-password-file",
        str(wrong),
    )
    response = register(authority, policy(authority, "Ops", "jdoe")["token"], "jdoe")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"]["code"] == "directory_bind_failed"
    assert str(wrong) not in response.text
    assert ADMIN_DN not in response.text


# LDAP over TLS


@pytest.fixture
def tls_directory(tmp_path: Path) -> Iterator[tuple[Slapd, Path]]:
    """A slapd serving ldaps:// and StartTLS with a certificate of a test CA; the CA's file."""
    require_slapd()
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(cert=tmp_path / "ldap-cert.pem", key=tmp_path / "ldap-key.pem")
    leaf.cert_chain_pems[0].write_to_path(str(files.cert))
    leaf.private_key_pem.write_to_path(str(files.key))
    ca_file = tmp_path / "ldap-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = start_slapd(tmp_path / "ldaps", tls=files)
    server.add_user("jdoe", display_name="Jane Doe")
    try:
        yield server, ca_file
    finally:
        server.stop()


def test_starttls_and_ldaps_register_when_the_ca_file_trusts_the_directory(
    authority: Authority, tls_directory: tuple[Slapd, Path]
) -> None:
    server, ca_file = tls_directory
    ldap_org(
        authority.data, "StartTLS", server.url, "--ldap-starttls", "--ldap-ca-file", str(ca_file)
    )
    ldap_org(authority.data, "LDAPS", server.ldaps_url, "--ldap-ca-file", str(ca_file))
    ldap_org(authority.data, "Untrusted", server.ldaps_url)
    for org in ("StartTLS", "LDAPS"):
        response = register(authority, policy(authority, org, "jdoe")["token"], "jdoe")
        assert response.status_code == 200, (org, response.text)
    untrusted = register(authority, policy(authority, "Untrusted", "jdoe")["token"], "jdoe")
    assert untrusted.status_code == 503
    assert untrusted.json()["error"]["code"] == "directory_unavailable"
    assert "certificate verify failed" in untrusted.json()["error"]["message"]


# SSO


def test_sso_registers_a_known_user_and_an_unknown_one_flagged_in_user_list(
    authority: Authority,
) -> None:
    database = Database(DataDir(authority.data).database_url)
    try:
        with database.transaction() as s:
            s.add(User(org=find_org(s, "Eng"), username="kim", password_hidden=False))
    finally:
        database.close()
    token = policy(authority, "Eng", "x")["token"]
    known = register(authority, token, "kim")
    unknown = register(authority, token, "zoe")
    assert known.status_code == unknown.status_code == 200
    assert (known.json()["user_created"], known.json()["warning"]) == (False, None)
    assert unknown.json()["user_created"] is True
    assert UNMAPPED in unknown.json()["warning"]
    by_name = {u["username"]: u for u in users(authority, "Eng")}
    assert by_name["kim"]["can_sign_in"] is True
    assert (by_name["zoe"]["can_sign_in"], by_name["zoe"]["needs_mapping"]) == (False, True)
    assert by_name["zoe"]["cannot_sign_in_because"] == UNMAPPED
    text = admin(authority.data, "user", "list", "--org", "Eng").stdout
    assert f"no ({UNMAPPED})" in text
    outcomes = {a["username"]: a["outcome"] for a in attempts(authority, "--org", "Eng")}
    assert outcomes == {"kim": "registered", "zoe": "registered_unmapped"}
    log = (authority.data / "log" / "authority.log").read_text()
    assert "user 'zoe' is not known to the SSO organization 'Eng'" in log


# The attempts view


def test_attempts_list_every_outcome_newest_first_with_filters(authority: Authority) -> None:
    admin(authority.data, "org", "create", "Local", "--auth", "local")
    local = policy(authority, "Local", "x")["token"]
    sales = policy(authority, "Sales", "x")["token"]
    guid = str(uuid.uuid4())
    assert register(authority, local, "jdoe", guid).status_code == 422  # not an e-mail
    assert register(authority, local, "jdoe@example.com", guid).status_code == 200
    assert register(authority, sales, "nobody").status_code == 404
    assert register(authority, str(uuid.uuid4()), "jdoe").status_code == 404  # unknown token
    listed = attempts(authority)
    assert [(a["org"], a["outcome"]) for a in listed] == [
        ("Sales", "directory_user_not_found"),
        ("Local", "registered"),
        ("Local", "username_not_email"),
    ]  # the unknown token's attempt is not recorded: nobody proved they may write here
    assert set(listed[0]) == {
        "at",
        "device_guid",
        "org",
        "username",
        "outcome",
        "registered",
        "message",
    }
    assert [a["outcome"] for a in attempts(authority, "--device", guid)] == [
        "registered",
        "username_not_email",
    ]
    assert [a["org"] for a in attempts(authority, "--org", "Local", "--limit", "1")] == ["Local"]
    text = admin(authority.data, "device", "attempts").stdout
    assert "directory_user_not_found" in text and "user 'nobody' not found" in text
