"""Manual registration on the authority: password checks, the lockout, and what is refused."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from authority.db import Database, Device, Organization, SignInFailures, User
from authority.directory import DirectoryUser, UserDirectory
from authority.errors import (
    AuthorityError,
    Conflict,
    Forbidden,
    InvalidInput,
    TooManyAttempts,
    Unauthorized,
)
from authority.orgs import deactivate_org
from authority.policies import policy_for_token
from authority.registration import DeviceReport, Registration, device_for_credential
from authority.sign_in import LOCKOUT, MAX_FAILURES, WINDOW, SignInRequest, sign_in
from authority.user_admin import create_user
from authority.users import directory_for

MakePolicy = Callable[..., str]
GUID = "0b7e4b56-4f0e-4d7c-9a55-2c1d3e4f5a6b"
NOW = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)
ALICE = "alice@example.com"


def minutes(n: float) -> dt.datetime:
    return NOW + dt.timedelta(minutes=n)


def request(username: str = ALICE, password: str = "", guid: str = GUID) -> SignInRequest:
    report = DeviceReport(guid=guid, name="alice-laptop", os="linux", agent_version="0.1.0")
    return SignInRequest(
        device=report, username=username, password=password, user_home="/home/alice"
    )


class Authority:
    """One organization with a policy, and sign-ins against it at chosen moments."""

    def __init__(self, database: Database, token: str) -> None:
        self.database = database
        self.token = token
        self.directory: UserDirectory | None = None

    def attempt(self, req: SignInRequest, at: dt.datetime = NOW) -> Registration | AuthorityError:
        def directories(org: Organization) -> UserDirectory:
            return self.directory or directory_for(org)

        # As the route does: one transaction, committed even when it answers a failure.
        with self.database.transaction() as s:
            return sign_in(s, policy_for_token(s, self.token), req, now=at, directories=directories)

    def fail(self, username: str = ALICE, at: dt.datetime = NOW) -> AuthorityError:
        outcome = self.attempt(request(username, "not-the-password"), at)
        assert isinstance(outcome, AuthorityError), outcome
        return outcome

    def succeed(self, password: str, at: dt.datetime = NOW) -> Registration:
        outcome = self.attempt(request(ALICE, password), at)
        assert isinstance(outcome, Registration), outcome
        return outcome


@pytest.fixture
def local(database: Database, make_policy: MakePolicy) -> tuple[Authority, str]:
    """A local organization under a manual policy, and alice's password."""
    authority = Authority(database, make_policy("Acme", manual=True))
    with database.transaction() as s:
        _user, password = create_user(s, ALICE, "Acme")
    return authority, password


# Local passwords


def test_the_right_password_registers_the_device_with_a_working_credential(
    local: tuple[Authority, str],
) -> None:
    authority, password = local
    result = authority.succeed(password)
    assert (result.user.username, result.already_registered) == (ALICE, False)
    with authority.database.transaction() as s:
        device = device_for_credential(s, result.credential)
        assert (device.guid, device.user_home, device.phase) == (GUID, "/home/alice", "backing_up")


def test_signing_in_again_is_the_same_device_with_a_new_credential(
    local: tuple[Authority, str],
) -> None:
    authority, password = local
    first = authority.succeed(password)
    again = authority.succeed(password)
    assert again.already_registered
    assert again.credential != first.credential
    with authority.database.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Device)) == 1


def test_a_wrong_password_and_an_unknown_user_get_the_same_answer(
    local: tuple[Authority, str],
) -> None:
    authority, _ = local
    wrong = authority.fail(ALICE)
    unknown = authority.fail("mallory@example.com")
    assert isinstance(wrong, Unauthorized) and isinstance(unknown, Unauthorized)
    assert wrong.code == unknown.code == "sign_in_failed"
    assert wrong.message.startswith("wrong username or password (4 more failed attempts")
    assert wrong.message.replace(ALICE, "") == unknown.message.replace("mallory@example.com", "")


