"""An organization's LDAP directory: who a detected username is, and whether a password is theirs.

ldap3 is used here and nowhere else, and its exceptions are translated once, at this boundary:

    cannot connect, timeout, TLS failure, server busy   Unavailable  directory_unavailable
    bind password file unreadable, service bind refused Unavailable  directory_bind_failed
    the directory refused the search (base DN, filter)  Unavailable  directory_search_failed
    the stored settings are unusable (CA file gone)     Unavailable  directory_misconfigured
    the filter matched more than one entry              Conflict     directory_user_ambiguous

Every directory failure is transient for agents (503 with Retry-After): an administrator
fixes the directory or the organization's settings, and devices must simply retry.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import re
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from ldap3 import NO_ATTRIBUTES, NONE, SUBTREE, Connection, Server, Tls
from ldap3.core import exceptions as ldap_errors
from ldap3.utils.conv import escape_filter_chars

from authority.errors import AuthorityError, Conflict, Forbidden, Unavailable
from authority.orgs import LdapSettings

log = logging.getLogger("authority")

# Per network step (connect, StartTLS, bind, search): four steps stay inside the agent's
# default 30-second request timeout, so a slow directory is our 503, not the agent's timeout.
DEFAULT_TIMEOUT = 5.0
# The most entries a connection check counts (check_connection): enough to tell "some" from
# "none", without reading a whole directory.
CHECK_LIMIT = 1000
# Whichever of these an entry has decides whether the account is disabled (is_disabled).
STATE_ATTRIBUTES = (
    "pwdAccountLockedTime",  # OpenLDAP ppolicy
    "shadowExpire",  # NIS shadowAccount
    "nsAccountLock",  # 389 DS, FreeIPA
    "userAccountControl",  # Active Directory
)
PROFILE_ATTRIBUTES = ("displayName", "cn", "mail")
_AD_ACCOUNTDISABLE = 0x2
_PUBLIC_DETAIL = {
    "directory_bind_failed": "the authority cannot bind to it (the reason is in authority.log)",
    "directory_misconfigured": "its settings on the authority are not usable "
    "(the reason is in authority.log)",
}
# The attribute a filter compares with {username}: `uid` in the default, sAMAccountName on AD.
_USERNAME_ATTRIBUTE = re.compile(r"\(\s*([A-Za-z][A-Za-z0-9-]*)\s*=\s*\{username\}\s*\)")


def _hex(text: str) -> str:
    return "".join(f"\\{byte:02x}" for byte in text.encode("utf-8"))


def user_filter(template: str, username: str) -> str:
    """The search filter for `username`, escaped (RFC 4515) so it can only ever be a value."""
    value = escape_filter_chars(username)
    # ldap3's filter parser strips a value's edges; hex-escaped, edge spaces stay in the name.
    start, end = len(value) - len(value.lstrip()), len(value.rstrip())
    if end > start:
        value = _hex(value[:start]) + value[start:end] + _hex(value[end:])
    else:
        value = _hex(value)
    return template.replace("{username}", value)


def username_attribute(template: str) -> str | None:
    match = _USERNAME_ATTRIBUTE.search(template)
    return match.group(1) if match else None


@dataclass(frozen=True)
class DirectoryUser:
    username: str  # as the directory spells it, which is what the authority stores
    dn: str
    display_name: str | None
    email: str | None
    disabled: bool


class UserDirectory(Protocol):
    """What registration and sign-in need from a directory (tests pass a fake)."""

    def find_user(self, username: str) -> DirectoryUser | None: ...

    def authenticate(self, username: str, password: str) -> DirectoryUser | None: ...


def _first(raw: Mapping[str, list[bytes]], name: str) -> str | None:
    # Attribute names come back as the server spells them; LDAP names are case-insensitive.
    values = next((v for k, v in raw.items() if k.lower() == name.lower()), [])
    return values[0].decode("utf-8", "replace") if values and values[0] else None


def _int(text: str | None) -> int:
    return int(text) if text and re.fullmatch(r"-?\d+", text.strip()) else 0


def is_disabled(raw: Mapping[str, list[bytes]], today: dt.date) -> bool:
    """Whether the entry's account is disabled, by whichever convention its directory uses."""
    # shadow(5): days since 1970-01-01; the account is expired from that day on; 0 or -1 is never.
    expire = _int(_first(raw, "shadowExpire"))
    return (
        _first(raw, "pwdAccountLockedTime") is not None
        or 0 < expire <= (today - dt.date(1970, 1, 1)).days
        or (_first(raw, "nsAccountLock") or "").strip().upper() == "TRUE"
        or bool(_int(_first(raw, "userAccountControl")) & _AD_ACCOUNTDISABLE)
    )


