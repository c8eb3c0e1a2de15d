"""Manual registration: a user signs in with their password, and the device becomes theirs.

    POST /api/v1/deploy/sign-in   (authority/api/agent_routes.py)

The password is checked by the organization's method: local, against the user's scrypt hash
(a password generated at registration and never shown cannot be used until an administrator
resets it); LDAP, by binding to the directory as that user; SSO is refused, as browser sign-in
belongs to a later release. Then the device is registered exactly as silent registration does
it (idempotent by GUID, a new credential, the clone check): authority.registration.register.

Any policy accepts a sign-in, a silent one too: a user may sign in on a silent deployment
whose detection failed. (The agent offers `holdfast login` only under a manual policy today.)

Failed sign-ins are counted per (organization, username), whether or not the user exists, so
the answer is the same for both: MAX_FAILURES within WINDOW lock that username for LOCKOUT,
answered 429 `sign_in_locked` with Retry-After; a success clears the count. The password is
never stored, logged or repeated in an answer.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import secrets
from dataclasses import dataclass, field
from functools import cache

from sqlalchemy import select
from sqlalchemy.orm import Session

from authority.db import Organization, Policy, SignInFailures, User
from authority.directory import DirectoryUser
from authority.errors import AuthorityError, Forbidden, TooManyAttempts, Unauthorized
from authority.passwords import hash_password, verify_password
from authority.policies import require_active
from authority.registration import (
    DeviceReport,
    Registration,
    RegistrationRequest,
    check_guid,
    register,
)
from authority.users import DirectoryFor, directory_for, sign_in_blocked

log = logging.getLogger("authority")

MAX_FAILURES = 5
WINDOW = dt.timedelta(minutes=15)
LOCKOUT = dt.timedelta(minutes=15)
WRONG = "wrong username or password"


@dataclass(frozen=True)
class SignInRequest:
    device: DeviceReport
    username: str
    password: str = field(repr=False)
    user_home: str
    hardware_id: str | None = None


@dataclass(frozen=True)
class _Verified:
    """The directory entry this sign-in authenticated, so registration asks the directory
    nothing more (and cannot find another entry than the one whose password was checked)."""

    entry: DirectoryUser

    def find_user(self, username: str) -> DirectoryUser | None:
        return self.entry

    def authenticate(self, username: str, password: str) -> DirectoryUser | None:
        return None  # never asked: the password was checked already


def _only(entry: DirectoryUser) -> DirectoryFor:
    return lambda _org: _Verified(entry)


@cache
def _decoy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def _key(username: str) -> str:
    return username.strip().casefold()[:256]


def sign_in(
    session: Session,
    policy: Policy,
    request: SignInRequest,
    *,
    now: dt.datetime,
    directories: DirectoryFor = directory_for,
) -> Registration | AuthorityError:
    """Check the password, then register the device to its user.

    A wrong password is returned, not raised: the caller commits the failure it counted,
    then answers with it. Everything else that stops a sign-in is raised.
    """
    org = policy.org
    require_active(org)
    check_guid(request.device.guid)
    if org.auth == "sso":
        raise Forbidden(
            f"organization {org.name!r} signs users in with SSO, in a browser, which this "
            "authority does not offer yet; an administrator can use a silent policy meanwhile",
            code="sso_sign_in_not_supported",
        )
    username = request.username.strip()
    failures = session.scalar(
        select(SignInFailures).where(
            SignInFailures.org_id == org.id, SignInFailures.username == _key(username)
        )
    )
    if failures is not None and failures.locked_until is not None:
        if now < failures.locked_until:
            raise _locked(username, failures.locked_until, now)
        failures.locked_until = None
    if org.auth == "ldap":
        entry = directories(org).authenticate(username, request.password)
        name = entry.username if entry is not None else None
        if entry is not None:
            directories = _only(entry)
    else:
        name = _check_local(session, org, username, request.password)
    if name is None:
        return _count_failure(session, org, username, failures, now)
    if failures is not None:
        session.delete(failures)
    log.info("sign-in as %r in organization %r: password accepted", name, org.name)
    return register(
        session,
        policy,
        RegistrationRequest(
            device=request.device,
            username=name,
            user_home=request.user_home,
            hardware_id=request.hardware_id,
        ),
        directories=directories,
        signed_in=True,
    )


def _check_local(session: Session, org: Organization, username: str, password: str) -> str | None:
    """The user's stored name if `password` is theirs, else None."""
    user = session.scalar(select(User).where(User.org_id == org.id, User.username == username))
    if user is not None and sign_in_blocked(user) is not None:
        # Not counted: no password could be right, and the administrator is the way out.
        raise Forbidden(
            f"user {user.username!r} cannot sign in yet: their password was generated when a "
            "device registered them and was never shown to anyone; an administrator must reset "
            f"it (holdfast-authority user reset-password {user.username} --org {org.name})",
            code="password_reset_required",
        )
    # An unknown user costs the same scrypt as a known one, so the time tells no names apart.
    stored = user.password_hash if user is not None and user.password_hash else _decoy_hash()
    matches = verify_password(password, stored)
    return user.username if user is not None and matches else None


def _count_failure(
    session: Session,
    org: Organization,
    username: str,
    failures: SignInFailures | None,
    now: dt.datetime,
) -> AuthorityError:
    if failures is None:
        failures = SignInFailures(org_id=org.id, username=_key(username), failed_at=[])
        session.add(failures)
    recent = [t for t in failures.failed_at if dt.datetime.fromisoformat(t) > now - WINDOW]
    recent.append(now.isoformat())
    log.warning(
        "sign-in as %r in organization %r failed: %s (%d within %d minutes)",
        username,
        org.name,
        WRONG,
        len(recent),
        WINDOW.seconds // 60,
    )
    if len(recent) >= MAX_FAILURES:
        # A fresh count after the lockout: assigned anew, as JSON columns track no mutation.
        failures.failed_at = []
        failures.locked_until = now + LOCKOUT
        session.flush()
        log.warning(
            "sign-in as %r in organization %r locked until %s",
            username,
            org.name,
            failures.locked_until.isoformat(),
        )
        return _locked(username, failures.locked_until, now)
    failures.failed_at = recent
    session.flush()
    left = MAX_FAILURES - len(recent)
    return Unauthorized(
        f"{WRONG} ({left} more failed attempt{'s' if left > 1 else ''} lock sign-in as "
        f"{username!r} for {LOCKOUT.seconds // 60} minutes)",
        code="sign_in_failed",
    )


def _locked(username: str, until: dt.datetime, now: dt.datetime) -> TooManyAttempts:
    seconds = max(1, math.ceil((until - now).total_seconds()))
    minutes = math.ceil(seconds / 60)
    return TooManyAttempts(
        f"too many failed sign-ins as {username!r}: sign-in is locked for {minutes} more "
        f"minute{'s' if minutes > 1 else ''} (until {until.astimezone(dt.UTC):%H:%M} UTC)",
        code="sign_in_locked",
        retry_after=seconds,
    )


__all__ = ["LOCKOUT", "MAX_FAILURES", "WINDOW", "SignInRequest", "sign_in"]