def test_a_hidden_password_is_refused_saying_an_administrator_must_reset_it(
    database: Database, make_policy: MakePolicy
) -> None:
    authority = Authority(database, make_policy("Acme", manual=True))
    with database.transaction() as s:
        # As silent registration leaves a new local user: a generated password, never shown.
        org = s.scalar(select(Organization).where(Organization.name == "Acme"))
        s.add(User(org=org, username=ALICE, password_hash="scrypt$x", password_hidden=True))
    with pytest.raises(Forbidden) as caught:
        authority.attempt(request(ALICE, "anything"))
    assert caught.value.code == "password_reset_required"
    assert "reset" in caught.value.message
    assert "user reset-password alice@example.com --org Acme" in caught.value.message
    with database.transaction() as s:  # not a guess: nothing counted
        assert s.scalar(select(func.count()).select_from(SignInFailures)) == 0


def test_the_password_is_in_no_answer_and_not_in_the_request_repr(
    local: tuple[Authority, str],
) -> None:
    authority, _ = local
    secret = "Tr0ub4dor&3-unique"
    failed = authority.attempt(request(ALICE, secret))
    assert isinstance(failed, AuthorityError)
    assert secret not in failed.message
    assert secret not in repr(request(ALICE, secret))


# The lockout


def test_the_fifth_failure_within_fifteen_minutes_locks_with_retry_after(
    local: tuple[Authority, str],
) -> None:
    authority, _ = local
    answers = [authority.fail(at=minutes(n * 3)) for n in range(MAX_FAILURES)]  # 0..12 min
    assert [a.code for a in answers] == ["sign_in_failed"] * 4 + ["sign_in_locked"]
    locked = answers[-1]
    assert isinstance(locked, TooManyAttempts)
    assert locked.retry_after == LOCKOUT.total_seconds()
    assert "locked for 15 more minutes (until 09:27 UTC)" in locked.message


def test_a_locked_username_refuses_even_the_right_password_until_the_lockout_ends(
    local: tuple[Authority, str],
) -> None:
    authority, password = local
    for _ in range(MAX_FAILURES):
        authority.fail()
    with pytest.raises(TooManyAttempts) as caught:
        authority.attempt(request(ALICE, password), minutes(10))
    assert (caught.value.code, caught.value.retry_after) == ("sign_in_locked", 300)
    assert "5 more minutes" in caught.value.message
    authority.succeed(password, minutes(15))


def test_after_a_lockout_the_count_starts_over(local: tuple[Authority, str]) -> None:
    authority, _ = local
    for _ in range(MAX_FAILURES):
        authority.fail()
    assert authority.fail(at=minutes(16)).code == "sign_in_failed"


def test_failures_spread_over_more_than_the_window_do_not_lock(
    local: tuple[Authority, str],
) -> None:
    authority, password = local
    step = WINDOW.total_seconds() / 60 / (MAX_FAILURES - 1) + 0.5  # the 1st leaves before the 5th
    answers = [authority.fail(at=minutes(n * step)) for n in range(MAX_FAILURES)]
    assert {a.code for a in answers} == {"sign_in_failed"}
    authority.succeed(password, minutes(MAX_FAILURES * step))


def test_a_success_clears_the_count(local: tuple[Authority, str]) -> None:
    authority, password = local
    for _ in range(MAX_FAILURES - 1):
        authority.fail()
    authority.succeed(password)
    answers = [authority.fail() for _ in range(MAX_FAILURES - 1)]
    assert {a.code for a in answers} == {"sign_in_failed"}


def test_the_count_ignores_the_case_of_the_username(local: tuple[Authority, str]) -> None:
    authority, _ = local
    for name in (
        "alice@example.com",
        "Alice@example.com",
        "ALICE@EXAMPLE.COM",
        " alice@example.com",
    ):
        authority.fail(name)
    assert authority.fail("aLiCe@example.com").code == "sign_in_locked"


def test_unknown_users_are_counted_and_locked_too(local: tuple[Authority, str]) -> None:
    authority, _ = local
    answers = [authority.fail("mallory@example.com") for _ in range(MAX_FAILURES)]
    assert answers[-1].code == "sign_in_locked"
    assert authority.fail(ALICE).code == "sign_in_failed"  # per username: alice is not locked


