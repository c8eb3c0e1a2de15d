"""Manual registration: a real agent waits for `holdfast login`, a real authority checks it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from authority.datadir import DataDir
from authority.db import Database
from authority.user_admin import create_user
from tests.integration.agent_process import Agent
from tests.integration.authority_process import Authority, admin, admin_json
from tests.integration.slapd import ADMIN_DN, ADMIN_PASSWORD, BASE_DN, Slapd, start_slapd

JDOE = "jdoe@example.com"
WRONG = "not-jdoes-password"


def manual_policy(authority: Authority, org: str, username: str) -> str:
    """`org`'s manual policy, whose detection script reports `username`; its CP_ARGS."""
    script = authority.data.parent / f"detect-{org}.sh"
    script.write_text(f"echo AGENT_USERNAME={username}\necho AGENT_USER_HOME=/home/jdoe\n")
    admin(
        authority.data, "policy", "create", "--org", org, "--manual", "--script", f"linux={script}"
    )
    view = admin_json(authority.data, "policy", "show", "--org", org)
    cp_args: str = view["install_args"]["cp_args"]
    return cp_args


def new_local_user(authority: Authority, username: str, org: str) -> str:
    """The user an administrator creates (`user create`), then their password, as
    `user reset-password` prints it for the administrator to pass on."""
    db = Database(DataDir(authority.data).database_url)
    try:
        with db.transaction() as s:
            create_user(s, username, org)
    finally:
        db.close()
    printed = admin(authority.data, "user", "reset-password", username, "--org", org).stdout
    return printed.split(": ", 1)[1].splitlines()[0].strip()


