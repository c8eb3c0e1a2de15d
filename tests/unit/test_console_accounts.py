"""Console administrators: account rules, sign-in, lockout, sessions and CSRF on a fake clock."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging

import pytest
from sqlalchemy import inspect, select, text

from authority.console import sessions
from authority.console.accounts import (
    IDLE_TIMEOUT,
    LOCK_AFTER,
    LOCK_FOR,
    SESSION_LIFETIME,
    Operator,
    create_account,
    csrf_valid,
    delete_account,
    list_accounts,
    new_sign_in_token,
    operator_for,
    set_password,
    sign_in,
    sign_in_token_valid,
    sign_out,
    unlock,
)
from authority.db import AdminAccount, ConsoleSession, Database, create_schema
from authority.errors import Conflict, InvalidInput, NotFound, TooManyAttempts, Unauthorized
from authority.passwords import verify_password

T0 = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
PASSWORD = "correct horse battery"
CLIENT = "192.0.2.7"
WRONG_PASSWORD = "not the password"


@pytest.fixture
def alice(database: Database) -> str:
    with database.transaction() as s:
        create_account(s, "Alice", PASSWORD, now=T0)
    return "Alice"


def attempt(db: Database, name: str, password: str, now: dt.datetime) -> tuple[str, Operator]:
    with db.transaction() as s:
        return sign_in(s, name, password, now=now, client=CLIENT)


def fail(db: Database, name: str, now: dt.datetime, password: str = WRONG_PASSWORD) -> None:
    with pytest.raises(Unauthorized) as caught:
        attempt(db, name, password, now)
    assert caught.value.code == "console_sign_in_failed"
    assert caught.value.message == "the name or the password is wrong"


def operator(db: Database, cookie: str | None, now: dt.datetime) -> Operator | None:
    with db.transaction() as s:
        return operator_for(s, cookie, now=now)


def session_rows(db: Database) -> int:
    with db.transaction() as s:
        return len(s.scalars(select(ConsoleSession)).all())


# Account rules


def test_create_account_stores_a_scrypt_hash_and_the_deploy_role(database: Database) -> None:
    with database.transaction() as s:
        create_account(s, "Alice", PASSWORD)
    with database.transaction() as s:
        account = s.scalars(select(AdminAccount)).one()
        assert (account.name, account.role) == ("Alice", "deploy")
        assert account.password_hash.startswith("scrypt$")
        assert PASSWORD not in account.password_hash


def test_a_name_differing_only_in_case_is_refused_as_a_conflict(
    database: Database, alice: str
) -> None:
    with pytest.raises(Conflict) as caught, database.transaction() as s:
        create_account(s, "ALICE", "another long password")
    assert "'Alice' already exists" in caught.value.message
    assert caught.value.code == "console_admin_exists"


@pytest.mark.parametrize("name", ["", "bad name", "a" * 65, "eve/../x", "émile", "a\nb"])
def test_a_name_outside_the_allowed_characters_is_refused(database: Database, name: str) -> None:
    with pytest.raises(InvalidInput) as caught, database.transaction() as s:
        create_account(s, name, PASSWORD)
    assert "1 to 64 characters" in caught.value.message
    assert "letters, digits, '.', '_', '-' or '@'" in caught.value.message
    assert list_accounts_now(database) == []


@pytest.mark.parametrize("name", ["a", "a" * 64, "ops.team_1-x@example.com"])
def test_names_of_the_allowed_characters_are_accepted(database: Database, name: str) -> None:
    with database.transaction() as s:
        create_account(s, name, PASSWORD)
    assert [a["name"] for a in list_accounts_now(database)] == [name]


def test_an_unknown_role_is_refused_naming_the_roles(database: Database) -> None:
    with pytest.raises(InvalidInput) as caught, database.transaction() as s:
        create_account(s, "Alice", PASSWORD, role="admin")
    assert caught.value.message == "unknown role 'admin': use deploy or read-only"


def test_a_password_under_12_characters_is_refused(database: Database) -> None:
    with pytest.raises(InvalidInput) as caught, database.transaction() as s:
        create_account(s, "Alice", "elevenchars")
    assert "too short: 11 characters, at least 12" in caught.value.message
    assert "elevenchars" not in caught.value.message
    assert list_accounts_now(database) == []


def test_a_password_equal_to_the_name_is_refused_whatever_its_case(database: Database) -> None:
    with pytest.raises(InvalidInput) as caught, database.transaction() as s:
        create_account(s, "alice.example.com", "ALICE.EXAMPLE.COM")
    assert caught.value.message == "the password must not be the administrator's name"


def test_list_accounts_shows_role_sign_in_and_lock_and_ends_a_past_lock(
    database: Database, alice: str
) -> None:
    with database.transaction() as s:
        create_account(s, "bob", "bob's long password", role="read-only", now=T0)
    attempt(database, "alice", PASSWORD, T0)
    for _ in range(LOCK_AFTER - 1):
        fail(database, "bob", T0)
    with pytest.raises(TooManyAttempts):
        attempt(database, "bob", "wrong again", T0)
    with database.transaction() as s:
        rows = list_accounts(s, now=T0)
        later = list_accounts(s, now=T0 + LOCK_FOR)
    assert rows == [
        {
            "name": "Alice",
            "role": "deploy",
            "created_at": T0.isoformat(),
            "last_sign_in_at": T0.isoformat(),
            "locked_until": None,
        },
        {
            "name": "bob",
            "role": "read-only",
            "created_at": T0.isoformat(),
            "last_sign_in_at": None,
            "locked_until": (T0 + LOCK_FOR).isoformat(),
        },
    ]
    assert later[1]["locked_until"] is None


def list_accounts_now(db: Database) -> list[dict[str, object]]:
    with db.transaction() as s:
        return list_accounts(s, now=T0)


# Signing in


def test_sign_in_returns_a_cookie_whose_sha256_alone_is_stored(
    database: Database, alice: str
) -> None:
    cookie, op = attempt(database, "alice", PASSWORD, T0)
    assert op == Operator("Alice", "deploy", op.csrf_token)
    assert op.can_deploy
    assert len(cookie) >= 43  # 256 bits, URL-safe
    with database.transaction() as s:
        row = s.scalars(select(ConsoleSession)).one()
        assert row.token_hash == hashlib.sha256(cookie.encode()).hexdigest()
        assert row.expires_at == T0 + SESSION_LIFETIME
        dump = "\n".join(s.connection().connection.iterdump())
    assert cookie not in dump
    assert PASSWORD not in dump


def test_a_read_only_administrator_cannot_deploy(database: Database) -> None:
    with database.transaction() as s:
        create_account(s, "auditor", PASSWORD, role="read-only")
    _, op = attempt(database, "Auditor", PASSWORD, T0)
    assert op.role == "read-only"
    assert not op.can_deploy


def test_an_unknown_name_gets_the_same_answer_and_the_same_scrypt(
    database: Database, alice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    real = verify_password

    def spy(password: str, stored: str) -> bool:
        checked.append(stored.split("$", maxsplit=1)[0])
        return real(password, stored)

    monkeypatch.setattr(sessions, "verify_password", spy)
    fail(database, "mallory", T0, password=PASSWORD)
    fail(database, "alice", T0)
    assert checked == ["scrypt", "scrypt"]


def test_the_fifth_failure_in_a_row_locks_the_account_for_15_minutes(
    database: Database, alice: str
) -> None:
    for minute in range(LOCK_AFTER - 1):
        fail(database, "alice", T0 + dt.timedelta(minutes=minute))
    fifth = T0 + dt.timedelta(minutes=4)
    with pytest.raises(TooManyAttempts) as caught:
        attempt(database, "alice", "still wrong", fifth)
    locked = caught.value
    assert locked.code == "console_locked"
    assert locked.retry_after == 15 * 60
    assert "locked until 12:19 UTC" in locked.message
    assert "`holdfast-authority admin unlock Alice`" in locked.message


def test_a_locked_account_refuses_even_the_right_password_until_the_lock_ends(
    database: Database, alice: str
) -> None:
    for _ in range(LOCK_AFTER - 1):
        fail(database, "alice", T0)
    with pytest.raises(TooManyAttempts):
        attempt(database, "alice", "wrong", T0)
    almost = T0 + LOCK_FOR - dt.timedelta(seconds=1)
    with pytest.raises(TooManyAttempts) as caught:
        attempt(database, "alice", PASSWORD, almost)
    assert caught.value.retry_after == 1
    _, op = attempt(database, "alice", PASSWORD, T0 + LOCK_FOR)
    assert op.name == "Alice"


def test_after_a_lock_ends_the_count_starts_again(database: Database, alice: str) -> None:
    for _ in range(LOCK_AFTER - 1):
        fail(database, "alice", T0)
    with pytest.raises(TooManyAttempts):
        attempt(database, "alice", "wrong", T0)
    after = T0 + LOCK_FOR
    for _ in range(LOCK_AFTER - 1):
        fail(database, "alice", after)  # not locked at the first failure after the lock
    with pytest.raises(TooManyAttempts):
        attempt(database, "alice", "wrong", after)


def test_a_success_resets_the_count_of_failures(database: Database, alice: str) -> None:
    for _ in range(LOCK_AFTER - 1):
        fail(database, "alice", T0)
    attempt(database, "alice", PASSWORD, T0)
    for _ in range(LOCK_AFTER - 1):
        fail(database, "alice", T0)
    attempt(database, "alice", PASSWORD, T0)


def test_unknown_names_are_never_locked(database: Database) -> None:
    for _ in range(LOCK_AFTER * 2):
        fail(database, "nobody", T0)


def test_unlock_ends_a_lock_at_once(database: Database, alice: str) -> None:
    for _ in range(LOCK_AFTER - 1):
        fail(database, "alice", T0)
    with pytest.raises(TooManyAttempts):
        attempt(database, "alice", "wrong", T0)
    with database.transaction() as s:
        unlock(s, "ALICE")
    attempt(database, "alice", PASSWORD, T0 + dt.timedelta(minutes=1))


def test_failures_are_logged_with_name_and_client_never_the_password(
    database: Database, alice: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="authority.console")
    fail(database, "alice", T0, password="Secret-Guess-1")
    fail(database, "nobody", T0, password="Secret-Guess-2")
    for _ in range(LOCK_AFTER - 1):
        with contextlib.suppress(Unauthorized, TooManyAttempts):
            attempt(database, "alice", "Secret-Guess-3", T0)
    attempt(database, "alice", PASSWORD, T0 + LOCK_FOR)
    lines = [r.getMessage() for r in caplog.records if r.name == "authority.console"]
    failures = [line for line in lines if "failed" in line]
    assert len(failures) == 7 and all(CLIENT in line for line in failures)
    assert "'Alice'" in failures[0] and "'nobody'" in failures[1]
    assert any("'Alice' locked until 2026-03-02T12:15:00+00:00" in line for line in lines)
    for secret in ("Secret-Guess", PASSWORD):
        assert secret not in caplog.text


# Sessions


def test_operator_for_needs_a_known_cookie(database: Database, alice: str) -> None:
    attempt(database, "alice", PASSWORD, T0)
    assert operator(database, None, T0) is None
    assert operator(database, "", T0) is None
    assert operator(database, "forged-cookie-value", T0) is None
    assert operator(database, "x" * 10_000, T0) is None


def test_a_session_ends_after_30_idle_minutes_and_its_row_goes(
    database: Database, alice: str
) -> None:
    cookie, op = attempt(database, "alice", PASSWORD, T0)
    just_before = T0 + IDLE_TIMEOUT - dt.timedelta(seconds=1)
    assert operator(database, cookie, just_before) == op
    # That request counted: idleness runs from it, not from sign-in.
    assert operator(database, cookie, just_before + IDLE_TIMEOUT - dt.timedelta(seconds=1)) == op
    assert operator(database, cookie, just_before + 2 * IDLE_TIMEOUT) is None
    assert session_rows(database) == 0


def test_a_session_ends_12_hours_after_sign_in_however_active(
    database: Database, alice: str
) -> None:
    cookie, op = attempt(database, "alice", PASSWORD, T0)
    now = T0
    while now + dt.timedelta(minutes=20) < T0 + SESSION_LIFETIME:
        now += dt.timedelta(minutes=20)
        assert operator(database, cookie, now) == op
    assert operator(database, cookie, T0 + SESSION_LIFETIME) is None
    assert session_rows(database) == 0


def test_sign_out_ends_that_session_only(database: Database, alice: str) -> None:
    first, _ = attempt(database, "alice", PASSWORD, T0)
    second, op = attempt(database, "alice", PASSWORD, T0)
    with database.transaction() as s:
        sign_out(s, first)
        sign_out(s, None)
        sign_out(s, "unknown")
    assert operator(database, first, T0) is None
    assert operator(database, second, T0) == op


def test_a_new_sign_in_deletes_ended_sessions(database: Database, alice: str) -> None:
    attempt(database, "alice", PASSWORD, T0)
    attempt(database, "alice", PASSWORD, T0 + IDLE_TIMEOUT)
    assert session_rows(database) == 1


def test_set_password_ends_sessions_and_lockout_and_replaces_the_password(
    database: Database, alice: str
) -> None:
    cookie, _ = attempt(database, "alice", PASSWORD, T0)
    for _ in range(LOCK_AFTER - 1):
        fail(database, "alice", T0)
    with pytest.raises(TooManyAttempts):
        attempt(database, "alice", "wrong", T0)
    with database.transaction() as s:
        set_password(s, "alice", "a brand new passphrase")
    assert operator(database, cookie, T0) is None
    fail(database, "alice", T0, password=PASSWORD)
    attempt(database, "alice", "a brand new passphrase", T0)


def test_set_password_applies_the_same_rules(database: Database, alice: str) -> None:
    with pytest.raises(InvalidInput, match="too short"), database.transaction() as s:
        set_password(s, "alice", "short")
    with database.transaction() as s:
        create_account(s, "alice.example.com", PASSWORD)
    with pytest.raises(InvalidInput, match="must not be"), database.transaction() as s:
        set_password(s, "alice.example.com", "Alice.Example.com")
    unknown = pytest.raises(NotFound, match="no console administrator named 'bob'")
    with unknown, database.transaction() as s:
        set_password(s, "bob", "a brand new passphrase")
    attempt(database, "alice", PASSWORD, T0)


def test_delete_account_ends_its_sessions_and_its_sign_ins(database: Database, alice: str) -> None:
    cookie, _ = attempt(database, "alice", PASSWORD, T0)
    with database.transaction() as s:
        delete_account(s, "ALICE")
    assert operator(database, cookie, T0) is None
    assert session_rows(database) == 0
    fail(database, "alice", T0, password=PASSWORD)
    with pytest.raises(NotFound), database.transaction() as s:
        delete_account(s, "alice")


# CSRF


def test_csrf_token_must_be_the_sessions_own(database: Database, alice: str) -> None:
    _, mine = attempt(database, "alice", PASSWORD, T0)
    _, other = attempt(database, "alice", PASSWORD, T0)
    assert mine.csrf_token != other.csrf_token
    assert csrf_valid(mine, mine.csrf_token)
    assert not csrf_valid(mine, other.csrf_token)
    assert not csrf_valid(mine, None)
    assert not csrf_valid(mine, "")
    assert not csrf_valid(mine, "é" + mine.csrf_token)
    assert mine.csrf_token not in repr(mine)


def test_sign_in_token_is_a_double_submit_pair() -> None:
    token = new_sign_in_token()
    assert token != new_sign_in_token()
    assert sign_in_token_valid(token, token)
    assert not sign_in_token_valid(token, new_sign_in_token())
    assert not sign_in_token_valid(None, token)
    assert not sign_in_token_valid(token, None)
    assert not sign_in_token_valid("", "")


# Schema


def test_create_schema_adds_the_console_tables_to_an_existing_database(
    database: Database,
) -> None:
    with database.engine.begin() as conn:
        conn.execute(text("DROP TABLE console_sessions"))
        conn.execute(text("DROP TABLE admin_accounts"))
    create_schema(database.engine)
    tables = set(inspect(database.engine).get_table_names())
    assert {"admin_accounts", "console_sessions"} <= tables