class _VerifiedTls(Tls):
    """ldap3's Tls with the standard library's hostname check.

    ldap3 2.9 turns the context's own check off and calls the deprecated ssl.match_hostname
    instead; a default context checks the certificate and host name inside the handshake.
    """

    def __init__(self, ca_file: str | None) -> None:
        # The CA file is ours to read (context()): ldap3's check of it would raise from here.
        super().__init__(validate=ssl.CERT_REQUIRED)
        self.ca_file = ca_file

    def context(self) -> ssl.SSLContext:
        # The CA file is read at each connection, so replacing it needs no restart.
        return ssl.create_default_context(cafile=self.ca_file)

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        connection.socket = self.context().wrap_socket(
            connection.socket,
            server_side=False,
            do_handshake_on_connect=do_handshake,
            server_hostname=connection.server.host,
        )


def make_server(settings: LdapSettings, timeout: float) -> Server:
    """The ldap3 Server for `settings`: TLS from the start for ldaps://, else as configured."""
    parts = urlsplit(settings.url)
    tls = _VerifiedTls(settings.ca_file) if settings.ldaps or settings.starttls else None
    return Server(
        parts.hostname or "",
        port=parts.port or (636 if settings.ldaps else 389),
        use_ssl=settings.ldaps,
        tls=tls,
        get_info=NONE,  # no schema download: one round trip fewer, and nothing to go stale
        connect_timeout=timeout,
    )