def login(agent: Agent, password: str, *options: str) -> subprocess.CompletedProcess[str]:
    """`holdfast login` with the password on stdin, which is not a terminal."""
    return subprocess.run(
        agent.command("login", *options),
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.fixture
def waiting(authority: Authority, agent: Agent) -> Agent:
    """An agent under a manual policy of the local organization `Manual`, awaiting sign-in."""
    admin(authority.data, "org", "create", "Manual", "--auth", "local")
    agent.start("--deploy-args", manual_policy(authority, "Manual", JDOE))
    agent.wait_phase("awaiting_sign_in")
    return agent


def test_a_manual_policy_waits_for_the_detected_user_to_sign_in(
    authority: Authority, waiting: Agent
) -> None:
    status = waiting.status()
    assert (status["username"], status["user_home"]) == (JDOE, "/home/jdoe")
    assert status["waiting_for"] == "the user to sign in (manual registration policy)"
    assert status["next_attempt_at"] is None and status["registered"] is False
    [device] = admin_json(authority.data, "device", "list")
    assert device["registered"] is False
    # A restart keeps waiting, without asking the authority or the detection script again.
    fetches = waiting.log().count("Retrieving deployment policy")
    waiting.stop()
    waiting.start()
    waiting.wait_phase("awaiting_sign_in")
    assert waiting.status()["username"] == JDOE
    assert waiting.log().count("Retrieving deployment policy") == fetches


def test_login_registers_after_a_wrong_password_and_leaves_no_password_behind(
    authority: Authority, waiting: Agent
) -> None:
    password = new_local_user(authority, JDOE, "Manual")

    wrong = login(waiting, WRONG)
    assert wrong.returncode == 1, wrong.stderr
    assert "wrong username or password" in wrong.stderr
    assert waiting.status()["phase"] == "awaiting_sign_in"

    signed_in = login(waiting, password)  # the username: the detected one, from status
    assert signed_in.returncode == 0, signed_in.stderr
    assert f"Signed in as {JDOE}" in signed_in.stdout
    status = waiting.wait_phase("backing_up")
    assert (status["username"], status["user_home"], status["registered"]) == (
        JDOE,
        "/home/jdoe",
        True,
    )
    [device] = admin_json(authority.data, "device", "list")
    assert device["registered"] is True and device["username"] == JDOE

    again = login(waiting, password)
    assert again.returncode == 2
    assert "this device does not need a sign-in (phase backing_up)" in again.stderr
    assert "signed in: device" in waiting.log()
    for secret in (password, WRONG):
        assert files_holding(waiting.home, secret) == []
        assert files_holding(authority.data, secret) == []


def test_five_wrong_passwords_lock_the_sign_in_for_fifteen_minutes(
    authority: Authority, waiting: Agent
) -> None:
    password = new_local_user(authority, JDOE, "Manual")
    for left in (4, 3, 2, 1):
        wrong = login(waiting, WRONG, "--username", JDOE)
        assert wrong.returncode == 1, wrong.stderr
        assert f"({left} more failed attempt" in wrong.stderr
    locked = login(waiting, WRONG, "--username", JDOE)
    assert locked.returncode == 4, locked.stderr
    assert "sign-in is locked for 15 more minutes" in locked.stderr
    # Locked is locked: the right password waits too.
    right = login(waiting, password, "--username", JDOE)
    assert right.returncode == 4
    assert waiting.status()["phase"] == "awaiting_sign_in"
    assert files_holding(waiting.home, password) == []


def test_login_needs_the_daemon_and_a_device_awaiting_sign_in(
    authority: Authority, agent: Agent, token: str
) -> None:
    assert login(agent, "whatever").returncode == 3
    cp_args = admin_json(authority.data, "policy", "show", "--org", "Demo")["install_args"]
    agent.start("--deploy-args", cp_args["cp_args"])  # a silent policy
    agent.wait_phase("backing_up")
    refused = login(agent, "whatever")
    assert refused.returncode == 2
    assert "does not need a sign-in (phase backing_up)" in refused.stderr


def test_a_user_whose_password_was_never_shown_is_told_to_ask_an_administrator(
    authority: Authority, waiting: Agent
) -> None:
    # As silent registration leaves a user: a generated password that nobody has seen.
    db = Database(DataDir(authority.data).database_url)
    try:
        with db.transaction() as s:
            user, _ = create_user(s, JDOE, "Manual")
            user.password_hidden = True
    finally:
        db.close()
    refused = login(waiting, "anything-at-all")
    assert refused.returncode == 4, refused.stderr
    assert "an administrator must reset it" in refused.stderr


# LDAP: the password is checked by binding to a real slapd as the user.


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Slapd]:
    server = start_slapd(tmp_path / "ldap")
    server.add_user("jdoe", display_name="Jane Doe", mail=JDOE, password="jdoe-ldap-pw")
    try:
        yield server
    finally:
        server.stop()


def test_ldap_sign_in_binds_as_the_user(
    authority: Authority, agent: Agent, directory: Slapd, tmp_path: Path
) -> None:
    bind_password = tmp_path / "bind.pw"
    bind_password.write_text(ADMIN_PASSWORD + "\n")
    admin(
        authority.data,
        *("org", "create", "Sales", "--auth", "ldap", "--ldap-url", directory.url),
        *("--ldap-base-dn", BASE_DN, "--ldap-bind-dn", ADMIN_DN),
        *("--ldap-bind-password-file", str(bind_password)),
    )
    agent.start("--deploy-args", manual_policy(authority, "Sales", "jdoe"))
    agent.wait_phase("awaiting_sign_in")
    wrong = login(agent, WRONG)
    assert wrong.returncode == 1, wrong.stderr
    assert "wrong username or password" in wrong.stderr
    signed_in = login(agent, "jdoe-ldap-pw")
    assert signed_in.returncode == 0, signed_in.stderr
    assert agent.wait_phase("backing_up")["username"] == "jdoe"
    [user] = admin_json(authority.data, "user", "list", "--org", "Sales")
    assert (user["username"], user["display_name"]) == ("jdoe", "Jane Doe")
    assert files_holding(agent.home, "jdoe-ldap-pw") == []
