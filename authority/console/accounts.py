"""Console administrator accounts: who may sign in to the web console, with which role.

Made with `holdfast-authority admin create` (authority/cli.py); listed, given a new password,
unlocked and deleted from the CLI too. A `deploy` administrator may change things; a
`read-only` one sees every page and changes nothing. Names are 1 to 64 letters, digits, `.`,
`_`, `-`, `@`, compared case-insensitively; passwords are at least 12 characters, not the
name, and stored only as scrypt hashes.

This module is the console's one import for accounts and sessions: it also offers the names
of authority/console/sessions.py (signing in and out, CSRF, the lockout).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from authority.console.sessions import (
    IDLE_TIMEOUT,
    LOCK_AFTER,
    LOCK_FOR,
    SESSION_COOKIE,
    SESSION_LIFETIME,
    SIGN_IN_COOKIE,
    WRONG,
    Operator,
    csrf_valid,
    end_sessions,
    name_key,
    new_sign_in_token,
    operator_for,
    sign_in,
    sign_in_token_valid,
    sign_out,
)
from authority.db import AdminAccount
from authority.errors import Conflict, InvalidInput, NotFound
from authority.passwords import hash_password

log = logging.getLogger("authority.console")

ROLES = ("deploy", "read-only")
MIN_PASSWORD = 12
# scrypt pre-hashes any length, but a megabyte "password" is a mistake, not a secret.
MAX_PASSWORD = 1024

_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")


# Names, roles and passwords


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"administrator name {name[:80]!r} is not allowed: use 1 to 64 characters, "
            "letters, digits, '.', '_', '-' or '@'",
            code="console_bad_name",
        )
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(
            f"unknown role {role!r}: use {' or '.join(ROLES)}", code="console_bad_role"
        )
    return role


def check_password(name: str, password: str) -> None:
    """The rules a new password must meet; the message never repeats the password."""
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(
            f"the password is too short: {len(password)} characters, "
            f"at least {MIN_PASSWORD} are needed",
            code="console_bad_password",
        )
    if len(password) > MAX_PASSWORD:
        raise InvalidInput(
            f"the password is too long: at most {MAX_PASSWORD} characters",
            code="console_bad_password",
        )
    if password.casefold() == name_key(name):
        raise InvalidInput(
            "the password must not be the administrator's name", code="console_bad_password"
        )


def find_account(session: Session, name: str) -> AdminAccount:
    account = session.scalar(select(AdminAccount).where(AdminAccount.name_key == name_key(name)))
    if account is None:
        raise NotFound(
            f"no console administrator named {name[:80]!r} "
            "(holdfast-authority admin list shows them)",
            code="console_admin_not_found",
        )
    return account


def check_new_name(session: Session, name: str) -> str:
    """`name` if an account may be created with it: allowed characters, not taken."""
    check_name(name)
    taken = session.scalar(select(AdminAccount.name).where(AdminAccount.name_key == name_key(name)))
    if taken is not None:
        raise Conflict(
            f"a console administrator named {taken!r} already exists (names ignore case)",
            code="console_admin_exists",
        )
    return name


# Accounts


def create_account(
    session: Session,
    name: str,
    password: str,
    role: str = "deploy",
    *,
    now: dt.datetime | None = None,
) -> AdminAccount:
    """A new administrator; nothing is written when any rule is broken."""
    check_new_name(session, name)
    check_role(role)
    check_password(name, password)
    account = AdminAccount(
        name=name,
        name_key=name_key(name),
        role=role,
        password_hash=hash_password(password),
        failed_count=0,
    )
    if now is not None:
        account.created_at = now
    session.add(account)
    session.flush()
    log.info("console administrator %r created (%s role)", name, role)
    return account


def list_accounts(session: Session, *, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Every administrator, by name. With `now`, a lock that has ended shows as None."""
    accounts = session.scalars(select(AdminAccount).order_by(AdminAccount.name_key))
    return [account_summary(a, now) for a in accounts]


def account_summary(account: AdminAccount, now: dt.datetime | None = None) -> dict[str, Any]:
    locked = account.locked_until
    if locked is not None and now is not None and now >= locked:
        locked = None
    return {
        "name": account.name,
        "role": account.role,
        "created_at": account.created_at.isoformat(),
        "last_sign_in_at": _iso(account.last_sign_in_at),
        "locked_until": _iso(locked),
    }


def set_password(session: Session, name: str, password: str) -> None:
    """A new password: the account's sessions end and any lockout with them."""
    account = find_account(session, name)
    check_password(account.name, password)
    account.password_hash = hash_password(password)
    account.failed_count = 0
    account.locked_until = None
    ended = end_sessions(session, account)
    log.info("console administrator %r: password changed, %d session(s) ended", account.name, ended)


def unlock(session: Session, name: str) -> None:
    """End a lockout (and the count of failures) before LOCK_FOR has passed."""
    account = find_account(session, name)
    account.failed_count = 0
    account.locked_until = None
    session.flush()
    log.info("console administrator %r unlocked", account.name)


def delete_account(session: Session, name: str) -> None:
    """Delete an administrator and end its sessions."""
    account = find_account(session, name)
    ended = end_sessions(session, account)
    session.delete(account)
    session.flush()
    log.info("console administrator %r deleted, %d session(s) ended", account.name, ended)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


__all__ = [
    "IDLE_TIMEOUT",
    "LOCK_AFTER",
    "LOCK_FOR",
    "MAX_PASSWORD",
    "MIN_PASSWORD",
    "ROLES",
    "SESSION_COOKIE",
    "SESSION_LIFETIME",
    "SIGN_IN_COOKIE",
    "WRONG",
    "Operator",
    "account_summary",
    "check_name",
    "check_new_name",
    "check_password",
    "check_role",
    "create_account",
    "csrf_valid",
    "delete_account",
    "find_account",
    "list_accounts",
    "name_key",
    "new_sign_in_token",
    "operator_for",
    "set_password",
    "sign_in",
    "sign_in_token_valid",
    "sign_out",
    "unlock",
]
