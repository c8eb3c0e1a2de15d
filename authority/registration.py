"""Device registration and the reports agents send on each contact.

Registration is idempotent by device GUID: the same GUID registering again gets the same
device back with a fresh credential (the old one stops working), never a second device.
The credential is returned once and stored only as a SHA-256 digest.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, joinedload

from authority.db import Device, Organization, Policy, User, utcnow
from authority.errors import Conflict, Forbidden, InvalidInput, Unauthorized
from authority.policies import require_active
from authority.scripts import parse_os
from authority.users import DirectoryFor, directory_for, user_for_registration

# Built once: every agent request runs one of them, and building a statement anew (and
# computing its cache key) cost more than running it (97 against 190 us a lookup).
_DEVICE_BY_GUID = select(Device).where(Device.guid == bindparam("guid"))
_DEVICE_BY_CREDENTIAL = (
    select(Device)
    .where(Device.credential_hash == bindparam("digest"))
    .options(joinedload(Device.org))  # every caller checks that the organization is active
)

PHASES = (
    "unconfigured",
    "awaiting_policy",
    "awaiting_registration",
    "awaiting_sign_in",
    "backing_up",
    "stopped",
)
MAX_ERROR = 1024
# Deliberately plain: local usernames must look like e-mail addresses, not be deliverable.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_WINDOWS_ABS = re.compile(r"^([A-Za-z]:[\\/]|\\\\[^\\]+\\)")


@dataclass(frozen=True)
class DeviceReport:
    """What an agent says about itself on every contact."""

    guid: str
    name: str = ""
    os: str = ""
    agent_version: str = ""
    phase: str | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class RegistrationRequest:
    device: DeviceReport
    username: str
    user_home: str
    hardware_id: str | None = None


@dataclass(frozen=True)
class Registration:
    device: Device
    user: User
    credential: str
    user_created: bool
    already_registered: bool
    warning: str | None = None  # registered, but an administrator has something to fix


def check_guid(guid: str) -> str:
    try:
        return str(uuid.UUID(guid))
    except (ValueError, AttributeError, TypeError):
        raise InvalidInput(
            f"device_guid {guid!r} is not a UUID", code="invalid_device_guid"
        ) from None


def check_report(report: DeviceReport) -> DeviceReport:
    if report.phase is not None and report.phase not in PHASES:
        raise InvalidInput(f"phase {report.phase!r} is not one of {', '.join(PHASES)}")
    if report.os:
        parse_os(report.os)
    if len(report.name) > 255 or len(report.agent_version) > 64:
        raise InvalidInput("device_name or agent_version is too long")
    return report


def _check_home(home: str) -> str:
    if not home or len(home) > 4096 or "\0" in home:
        raise InvalidInput("user_home must be an absolute path of at most 4096 characters")
    if not (home.startswith("/") or _WINDOWS_ABS.match(home)):
        raise InvalidInput(f"user_home {home!r} is not an absolute path")
    return home


def _check_username(username: str, org: Organization) -> str:
    if not 1 <= len(username) <= 256 or not username.isprintable():
        raise InvalidInput("username must be 1-256 printable characters", code="invalid_username")
    if org.auth == "local" and not _EMAIL.match(username):
        raise InvalidInput(
            f"organization {org.name!r} uses local authentication, where usernames are e-mail "
            f"addresses; the detection script reported {username!r} (use a variant of the "
            "script that appends the e-mail domain)",
            code="username_not_email",
        )
    return username


def credential_digest(credential: str) -> str:
    return hashlib.sha256(credential.encode("utf-8")).hexdigest()


def _apply_report(device: Device, report: DeviceReport) -> None:
    device.name = report.name or device.name
    device.os = report.os or device.os
    device.agent_version = report.agent_version or device.agent_version
    if report.phase is not None:
        device.phase = report.phase
        device.last_error = (report.last_error or "")[:MAX_ERROR] or None
    device.last_seen_at = utcnow()


def record_report(
    session: Session, org: Organization, report: DeviceReport, device: Device | None = None
) -> Device:
    """Note an agent's contact, so `device list` shows installed-but-unregistered devices.

    `device`: the device the report is about, when the caller has already loaded it (a
    check-in found it by its credential), so it is not looked up again.
    """
    guid = check_guid(report.guid)
    check_report(report)
    if device is None or device.guid != guid:
        device = session.scalar(_DEVICE_BY_GUID, {"guid": guid})
    if device is None:
        device = Device(guid=guid, org=org)
        session.add(device)
    elif device.registered_at is None:
        # Not registered yet: the device is where its latest token says it is being deployed.
        device.org = org
    _apply_report(device, report)
    session.flush()
    return device


def register(
    session: Session,
    policy: Policy,
    request: RegistrationRequest,
    *,
    directories: DirectoryFor = directory_for,
    signed_in: bool = False,
) -> Registration:
    """Register the device silently; the user depends on the organization's authentication.

    The directory (LDAP) is asked last, after every check that needs no network.
    `signed_in`: the user proved who they are with a password (authority.sign_in), which is
    what a manual policy asks for instead of silent registration.
    """
    org = policy.org
    require_active(org)
    guid = check_guid(request.device.guid)
    check_report(request.device)
    if policy.manual and not signed_in:
        raise Forbidden(
            f"the policy of organization {org.name!r} requires users to sign in; "
            "silent registration is not allowed",
            code="sign_in_required",
        )
    username = _check_username(request.username.strip(), org)
    home = _check_home(request.user_home)

    device = session.scalar(_DEVICE_BY_GUID, {"guid": guid})
    if device is not None and device.registered_at is not None and device.org_id != org.id:
        raise Conflict(
            f"device {guid} belongs to organization {device.org.name!r}; "
            "a device moves between organizations only by an administrator",
            code="device_in_other_org",
        )
    already = device is not None and device.registered_at is not None
    if (
        device is not None
        and already
        and device.hardware_id
        and request.hardware_id
        and device.hardware_id != request.hardware_id
    ):
        raise Conflict(
            f"device {guid} is already registered from other hardware; a cloned agent must "
            "make a new identity (it does so by itself)",
            code="device_cloned",
        )
    match = user_for_registration(session, org, username, directories)
    if device is None:
        device = Device(guid=guid, org=org)
        session.add(device)
    device.org = org
    credential = secrets.token_urlsafe(32)
    device.user = match.user
    device.user_home = home
    device.hardware_id = request.hardware_id or device.hardware_id
    device.credential_hash = credential_digest(credential)
    if device.registered_at is None:
        device.registered_at = utcnow()
    _apply_report(device, request.device)
    device.phase = "backing_up"
    device.last_error = None
    session.flush()
    return Registration(
        device=device,
        user=match.user,
        credential=credential,
        user_created=match.created,
        already_registered=already,
        warning=match.warning,
    )


def device_for_credential(session: Session, credential: str | None) -> Device:
    if not credential:
        raise Unauthorized("no device credential in the request", code="credential_missing")
    device = session.scalar(_DEVICE_BY_CREDENTIAL, {"digest": credential_digest(credential)})
    if device is None or device.registered_at is None:
        raise Unauthorized(
            "the device credential is not valid (revoked, or replaced by a newer registration)",
            code="credential_invalid",
        )
    return device


def device_summary(device: Device) -> dict[str, Any]:
    return {
        "guid": device.guid,
        "name": device.name,
        "os": device.os,
        "agent_version": device.agent_version,
        "org": device.org.name,
        "username": device.user.username if device.user else None,
        "user_home": device.user_home,
        "registered": device.registered_at is not None,
        "registered_at": device.registered_at.isoformat() if device.registered_at else None,
        "phase": device.phase,
        "last_error": device.last_error,
        "first_seen_at": device.first_seen_at.isoformat(),
        "last_seen_at": device.last_seen_at.isoformat(),
    }


__all__ = [
    "PHASES",
    "DeviceReport",
    "Registration",
    "RegistrationRequest",
    "check_guid",
    "credential_digest",
    "device_for_credential",
    "device_summary",
    "record_report",
    "register",
]
