"""Users of organizations: who a registering device belongs to, listing, password resets.

Which user a silent registration names depends on the organization's authentication:

    local  the username (an e-mail address) as reported; a new user gets a hidden password
    ldap   the directory's entry for the username, or no registration at all
    sso    the user of that name; an unknown name still registers, with a new user who has no
           password and is flagged: nobody signs in or restores as it until the mapping is fixed
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.orm import Session, contains_eager

from authority.db import Device, Organization, SignInFailures, User
from authority.directory import Directory, DirectoryUser, UserDirectory, disabled_error
from authority.errors import InvalidInput, NotFound
from authority.orgs import find_org
from authority.passwords import generate_password, hash_password

UNMAPPED = "cannot sign in or restore until the mapping is fixed"
HIDDEN = "password hidden: reset it"

DirectoryFor = Callable[[Organization], UserDirectory]


def directory_for(org: Organization, *, retry_after: int = 60) -> Directory:
    """The organization's LDAP directory, whose failures ask agents to retry after `retry_after`."""
    return Directory(org.ldap or {}, retry_after=retry_after, org_name=org.name)


@dataclass(frozen=True)
class UserMatch:
    """The user a registration names, and what an administrator should know about it."""

    user: User
    created: bool
    warning: str | None = None


# Built once: every registration runs it (authority/registration.py says why).
_USER_BY_NAME = select(User).where(
    User.org_id == bindparam("org_id"), User.username == bindparam("username")
)


def _by_name(session: Session, org: Organization, username: str) -> User | None:
    return session.scalar(_USER_BY_NAME, {"org_id": org.id, "username": username})


def _local_user(session: Session, org: Organization, username: str) -> UserMatch:
    user = _by_name(session, org, username)
    if user is not None:
        return UserMatch(user, created=False)
    # Hidden: nobody can sign in as this user until an administrator resets the password
    # (sign_in_blocked), so no password is made now. Hashing one that nobody will ever know
    # cost a scrypt (about 50 ms of CPU and 16 MiB) per new user: most of the authority's
    # work in a mass install.
    user = User(
        org=org,
        username=username,
        email=username,
        password_hash=None,
        password_hidden=True,
    )
    session.add(user)
    session.flush()
    return UserMatch(user, created=True)


def _ldap_user(
    session: Session, org: Organization, username: str, directory: UserDirectory
) -> UserMatch:
    found: DirectoryUser | None = directory.find_user(username)
    if found is None:
        raise NotFound(
            f"user {username!r} not found in the directory of organization {org.name!r}",
            code="directory_user_not_found",
        )
    if found.disabled:
        raise disabled_error(found.username, f"the directory of organization {org.name!r}")
    # Stored as the directory spells the name, so `JDoe` and `jdoe` are one user.
    user = _by_name(session, org, found.username)
    created = user is None
    if user is None:
        # The directory checks passwords: the authority keeps none for this user.
        user = User(org=org, username=found.username, password_hash=None, password_hidden=False)
        session.add(user)
    # The directory is the reference: each registration brings its current name and e-mail.
    user.display_name = found.display_name
    user.email = found.email
    session.flush()
    return UserMatch(user, created=created)


def _sso_user(session: Session, org: Organization, username: str) -> UserMatch:
    user = _by_name(session, org, username) or session.scalar(
        select(User)
        .where(User.org_id == org.id, func.lower(User.username) == username.lower())
        .order_by(User.id)
        .limit(1)
    )
    created = user is None
    if user is None:
        user = User(
            org=org,
            username=username,
            password_hash=None,
            password_hidden=False,
            needs_mapping=True,
        )
        session.add(user)
        session.flush()
    if not user.needs_mapping:
        return UserMatch(user, created=False)
    return UserMatch(
        user,
        created=created,
        warning=(
            f"user {user.username!r} is not known to the SSO organization {org.name!r}: the "
            f"device is registered to a user without a password, who {UNMAPPED}"
        ),
    )


def user_for_registration(
    session: Session, org: Organization, username: str, directories: DirectoryFor
) -> UserMatch:
    """The user a silent registration of `username` in `org` names (module docstring)."""
    if org.auth == "ldap":
        return _ldap_user(session, org, username, directories(org))
    if org.auth == "sso":
        return _sso_user(session, org, username)
    return _local_user(session, org, username)


def list_users(session: Session, org_name: str | None = None) -> list[User]:
    query = (
        select(User)
        .join(Organization)
        .options(contains_eager(User.org))
        .order_by(Organization.name, User.username)
    )
    if org_name:
        query = query.where(User.org_id == find_org(session, org_name).id)
    return list(session.scalars(query))


def sign_in_blocked(user: User) -> str | None:
    """Why the user cannot sign in or restore, or None when nothing here stops them."""
    if user.needs_mapping:
        return UNMAPPED
    if user.org.auth == "local" and (user.password_hash is None or user.password_hidden):
        # Generated at registration and never shown: an administrator must reset it first.
        return HIDDEN
    return None  # LDAP and SSO users: their directory or identity provider checks them


def devices_by_user(session: Session) -> dict[int, list[str]]:
    """Every user's device GUIDs in one query, for lists of users (not one query a user)."""
    found: dict[int, list[str]] = {}
    for user_id, guid in session.execute(
        select(Device.user_id, Device.guid).where(Device.user_id.is_not(None)).order_by(Device.id)
    ):
        if user_id is not None:
            found.setdefault(user_id, []).append(guid)
    return found


def user_summary(
    session: Session, user: User, devices_of: dict[int, list[str]] | None = None
) -> dict[str, Any]:
    """`devices_of`: from `devices_by_user`, when summing up many users."""
    devices = (
        devices_of.get(user.id, [])
        if devices_of is not None
        else session.scalars(
            select(Device.guid).where(Device.user_id == user.id).order_by(Device.id)
        ).all()
    )
    blocked = sign_in_blocked(user)
    return {
        "username": user.username,
        "org": user.org.name,
        "display_name": user.display_name,
        "email": user.email,
        "can_sign_in": blocked is None,
        "cannot_sign_in_because": blocked,
        "password_hidden": user.password_hidden,
        "needs_mapping": user.needs_mapping,
        "devices": list(devices),
        "created_at": user.created_at.isoformat(),
    }


def reset_password(session: Session, username: str, org_name: str | None) -> tuple[User, str]:
    """Give the user a new password, returned once for the administrator to pass on."""
    query = select(User).where(User.username == username)
    if org_name:
        query = query.where(User.org_id == find_org(session, org_name).id)
    users = list(session.scalars(query))
    if not users:
        raise NotFound(f"no user named {username!r}", code="user_not_found")
    if len(users) > 1:
        orgs = ", ".join(sorted(u.org.name for u in users))
        raise InvalidInput(f"user {username!r} exists in several organizations ({orgs}): add --org")
    user = users[0]
    password = generate_password()
    user.password_hash = hash_password(password)
    user.password_hidden = False
    # A new password ends a sign-in lockout: the administrator has just helped the user.
    session.execute(
        delete(SignInFailures).where(
            SignInFailures.org_id == user.org_id,
            SignInFailures.username == user.username.casefold(),
        )
    )
    return user, password


__all__ = [
    "UNMAPPED",
    "DirectoryFor",
    "UserMatch",
    "devices_by_user",
    "directory_for",
    "list_users",
    "reset_password",
    "sign_in_blocked",
    "user_for_registration",
    "user_summary",
]
