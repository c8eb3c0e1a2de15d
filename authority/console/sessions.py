"""Console sessions: signing in and out, who a request comes from, CSRF, the lockout.

    sign_in(name, password)    -> (cookie value, Operator)  a new session row
    operator_for(cookie value) -> Operator | None           None once idle 30 min or 12 h old
    sign_out(cookie value)                                  the session row goes

The cookie value is random (256 bits) and the database keeps only its SHA-256, so a copy of
the database signs nobody in. Each session has its own CSRF token, which pages put in every
form that changes something. LOCK_AFTER failed sign-ins in a row lock an account for
LOCK_FOR; a success, `unlock` or a new password ends the count. A wrong name and a wrong
password get the same answer and cost the same scrypt. Passwords are never logged.

No function here reads the clock: `now` is passed in, so tests move time themselves.
The accounts themselves, and the public names of both modules, are in
authority/console/accounts.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import math
import secrets
from dataclasses import dataclass, field
from functools import cache

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from authority.db import AdminAccount, ConsoleSession
from authority.errors import AuthorityError, TooManyAttempts, Unauthorized
from authority.passwords import hash_password, verify_password

log = logging.getLogger("authority.console")

SESSION_COOKIE = "holdfast_console"
SIGN_IN_COOKIE = "holdfast_console_signin"
IDLE_TIMEOUT = dt.timedelta(minutes=30)
SESSION_LIFETIME = dt.timedelta(hours=12)
LOCK_AFTER = 5
LOCK_FOR = dt.timedelta(minutes=15)
WRONG = "the name or the password is wrong"

# Longer than any value we hand out (token_urlsafe(32) is 43 characters): not worth a hash.
_MAX_TOKEN = 128
# Longer than any account name: not worth a lookup.
_MAX_NAME = 64


@dataclass(frozen=True)
class Operator:
    """The signed-in administrator, as the console's pages see it."""

    name: str
    role: str  # deploy | read-only
    csrf_token: str = field(repr=False)  # bound to the session; every form carries it

    @property
    def can_deploy(self) -> bool:
        return self.role == "deploy"


def name_key(name: str) -> str:
    """The form names are compared in: `Alice` and `alice` are one account."""
    return name.strip().casefold()


