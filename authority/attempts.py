"""Registration attempts: each deploy/register call and how it ended, for `device attempts`.

This is how an administrator sees which devices are installed but not registered, and why:
the agent's own sentence reaches `device list` only at its next contact, while an attempt is
recorded the moment the authority answers it.

An attempt is recorded when its deployment token is one this authority issued (current or
retired): that names the organization, and a caller without a token cannot fill the table.
Each device keeps its latest KEPT_PER_DEVICE attempts, so an agent retrying every hour for
months does not grow the database without bound.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, contains_eager, joinedload

from authority.db import Database, Device, Organization, Policy, RegistrationAttempt, RetiredToken
from authority.orgs import find_org
from authority.registration import device_summary

log = logging.getLogger("authority")

KEPT_PER_DEVICE = 100
REGISTERED = "registered"
# Registered, but the administrator has something to fix (an SSO user without a mapping).
REGISTERED_UNMAPPED = "registered_unmapped"
SUCCESSES = (REGISTERED, REGISTERED_UNMAPPED)


def org_for_token(session: Session, token: str | None) -> str | None:
    """The organization a deployment token names or once named; None if never issued here."""
    try:
        wanted = str(uuid.UUID((token or "").strip()))
    except ValueError:
        return None
    policy = session.scalar(select(Policy).where(Policy.token == wanted))
    if policy is not None:
        return policy.org.name
    retired = session.get(RetiredToken, wanted)
    return retired.org_name if retired is not None else None


def _guid(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except (ValueError, AttributeError, TypeError):
        return raw[:64]  # refused as invalid_device_guid; kept as sent, for the record


def record_attempt(
    session: Session, *, org_name: str, device_guid: str, username: str, outcome: str, message: str
) -> RegistrationAttempt:
    attempt = RegistrationAttempt(
        device_guid=_guid(device_guid),
        org_name=org_name,
        username=username[:256],
        outcome=outcome[:64],
        message=message[:1024],
    )
    session.add(attempt)
    session.flush()
    # One statement: the first attempt beyond the kept ones, and all older, go. With fewer
    # kept the subquery is empty (NULL) and nothing matches.
    cutoff = (
        select(RegistrationAttempt.id)
        .where(RegistrationAttempt.device_guid == attempt.device_guid)
        .order_by(RegistrationAttempt.id.desc())
        .offset(KEPT_PER_DEVICE)
        .limit(1)
        .scalar_subquery()
    )
    session.execute(
        delete(RegistrationAttempt)
        .where(
            RegistrationAttempt.device_guid == attempt.device_guid,
            RegistrationAttempt.id <= cutoff,
        )
        .execution_options(synchronize_session=False)
    )
    return attempt


def record_apart(
    db: Database,
    token: str | None,
    *,
    device_guid: str,
    username: str,
    outcome: str,
    message: str,
    org_name: str | None = None,
) -> None:
    """Record an attempt in a transaction of its own; never fails the request it describes.

    A refused registration rolled its own transaction back, and a successful one has
    already committed the device's credential, which the agent must still receive.
    `org_name`: the organization, when the caller knows it (a successful registration);
    otherwise the token says which it is, if any.
    """
    try:
        with db.transaction() as session:
            org_name = org_name or org_for_token(session, token)
            if org_name is None:
                return
            record_attempt(
                session,
                org_name=org_name,
                device_guid=device_guid,
                username=username,
                outcome=outcome,
                message=message,
            )
    except SQLAlchemyError as exc:
        log.warning("registration attempt of device %s not recorded: %s", device_guid, exc)


def list_attempts(
    session: Session, *, org: str | None = None, device: str | None = None, limit: int = 50
) -> list[RegistrationAttempt]:
    """Attempts, newest first."""
    query = select(RegistrationAttempt).order_by(RegistrationAttempt.id.desc()).limit(limit)
    if org:
        query = query.where(RegistrationAttempt.org_name == find_org(session, org).name)
    if device:
        query = query.where(RegistrationAttempt.device_guid == _guid(device.strip()))
    return list(session.scalars(query))


def latest_attempts(session: Session, guids: Iterable[str]) -> dict[str, RegistrationAttempt]:
    """The newest attempt of each of these devices that has one."""
    wanted = sorted(set(guids))
    found: dict[str, RegistrationAttempt] = {}
    # In batches: SQLite limits the parameters of one statement.
    for start in range(0, len(wanted), 500):
        newest = (
            select(func.max(RegistrationAttempt.id))
            .where(RegistrationAttempt.device_guid.in_(wanted[start : start + 500]))
            .group_by(RegistrationAttempt.device_guid)
        )
        query = select(RegistrationAttempt).where(RegistrationAttempt.id.in_(newest))
        found.update((a.device_guid, a) for a in session.scalars(query))
    return found


def attempt_summary(attempt: RegistrationAttempt) -> dict[str, Any]:
    return {
        "at": attempt.at.isoformat(),
        "device_guid": attempt.device_guid,
        "org": attempt.org_name,
        "username": attempt.username,
        "outcome": attempt.outcome,
        "registered": attempt.outcome in SUCCESSES,
        "message": attempt.message,
    }


def device_rows(session: Session, org_name: str | None, pending: bool) -> list[dict[str, Any]]:
    """The devices an administrator sees, each with the authority's last answer to it."""
    # Each device's organization and user in the same query: a fleet's list, not a query
    # per device (3,000 devices: 1.1 s of the console's devices page).
    query = (
        select(Device)
        .join(Organization)
        .options(contains_eager(Device.org), joinedload(Device.user))
        .order_by(Device.first_seen_at)
    )
    if org_name:
        query = query.where(Device.org_id == find_org(session, org_name).id)
    if pending:
        query = query.where(Device.registered_at.is_(None))
    devices = [device_summary(d) for d in session.scalars(query)]
    # Why an installed device is not registered, as the authority last answered it.
    latest = latest_attempts(session, (d["guid"] for d in devices))
    for summary in devices:
        attempt = latest.get(summary["guid"])
        summary["last_attempt"] = attempt_summary(attempt) if attempt else None
    return devices


__all__ = [
    "KEPT_PER_DEVICE",
    "REGISTERED",
    "REGISTERED_UNMAPPED",
    "attempt_summary",
    "device_rows",
    "latest_attempts",
    "list_attempts",
    "org_for_token",
    "record_apart",
    "record_attempt",
]