class Directory:
    """One organization's directory, contacted afresh for each question (no pool to go stale)."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry_after: int = 60,
        org_name: str | None = None,
        for_administrator: bool = False,
    ) -> None:
        self.retry_after = retry_after
        self.timeout = timeout
        # An administrator testing the settings reads the whole reason; devices read less.
        self.for_administrator = for_administrator
        self.url = str(settings.get("url", "?"))
        self.where = (
            f"the directory of organization {org_name!r}" if org_name else "the LDAP directory"
        )
        try:
            self.settings = LdapSettings.from_dict(settings)
        except (KeyError, TypeError) as exc:
            raise self._unavailable(
                "directory_misconfigured", f"its settings are incomplete ({exc})"
            ) from None
        try:
            self.server = make_server(self.settings, timeout)
        except (ldap_errors.LDAPException, ValueError) as exc:
            raise self._unavailable("directory_misconfigured", _short(exc)) from exc

    def find_user(self, username: str) -> DirectoryUser | None:
        """The entry the user filter matches for `username`; None when nothing matches."""
        if not username or not _encodable(username):
            return None  # no directory entry has an empty name or one that is not Unicode
        with self._connection(self.settings.bind_dn, self._bind_password()) as conn:
            return self._search(conn, username)

    def authenticate(self, username: str, password: str) -> DirectoryUser | None:
        """The user, if `password` is theirs; None for a wrong password or an unknown user.

        A disabled user with the right password is refused (Forbidden,
        `directory_user_disabled`), so a returned user is always one who may sign in.
        """
        if not password:
            # RFC 4513 5.1.2: a DN with an empty password is an unauthenticated bind, which
            # many servers accept. It must never count as a correct password.
            return None
        user = self.find_user(username)
        if user is None:
            return None
        try:
            with self._connection(user.dn, password, service=False):
                pass
        except _WrongPassword:
            return None
        if user.disabled:
            raise disabled_error(user.username, self.where)
        return user

    def check_connection(self) -> str:
        """Bind and search once, as an administrator's "test connection": what happened.

        The search is the user filter with any username (`{username}` as `*`), under the base
        DN: the entries registrations could find. Failures raise as find_user's do.
        """
        settings = self.settings
        with self._connection(settings.bind_dn, self._bind_password()) as conn:
            try:
                conn.search(
                    settings.base_dn,
                    settings.user_filter.replace("{username}", "*"),
                    search_scope=SUBTREE,
                    attributes=NO_ATTRIBUTES,
                    size_limit=CHECK_LIMIT,
                    time_limit=max(1, math.ceil(self.timeout)),
                )
                entries = [r for r in conn.response or [] if r.get("type") == "searchResEntry"]
                found = str(len(entries))
            except ldap_errors.LDAPSizeLimitExceededResult:
                found = f"more than {CHECK_LIMIT}"
        who = (
            f"bind as {settings.bind_dn} succeeded"
            if settings.bind_dn
            else "anonymous access succeeded"
        )
        noun = "entry" if found == "1" else "entries"
        return f"Connected: {who}, search under {settings.base_dn} returned {found} {noun}"

    def _bind_password(self) -> str | None:
        path = self.settings.bind_password_file
        if not self.settings.bind_dn or not path:
            return None
        try:
            # Read at each lookup: an administrator rotates the password without a restart.
            password = Path(path).read_text("utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise self._unavailable(
                "directory_bind_failed", f"the bind password file {path} cannot be read ({exc})"
            ) from None
        if not password:
            # An empty password would be an unauthenticated bind (RFC 4513 5.1.2), not this DN.
            raise self._unavailable(
                "directory_bind_failed", f"the bind password file {path} is empty"
            )
        return password

    @contextmanager
    def _connection(
        self, bind_dn: str | None, password: str | None, *, service: bool = True
    ) -> Iterator[Connection]:
        conn: Connection | None = None
        try:
            self._check_ca_file()
            conn = Connection(
                self.server,
                user=bind_dn,
                password=password,
                raise_exceptions=True,
                read_only=True,
                auto_escape=False,  # user_filter escapes; escaping twice would change the value
                # ldap3 packs this into SO_RCVTIMEO as whole seconds.
                receive_timeout=max(1, math.ceil(self.timeout)),
            )
            conn.open()
            if self.settings.starttls:
                conn.start_tls()
            if bind_dn:
                conn.bind()
            yield conn
        except AuthorityError:
            raise
        except ldap_errors.LDAPInvalidCredentialsResult as exc:
            if not service:
                raise _WrongPassword from exc
            raise self._unavailable(
                "directory_bind_failed",
                f"it refused the authority's bind as {bind_dn!r} (invalid credentials); "
                "check --ldap-bind-dn and the password file",
            ) from exc
        except Exception as exc:
            raise self._translate(exc) from exc
        finally:
            if conn is not None:
                _close(conn)

    def _check_ca_file(self) -> None:
        path = self.settings.ca_file
        if path and not os.access(path, os.R_OK):
            raise self._unavailable("directory_misconfigured", f"its CA file {path} is unreadable")

    def _search(self, conn: Connection, username: str) -> DirectoryUser | None:
        settings = self.settings
        attribute = username_attribute(settings.user_filter)
        wanted = [*PROFILE_ATTRIBUTES, *STATE_ATTRIBUTES, *([attribute] if attribute else [])]
        try:
            conn.search(
                settings.base_dn,
                user_filter(settings.user_filter, username),
                search_scope=SUBTREE,
                attributes=wanted,
                size_limit=2,  # two are enough to know the filter is ambiguous
                time_limit=max(1, math.ceil(self.timeout)),
            )
        except ldap_errors.LDAPSizeLimitExceededResult:
            raise self._ambiguous(username) from None
        entries = [r for r in conn.response or [] if r.get("type") == "searchResEntry"]
        if not entries:
            return None
        if len(entries) > 1:
            raise self._ambiguous(username)
        raw: Mapping[str, list[bytes]] = entries[0].get("raw_attributes") or {}
        return DirectoryUser(
            username=(_first(raw, attribute) if attribute else None) or username,
            dn=str(entries[0]["dn"]),
            display_name=_first(raw, "displayName") or _first(raw, "cn"),
            email=_first(raw, "mail"),
            disabled=is_disabled(raw, dt.datetime.now(dt.UTC).date()),
        )

    def _ambiguous(self, username: str) -> Conflict:
        return Conflict(
            f"the user filter matches more than one entry for {username!r} in {self.where}; "
            "make --ldap-user-filter match one user",
            code="directory_user_ambiguous",
        )

    def _translate(self, exc: Exception) -> AuthorityError:
        detail = _short(exc)
        if isinstance(exc, ldap_errors.LDAPOperationResult) and not isinstance(
            exc,
            ldap_errors.LDAPBusyResult
            | ldap_errors.LDAPUnavailableResult
            | ldap_errors.LDAPTimeLimitExceededResult
            | ldap_errors.LDAPAdminLimitExceededResult,
        ):
            return self._unavailable(
                "directory_search_failed", f"it refused the request: {detail}", level=logging.ERROR
            )
        if isinstance(exc, ldap_errors.LDAPInvalidFilterError):
            return self._unavailable(
                "directory_search_failed", f"the user filter is not valid: {detail}"
            )
        if not isinstance(exc, ldap_errors.LDAPException | OSError):
            # Not an error ldap3 documents: keep the traceback for a bug report.
            log.warning("unexpected error from ldap3 talking to %s", self.where, exc_info=exc)
        return self._unavailable("directory_unavailable", f"it cannot be reached: {detail}")

    def _unavailable(self, code: str, detail: str, *, level: int = logging.WARNING) -> Unavailable:
        state = "is unavailable" if code == "directory_unavailable" else "cannot be used"
        log.log(level, "%s (%s) %s: %s [%s]", self.where, self.url, state, detail, code)
        if self.for_administrator:
            message = f"{self.where} ({self.url}) {state}: {detail}"
            return Unavailable(message, code=code, retry_after=self.retry_after)
        # Devices see the message too: bind DNs and file paths stay in the authority's log.
        public = _PUBLIC_DETAIL.get(code, detail)
        message = f"{self.where} ({self.url}) {state}: {public}; the device will retry"
        return Unavailable(message, code=code, retry_after=self.retry_after)


class _WrongPassword(Exception):
    """A user's bind was refused: a wrong password, never a directory failure."""


