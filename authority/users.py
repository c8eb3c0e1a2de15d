"""Users of organizations: listing, and the password reset that reveals a hidden password."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from authority.db import Device, Organization, User
from authority.errors import InvalidInput, NotFound
from authority.orgs import find_org
from authority.passwords import generate_password, hash_password


def list_users(session: Session, org_name: str | None = None) -> list[User]:
    query = select(User).join(Organization).order_by(Organization.name, User.username)
    if org_name:
        query = query.where(User.org_id == find_org(session, org_name).id)
    return list(session.scalars(query))


def user_summary(session: Session, user: User) -> dict[str, Any]:
    devices = session.scalars(select(Device.guid).where(Device.user_id == user.id)).all()
    return {
        "username": user.username,
        "org": user.org.name,
        "display_name": user.display_name,
        "email": user.email,
        # A hidden password was generated at registration and never shown: the user cannot
        # sign in or restore until an administrator resets it.
        "can_sign_in": user.password_hash is not None and not user.password_hidden,
        "password_hidden": user.password_hidden,
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
    return user, password


__all__ = ["list_users", "reset_password", "user_summary"]
