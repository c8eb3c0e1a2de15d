"""Organizations: the authentication method a policy inherits, and where users and devices live."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ldap3.core.exceptions import LDAPException
from ldap3.operation.search import parse_filter
from sqlalchemy import select
from sqlalchemy.orm import Session

from authority.db import Organization, utcnow
from authority.errors import Conflict, InvalidInput, NotFound

AUTH_METHODS = ("local", "ldap", "sso")
DEFAULT_LDAP_FILTER = "(&(objectClass=inetOrgPerson)(uid={username}))"


@dataclass(frozen=True)
class LdapSettings:
    """How the authority reaches an organization's directory (`org create --ldap-*`)."""

    url: str
    base_dn: str
    bind_dn: str | None = None
    bind_password_file: str | None = None
    user_filter: str = DEFAULT_LDAP_FILTER
    starttls: bool = False
    ca_file: str | None = None

    @property
    def ldaps(self) -> bool:
        return self.url.lower().startswith("ldaps://")

    def validate(self) -> None:
        if not self.url.lower().startswith(("ldap://", "ldaps://")):
            raise InvalidInput(f"--ldap-url {self.url!r}: must start with ldap:// or ldaps://")
        try:
            urlsplit(self.url).port  # noqa: B018  (parsing is the check)
        except ValueError:
            raise InvalidInput(f"--ldap-url {self.url!r}: the port is not a number") from None
        if not urlsplit(self.url).hostname:
            raise InvalidInput(f"--ldap-url {self.url!r}: no host name")
        if not self.base_dn.strip():
            raise InvalidInput("--ldap-base-dn: must not be empty")
        self._validate_filter()
        if self.bind_dn and not self.bind_password_file:
            raise InvalidInput("--ldap-bind-dn needs --ldap-bind-password-file")
        if self.bind_password_file and not Path(self.bind_password_file).is_file():
            raise InvalidInput(
                f"--ldap-bind-password-file: {self.bind_password_file} does not exist"
            )
        self._validate_tls()

    def _validate_filter(self) -> None:
        if "{username}" not in self.user_filter:
            raise InvalidInput(
                f"--ldap-user-filter {self.user_filter!r}: must contain {{username}}, "
                "where the detected username goes"
            )
        try:
            # ldap3's own parser, the one the search uses: a filter accepted here parses there.
            probe = self.user_filter.replace("{username}", "probe")
            parse_filter(probe, None, False, False, None, False)  # type: ignore[no-untyped-call]
        except (LDAPException, ValueError, IndexError) as exc:
            raise InvalidInput(
                f"--ldap-user-filter {self.user_filter!r} is not an LDAP filter: {exc}"
            ) from None

    def _validate_tls(self) -> None:
        if self.starttls and self.ldaps:
            raise InvalidInput(
                "--ldap-starttls applies to ldap:// URLs; an ldaps:// URL is TLS from the start"
            )
        if self.ca_file is None:
            return
        if not (self.starttls or self.ldaps):
            raise InvalidInput("--ldap-ca-file needs an ldaps:// URL or --ldap-starttls")
        try:
            ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidInput(
                f"--ldap-ca-file {self.ca_file}: not a readable PEM file of CA certificates ({exc})"
            ) from None

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "base_dn": self.base_dn,
            "bind_dn": self.bind_dn,
            "bind_password_file": self.bind_password_file,
            "user_filter": self.user_filter,
            "starttls": self.starttls,
            "ca_file": self.ca_file,
        }

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> LdapSettings:
        """Settings as `as_dict` stored them; keys added later take their defaults."""
        return cls(
            url=str(stored["url"]),
            base_dn=str(stored["base_dn"]),
            bind_dn=stored.get("bind_dn") or None,
            bind_password_file=stored.get("bind_password_file") or None,
            user_filter=stored.get("user_filter") or DEFAULT_LDAP_FILTER,
            starttls=bool(stored.get("starttls", False)),
            ca_file=stored.get("ca_file") or None,
        )


@dataclass(frozen=True)
class LdapSecrets:
    """LDAP settings the console takes as text where the CLI takes files (`--ldap-*-file`).

    The authority keeps them in files of its data folder (DATA/ldap/, mode 0600), so an
    organization made in the console reads them exactly as one made with the CLI does.
    """

    bind_password: str | None = field(default=None, repr=False)
    ca_pem: str | None = None


def check_name(name: str) -> str:
    if not name or name != name.strip() or len(name) > 128 or not name.isprintable():
        raise InvalidInput(
            f"organization name {name!r}: 1-128 printable characters, "
            "without leading or trailing spaces"
        )
    return name


def find_org(session: Session, name: str) -> Organization:
    org = session.scalar(select(Organization).where(Organization.name == name))
    if org is None:
        raise NotFound(f"no organization named {name!r}", code="org_not_found")
    return org


def create_org(
    session: Session,
    name: str,
    auth: str,
    *,
    parent: str | None = None,
    ldap: LdapSettings | None = None,
) -> Organization:
    check_name(name)
    if auth not in AUTH_METHODS:
        raise InvalidInput(f"--auth {auth!r}: use one of {', '.join(AUTH_METHODS)}")
    if auth == "ldap":
        if ldap is None:
            raise InvalidInput("--auth ldap needs --ldap-url and --ldap-base-dn")
        ldap.validate()
    elif ldap is not None:
        raise InvalidInput(f"--ldap-* options apply to --auth ldap only, not {auth}")
    if session.scalar(select(Organization.id).where(Organization.name == name)) is not None:
        raise Conflict(f"an organization named {name!r} already exists", code="org_exists")
    parent_org = find_org(session, parent) if parent else None
    org = Organization(
        name=name,
        auth=auth,
        active=True,
        parent=parent_org,
        ldap=ldap.as_dict() if ldap else None,
    )
    session.add(org)
    session.flush()
    return org


def deactivate_org(session: Session, name: str) -> Organization:
    org = find_org(session, name)
    if org.active:
        org.active = False
        org.deactivated_at = utcnow()
    return org


def list_orgs(session: Session) -> list[Organization]:
    return list(session.scalars(select(Organization).order_by(Organization.name)))


def org_summary(org: Organization) -> dict[str, Any]:
    return {
        "name": org.name,
        "auth": org.auth,
        "active": org.active,
        "parent": org.parent.name if org.parent else None,
        "has_policy": org.policy is not None,
        "created_at": org.created_at.isoformat(),
        "deactivated_at": org.deactivated_at.isoformat() if org.deactivated_at else None,
    }


__all__ = [
    "AUTH_METHODS",
    "DEFAULT_LDAP_FILTER",
    "LdapSecrets",
    "LdapSettings",
    "check_name",
    "create_org",
    "deactivate_org",
    "find_org",
    "list_orgs",
    "org_summary",
]