# Policies and organizations


def test_a_silent_policy_accepts_a_sign_in_too(database: Database, make_policy: MakePolicy) -> None:
    authority = Authority(database, make_policy("Acme", manual=False))
    with database.transaction() as s:
        _user, password = create_user(s, ALICE, "Acme")
    assert authority.succeed(password).user.username == ALICE


def test_an_sso_organization_refuses_sign_in_until_browser_sign_in_exists(
    database: Database, make_policy: MakePolicy
) -> None:
    authority = Authority(database, make_policy("Acme", "sso", manual=True))
    with pytest.raises(Forbidden) as caught:
        authority.attempt(request(ALICE, "whatever"))
    assert caught.value.code == "sso_sign_in_not_supported"


def test_a_deactivated_organization_refuses_sign_in(local: tuple[Authority, str]) -> None:
    authority, password = local
    with authority.database.transaction() as s:
        deactivate_org(s, "Acme")
    with pytest.raises(Forbidden) as caught:
        authority.attempt(request(ALICE, password))
    assert caught.value.code == "org_deactivated"


def test_a_device_registered_elsewhere_is_not_taken_over_by_a_sign_in(
    local: tuple[Authority, str], make_policy: MakePolicy
) -> None:
    authority, password = local
    authority.succeed(password)
    other = Authority(authority.database, make_policy("Other", manual=True))
    with authority.database.transaction() as s:
        _user, other_password = create_user(s, ALICE, "Other")
    with pytest.raises(Conflict) as caught:
        other.attempt(request(ALICE, other_password))
    assert caught.value.code == "device_in_other_org"


# LDAP, with a directory that answers from a table


class FakeDirectory:
    def __init__(self, users: dict[str, tuple[str, DirectoryUser]]) -> None:
        self.users = users
        self.lookups: list[str] = []

    def find_user(self, username: str) -> DirectoryUser | None:
        self.lookups.append(username)
        found = self.users.get(username.lower())
        return found[1] if found else None

    def authenticate(self, username: str, password: str) -> DirectoryUser | None:
        found = self.users.get(username.lower())
        return found[1] if found and found[0] == password else None


JDOE = DirectoryUser(
    username="jdoe",
    dn="uid=jdoe,dc=example,dc=com",
    display_name="J Doe",
    email="jdoe@example.com",
    disabled=False,
)


def test_ldap_sign_in_binds_as_the_user_and_registers_the_directory_spelling(
    database: Database, make_policy: MakePolicy
) -> None:
    authority = Authority(database, make_policy("Dir", "ldap", manual=True))
    directory = FakeDirectory({"jdoe": ("s3cret-pass", JDOE)})
    authority.directory = directory
    result = authority.attempt(request("JDoe", "s3cret-pass"))
    assert isinstance(result, Registration)
    assert (result.user.username, result.user.display_name) == ("jdoe", "J Doe")
    assert directory.lookups == []  # registration asked nothing more of the directory


def test_ldap_wrong_password_is_counted_like_a_local_one(
    database: Database, make_policy: MakePolicy
) -> None:
    authority = Authority(database, make_policy("Dir", "ldap", manual=True))
    authority.directory = FakeDirectory({"jdoe": ("s3cret-pass", JDOE)})
    answers = [authority.fail("jdoe") for _ in range(MAX_FAILURES)]
    assert [a.code for a in answers][-2:] == ["sign_in_failed", "sign_in_locked"]


# `user create`


def test_user_create_is_for_local_organizations_with_email_usernames(
    database: Database, make_policy: MakePolicy
) -> None:
    make_policy("Acme")
    make_policy("Dir", "ldap")
    with database.transaction() as s:
        with pytest.raises(InvalidInput, match="e-mail"):
            create_user(s, "alice", "Acme")
        with pytest.raises(InvalidInput, match="directory"):
            create_user(s, ALICE, "Dir")
        create_user(s, ALICE, "Acme")
        with pytest.raises(Conflict, match="already exists"):
            create_user(s, ALICE, "Acme")
