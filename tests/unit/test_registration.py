"""Silent registration, device reports, and the users registration creates."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace

import pytest
from sqlalchemy import func, select

from authority.db import Database, Device, User
from authority.directory import DirectoryUser
from authority.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    Unauthorized,
    Unavailable,
)
from authority.orgs import deactivate_org
from authority.passwords import verify_password
from authority.policies import policy_for_token, rotate_token
from authority.registration import (
    DeviceReport,
    Registration,
    RegistrationRequest,
    device_for_credential,
    device_summary,
    record_report,
    register,
)
from authority.users import list_users, reset_password, user_summary

MakePolicy = Callable[..., str]
GUID = "0b7e4b56-4f0e-4d7c-9a55-2c1d3e4f5a6b"


def request(
    guid: str = GUID, username: str = "alice@example.com", home: str = "/home/alice"
) -> RegistrationRequest:
    report = DeviceReport(guid=guid, name="alice-laptop", os="linux", agent_version="0.1.0")
    return RegistrationRequest(device=report, username=username, user_home=home)


def do_register(database: Database, token: str, req: RegistrationRequest) -> Registration:
    with database.transaction() as s:
        return register(s, policy_for_token(s, token), req)


def device_count(database: Database) -> int:
    with database.transaction() as s:
        return s.scalar(select(func.count()).select_from(Device)) or 0


# Registration


def test_registration_creates_a_backing_up_device_with_a_working_credential(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme")
    result = do_register(database, token, request())
    assert result.user_created
    assert not result.already_registered
    with database.transaction() as s:
        device = device_for_credential(s, result.credential)
        summary = device_summary(device)
    assert summary["guid"] == GUID
    assert summary["org"] == "Acme"
    assert summary["username"] == "alice@example.com"
    assert summary["user_home"] == "/home/alice"
    assert summary["registered"] is True
    assert summary["phase"] == "backing_up"


def test_local_organization_refuses_a_username_that_is_not_an_email(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme")
    with pytest.raises(InvalidInput) as caught:
        do_register(database, token, request(username="alice"))
    assert caught.value.code == "username_not_email"
    assert "'alice'" in caught.value.message
    assert device_count(database) == 0


@pytest.mark.parametrize("home", ["home/alice", "", "~alice"])
def test_relative_user_home_is_refused(
    database: Database, make_policy: MakePolicy, home: str
) -> None:
    token = make_policy("Acme")
    with pytest.raises(InvalidInput, match="user_home"):
        do_register(database, token, request(home=home))


def test_windows_user_home_is_accepted(database: Database, make_policy: MakePolicy) -> None:
    token = make_policy("Acme")
    result = do_register(database, token, request(home="C:\\Users\\alice"))
    assert result.device.user_home == "C:\\Users\\alice"


def test_registering_again_keeps_the_device_and_replaces_the_credential(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme")
    first = do_register(database, token, request())
    second = do_register(database, token, request())
    assert second.already_registered
    assert not second.user_created
    assert second.device.id == first.device.id
    assert second.credential != first.credential
    assert device_count(database) == 1
    with pytest.raises(Unauthorized) as caught, database.transaction() as s:
        device_for_credential(s, first.credential)
    assert caught.value.code == "credential_invalid"
    with database.transaction() as s:
        assert device_for_credential(s, second.credential).guid == GUID


class FakeDirectory:
    """An LDAP directory holding `users`, or down."""

    def __init__(self, *users: DirectoryUser, down: bool = False) -> None:
        self.users = {u.username.lower(): u for u in users}
        self.down = down

    def find_user(self, username: str) -> DirectoryUser | None:
        if self.down:
            raise Unavailable("the directory is down", code="directory_unavailable")
        return self.users.get(username.lower())

    def authenticate(self, username: str, password: str) -> DirectoryUser | None:
        raise AssertionError("registration never checks a password")


ALICE = DirectoryUser("alice", "uid=alice,dc=x", "Alice Liddell", "alice@example.com", False)


def ldap_register(
    database: Database, token: str, directory: FakeDirectory, **kw: str
) -> Registration:
    with database.transaction() as s:
        return register(
            s, policy_for_token(s, token), request(**kw), directories=lambda _org: directory
        )


def test_ldap_registers_to_the_directory_user_with_its_name_and_email(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme", "ldap")
    result = ldap_register(database, token, FakeDirectory(ALICE), username="ALICE")
    assert result.user_created and result.warning is None
    with database.transaction() as s:
        (summary,) = [user_summary(s, u) for u in list_users(s)]
    assert summary["username"] == "alice"  # the directory's spelling
    assert (summary["display_name"], summary["email"]) == ("Alice Liddell", "alice@example.com")
    assert summary["can_sign_in"] is True  # the directory checks the password
    again = ldap_register(database, token, FakeDirectory(ALICE), username="alice")
    assert not again.user_created and again.already_registered


@pytest.mark.parametrize(
    ("directory", "error", "code"),
    [
        (FakeDirectory(), NotFound, "directory_user_not_found"),
        (FakeDirectory(replace(ALICE, disabled=True)), Forbidden, "directory_user_disabled"),
        (FakeDirectory(ALICE, down=True), Unavailable, "directory_unavailable"),
    ],
)
def test_ldap_refusals_register_nothing(
    database: Database,
    make_policy: MakePolicy,
    directory: FakeDirectory,
    error: type[Exception],
    code: str,
) -> None:
    token = make_policy("Sales", "ldap")
    with pytest.raises(error) as caught:
        ldap_register(database, token, directory, username="alice")
    assert getattr(caught.value, "code", None) == code
    assert device_count(database) == 0
    if code == "directory_user_not_found":
        assert str(caught.value) == (
            "user 'alice' not found in the directory of organization 'Sales'"
        )


def test_sso_registers_an_unknown_user_flagged_until_the_mapping_is_fixed(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme", "sso")
    first = do_register(database, token, request(username="alice"))
    second = do_register(database, token, request(guid=str(uuid.uuid4()), username="Alice"))
    assert first.user_created and not second.user_created  # the same user, linked
    assert first.warning and "cannot sign in or restore until the mapping is fixed" in first.warning
    with database.transaction() as s:
        (summary,) = [user_summary(s, u) for u in list_users(s)]
    assert summary["needs_mapping"] is True
    assert summary["can_sign_in"] is False
    assert (
        summary["cannot_sign_in_because"] == "cannot sign in or restore until the mapping is fixed"
    )
    assert len(summary["devices"]) == 2


def test_sso_links_a_known_user_without_a_warning(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme", "sso")
    with database.transaction() as s:
        s.add(User(org=policy_for_token(s, token).org, username="alice", password_hidden=False))
    result = do_register(database, token, request(username="alice"))
    assert not result.user_created
    assert result.warning is None


def test_manual_policy_requires_the_user_to_sign_in(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme", manual=True)
    with pytest.raises(Forbidden) as caught:
        do_register(database, token, request())
    assert caught.value.code == "sign_in_required"
    assert device_count(database) == 0


def test_device_registered_in_one_organization_is_refused_by_another(
    database: Database, make_policy: MakePolicy
) -> None:
    acme = make_policy("Acme")
    globex = make_policy("Globex")
    first = do_register(database, acme, request())
    with pytest.raises(Conflict) as caught:
        do_register(database, globex, request())
    assert caught.value.code == "device_in_other_org"
    assert "'Acme'" in caught.value.message
    with database.transaction() as s:
        device = device_for_credential(s, first.credential)
        assert device.org.name == "Acme"


def test_pending_device_moves_to_the_organization_it_registers_with(
    database: Database, make_policy: MakePolicy
) -> None:
    acme = make_policy("Acme")
    globex = make_policy("Globex")
    with database.transaction() as s:
        record_report(s, policy_for_token(s, acme).org, DeviceReport(GUID))
    result = do_register(database, globex, request())
    with database.transaction() as s:
        assert device_for_credential(s, result.credential).org.name == "Globex"
    assert device_count(database) == 1


def test_deactivated_organization_refuses_registration(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme")
    with database.transaction() as s:
        policy = policy_for_token(s, token)
        deactivate_org(s, "Acme")
        with pytest.raises(Forbidden) as caught:
            register(s, policy, request())
    assert caught.value.code == "org_deactivated"


def test_malformed_device_guid_is_refused(database: Database, make_policy: MakePolicy) -> None:
    token = make_policy("Acme")
    with pytest.raises(InvalidInput) as caught:
        do_register(database, token, request(guid="laptop-42"))
    assert caught.value.code == "invalid_device_guid"


def test_rotating_the_token_leaves_a_registered_device_working(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme")
    result = do_register(database, token, request())
    with database.transaction() as s:
        rotate_token(s, "Acme")
    with database.transaction() as s:
        assert device_for_credential(s, result.credential).guid == GUID


@pytest.mark.parametrize("credential", [None, ""])
def test_request_without_credential_is_unauthorized(
    database: Database, credential: str | None
) -> None:
    with pytest.raises(Unauthorized) as caught, database.transaction() as s:
        device_for_credential(s, credential)
    assert caught.value.code == "credential_missing"


# Reports from devices not registered yet


def test_report_creates_a_pending_device_shown_as_unregistered(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme")
    report = DeviceReport(
        guid=GUID,
        name="bob-pc",
        os="windows",
        phase="awaiting_registration",
        last_error="the detection script printed nothing",
    )
    with database.transaction() as s:
        record_report(s, policy_for_token(s, token).org, report)
    with database.transaction() as s:
        pending = s.scalars(select(Device).where(Device.registered_at.is_(None))).all()
        summaries = [device_summary(d) for d in pending]
    assert len(summaries) == 1
    summary = summaries[0]
    assert summary["guid"] == GUID
    assert summary["org"] == "Acme"
    assert summary["registered"] is False
    assert summary["registered_at"] is None
    assert summary["username"] is None
    assert summary["phase"] == "awaiting_registration"
    assert summary["last_error"] == "the detection script printed nothing"


def test_repeated_reports_update_one_device(database: Database, make_policy: MakePolicy) -> None:
    token = make_policy("Acme")
    with database.transaction() as s:
        org = policy_for_token(s, token).org
        record_report(s, org, DeviceReport(GUID, name="old", phase="awaiting_policy"))
        record_report(s, org, DeviceReport(GUID.upper(), phase="backing_up"))
    assert device_count(database) == 1
    with database.transaction() as s:
        device = s.scalars(select(Device)).one()
        assert (device.name, device.phase, device.last_error) == ("old", "backing_up", None)


def test_report_with_an_unknown_phase_is_refused(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme")
    with pytest.raises(InvalidInput, match="'sleeping'"), database.transaction() as s:
        record_report(s, policy_for_token(s, token).org, DeviceReport(GUID, phase="sleeping"))
    assert device_count(database) == 0


def test_report_does_not_move_a_registered_device(
    database: Database, make_policy: MakePolicy
) -> None:
    acme = make_policy("Acme")
    globex = make_policy("Globex")
    do_register(database, acme, request())
    with database.transaction() as s:
        record_report(s, policy_for_token(s, globex).org, DeviceReport(GUID))
    with database.transaction() as s:
        assert s.scalars(select(Device)).one().org.name == "Acme"


# Users


def test_registered_user_cannot_sign_in_until_the_password_is_reset(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme")
    do_register(database, token, request())
    with database.transaction() as s:
        (user,) = list_users(s)
        summary = user_summary(s, user)
    assert summary["username"] == "alice@example.com"
    assert summary["email"] == "alice@example.com"
    assert summary["password_hidden"] is True
    assert summary["can_sign_in"] is False
    assert summary["devices"] == [GUID]


def test_reset_password_lets_the_user_sign_in_with_the_new_password(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme")
    do_register(database, token, request())
    with database.transaction() as s:
        user, password = reset_password(s, "alice@example.com", None)
    with database.transaction() as s:
        (user,) = list_users(s)
        summary = user_summary(s, user)
        assert user.password_hash is not None
        assert verify_password(password, user.password_hash)
        assert not verify_password(password + "x", user.password_hash)
    assert summary["can_sign_in"] is True
    assert summary["password_hidden"] is False


def test_reset_password_of_an_unknown_user_is_not_found(database: Database) -> None:
    with pytest.raises(NotFound) as caught, database.transaction() as s:
        reset_password(s, "nobody@example.com", None)
    assert caught.value.code == "user_not_found"


def test_reset_password_of_a_name_in_two_organizations_asks_for_the_org(
    database: Database, make_policy: MakePolicy
) -> None:
    do_register(database, make_policy("Acme"), request())
    do_register(database, make_policy("Globex"), request(guid=str(uuid.uuid4())))
    with pytest.raises(InvalidInput, match="--org"), database.transaction() as s:
        reset_password(s, "alice@example.com", None)
    with database.transaction() as s:
        user, _ = reset_password(s, "alice@example.com", "Globex")
        assert user.org.name == "Globex"