def disabled_error(username: str, where: str) -> Forbidden:
    return Forbidden(
        f"user {username!r} is disabled in {where}; a disabled account cannot register a "
        "device or sign in",
        code="directory_user_disabled",
    )


def _encodable(text: str) -> bool:
    return not any("\ud800" <= c <= "\udfff" for c in text)  # lone surrogates JSON lets through


def _close(conn: Connection) -> None:
    # ldap3 leaves the socket open when open() or StartTLS fails; close it ourselves.
    try:
        if conn.bound:
            conn.unbind()
    except Exception:  # noqa: S110  (closing is best effort: the answer is already decided)
        pass
    sock = getattr(conn, "socket", None)
    if sock is not None:
        with suppress(OSError):
            sock.close()


_WRAPPED = re.compile(r"""^\((['"])(.*)\1,\)$""", re.DOTALL)


def _short(exc: BaseException) -> str:
    """One readable line for an administrator, whatever shape ldap3 gave the exception."""
    if isinstance(exc, ldap_errors.LDAPOperationResult):
        text = f"{exc.description} (LDAP result {exc.result})"
        text += f": {exc.message}" if exc.message else ""
    else:
        text = str(exc) or type(exc).__name__
        # ldap3 re-raises with str() of a tuple, sometimes twice: "(\"('the reason',)\",)".
        while match := _WRAPPED.match(text):
            text = match.group(2)
    return text if len(text) <= 200 else text[:197] + "..."


__all__ = [
    "CHECK_LIMIT",
    "Directory",
    "DirectoryUser",
    "UserDirectory",
    "disabled_error",
    "is_disabled",
    "make_server",
    "user_filter",
    "username_attribute",
]
