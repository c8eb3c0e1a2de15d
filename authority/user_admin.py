"""`holdfast-authority user create`: a local user made by an administrator, before any device.

Under a manual policy a local user signs in with a password, so the user must exist, with a
password someone knows, before the first sign-in: silent registration makes users with a
hidden password, which is no use for that. LDAP users come from the directory and SSO users
from the identity provider, so this is for local organizations only.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from authority.admin import Admin
from authority.db import User
from authority.errors import Conflict, InvalidInput
from authority.orgs import find_org
from authority.passwords import generate_password, hash_password


def create_user(session: Session, username: str, org_name: str) -> tuple[User, str]:
    """A new local user with a generated password, returned once for the administrator."""
    org = find_org(session, org_name)
    if org.auth != "local":
        raise InvalidInput(
            f"organization {org.name!r} uses {org.auth.upper()} authentication: its users come "
            f"from {'its directory' if org.auth == 'ldap' else 'the identity provider'}"
        )
    name = username.strip()
    local, _, domain = name.partition("@")
    if not local or "." not in domain or any(c.isspace() for c in name) or len(name) > 256:
        raise InvalidInput(
            f"{username!r}: users of local organizations are named by e-mail address",
            code="username_not_email",
        )
    exists = session.scalar(select(User.id).where(User.org_id == org.id, User.username == name))
    if exists is not None:
        raise Conflict(
            f"user {name!r} already exists in organization {org.name!r} "
            "(a new password: user reset-password)",
            code="user_exists",
        )
    password = generate_password()
    user = User(
        org=org,
        username=name,
        email=name,
        password_hash=hash_password(password),
        password_hidden=False,  # shown to the administrator, now
    )
    session.add(user)
    session.flush()
    return user, password


def user_create(admin: Admin, username: str, org_name: str) -> str:
    """The CLI's `user create NAME --org ORG`: what the administrator reads."""
    with admin.db.transaction() as session:
        user, password = create_user(session, username, org_name)
        who = f"{user.username} ({user.org.name})"
    return f"Created user {who}; password: {password}\nIt is shown only now; pass it on securely."


__all__ = ["create_user", "user_create"]