def end_sessions(session: Session, account: AdminAccount) -> int:
    """End every session of `account` (a new password, a deleted account): how many."""
    result = session.execute(
        delete(ConsoleSession)
        .where(ConsoleSession.account_id == account.id)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return int(getattr(result, "rowcount", 0) or 0)


# Signing in and out


def sign_in(
    session: Session, name: str, password: str, *, now: dt.datetime, client: str
) -> tuple[str, Operator]:
    """A new session for the administrator whose password this is: (cookie value, Operator).

    A failure is counted in a transaction of its own, so the caller's, rolled back by the
    error raised, does not take the count with it: call this before writing anything else
    in the transaction (SQLite lets one writer at a time).
    """
    key = name_key(name)
    account = (
        session.scalar(select(AdminAccount).where(AdminAccount.name_key == key))
        if len(key) <= _MAX_NAME
        else None
    )
    if account is not None and account.locked_until is not None and now < account.locked_until:
        # Not even checked: a locked account takes no more guesses.
        log.warning(
            "console sign-in as %r from %s refused: locked until %s",
            account.name,
            client,
            account.locked_until.isoformat(),
        )
        raise _locked(account.name, account.locked_until, now)
    # An unknown name costs the same scrypt as a known one, so the time tells no names apart.
    matches = verify_password(password, account.password_hash if account else _decoy_hash())
    if account is None or not matches:
        raise _count_failure(session, key, name, now=now, client=client)
    account.failed_count = 0
    account.locked_until = None
    account.last_sign_in_at = now
    _purge_expired(session, now)
    cookie = secrets.token_urlsafe(32)
    row = ConsoleSession(
        token_hash=_digest(cookie),
        account_id=account.id,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        last_seen_at=now,
        expires_at=now + SESSION_LIFETIME,
    )
    session.add(row)
    session.flush()
    log.info("console sign-in as %r from %s (%s role)", account.name, client, account.role)
    return cookie, Operator(account.name, account.role, row.csrf_token)


def operator_for(
    session: Session, cookie_value: str | None, *, now: dt.datetime
) -> Operator | None:
    """Who a request comes from: None without a live session (an ended one is deleted)."""
    if not cookie_value or len(cookie_value) > _MAX_TOKEN:
        return None
    found = session.execute(
        select(ConsoleSession, AdminAccount)
        .join(AdminAccount, AdminAccount.id == ConsoleSession.account_id)
        .where(ConsoleSession.token_hash == _digest(cookie_value))
    ).one_or_none()
    if found is None:
        return None
    row, account = found
    if _ended(row, now):
        session.delete(row)
        session.flush()
        return None
    row.last_seen_at = now
    session.flush()
    return Operator(account.name, account.role, row.csrf_token)


def sign_out(session: Session, cookie_value: str | None) -> None:
    """End the session of this cookie; nothing happens for an unknown or missing one."""
    if not cookie_value or len(cookie_value) > _MAX_TOKEN:
        return
    session.execute(
        delete(ConsoleSession)
        .where(ConsoleSession.token_hash == _digest(cookie_value))
        .execution_options(synchronize_session=False)
    )
    session.flush()


def _ended(row: ConsoleSession, now: dt.datetime) -> bool:
    return now >= row.expires_at or now - row.last_seen_at >= IDLE_TIMEOUT


def _purge_expired(session: Session, now: dt.datetime) -> None:
    """Delete every ended session, so abandoned browsers do not pile up rows."""
    session.execute(
        delete(ConsoleSession)
        .where(
            or_(
                ConsoleSession.expires_at <= now,
                ConsoleSession.last_seen_at <= now - IDLE_TIMEOUT,
            )
        )
        .execution_options(synchronize_session=False)
    )


def _count_failure(
    session: Session, key: str, typed: str, *, now: dt.datetime, client: str
) -> AuthorityError:
    """Count a failed sign-in (for an unknown name too: the same statements, no row)."""
    with Session(session.get_bind()) as apart, apart.begin():
        # The increment comes first: it takes SQLite's write lock, so two failures at once
        # are counted as two.
        apart.execute(
            update(AdminAccount)
            .where(AdminAccount.name_key == key)
            .values(failed_count=AdminAccount.failed_count + 1)
        )
        found = apart.execute(
            select(AdminAccount.name, AdminAccount.failed_count).where(AdminAccount.name_key == key)
        ).one_or_none()
        if found is None:
            log.warning(
                "console sign-in as %r from %s failed: no such administrator", typed[:80], client
            )
            return Unauthorized(WRONG, code="console_sign_in_failed")
        account_name, failures = found
        log.warning(
            "console sign-in as %r from %s failed: wrong password (%d in a row)",
            account_name,
            client,
            failures,
        )
        if failures < LOCK_AFTER:
            return Unauthorized(WRONG, code="console_sign_in_failed")
        until = now + LOCK_FOR
        apart.execute(
            update(AdminAccount)
            .where(AdminAccount.name_key == key)
            .values(failed_count=0, locked_until=until)
        )
    log.warning(
        "console administrator %r locked until %s after %d failed sign-ins (the last from %s)",
        account_name,
        until.isoformat(),
        failures,
        client,
    )
    return _locked(account_name, until, now)


def _locked(name: str, until: dt.datetime, now: dt.datetime) -> TooManyAttempts:
    seconds = max(1, math.ceil((until - now).total_seconds()))
    return TooManyAttempts(
        f"too many failed sign-ins: administrator {name!r} is locked until "
        f"{until.astimezone(dt.UTC):%H:%M} UTC; `holdfast-authority admin unlock {name}` "
        "ends it sooner",
        code="console_locked",
        retry_after=seconds,
    )


# Tokens


def csrf_valid(operator: Operator, submitted: str | None) -> bool:
    """Whether a form's `csrf_token` is the one of the operator's session."""
    if not submitted:
        return False
    return hmac.compare_digest(operator.csrf_token.encode(), submitted.encode())


def new_sign_in_token() -> str:
    """A value for the sign-in form's double-submit cookie (SIGN_IN_COOKIE) and field."""
    return secrets.token_urlsafe(32)


def sign_in_token_valid(cookie: str | None, submitted: str | None) -> bool:
    """Whether the sign-in form came with the cookie set when this browser got the form."""
    if not cookie or not submitted:
        return False
    return hmac.compare_digest(cookie.encode(), submitted.encode())


def _digest(cookie_value: str) -> str:
    return hashlib.sha256(cookie_value.encode()).hexdigest()


@cache
def _decoy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


__all__ = [
    "IDLE_TIMEOUT",
    "LOCK_AFTER",
    "LOCK_FOR",
    "SESSION_COOKIE",
    "SESSION_LIFETIME",
    "SIGN_IN_COOKIE",
    "WRONG",
    "Operator",
    "csrf_valid",
    "end_sessions",
    "name_key",
    "new_sign_in_token",
    "operator_for",
    "sign_in",
    "sign_in_token_valid",
    "sign_out",
]
