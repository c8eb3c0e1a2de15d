"""Registration: the device becomes a user's, and gets its own credential.

Silent registration names the detected user; manual registration (a sign-in) names the user
whose password the authority checked. The password is an argument and nothing else: it is
sent once, over the pinned TLS connection, and never stored or logged.

The credential is saved (atomically, mode 0600) before the lifecycle moves on. A crash
between the authority accepting the registration and that save is harmless: the next
attempt registers the same GUID again, and registration is idempotent by GUID.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import logs
from agent.errors import (
    AgentError,
    ContactError,
    PermanentError,
    Refused,
    TransientError,
    UsageError,
)
from agent.identity import Identity
from agent.state import StateDamaged, write_atomic
from agent.transport import AuthorityClient

log = logging.getLogger(logs.LOGGER)


@dataclass(frozen=True)
class Registration:
    device_guid: str
    org: str
    username: str
    registered_at: str
    # A registration that worked with a caveat the user should hear of, e.g. an SSO user
    # the directory does not know yet: backups run, but sign-in and restore do not.
    warning: str | None = None


def register(
    client: AuthorityClient,
    *,
    token: str,
    identity: Identity,
    report: dict[str, Any],
    username: str,
    user_home: str,
    credential_path: Path,
) -> Registration:
    body = _device(identity, report, username, user_home)
    return _save(client.register(token, body), credential_path)


def sign_in(
    client: AuthorityClient,
    *,
    token: str,
    identity: Identity,
    report: dict[str, Any],
    given: Mapping[str, Any],
    user_home: str,
    credential_path: Path,
) -> Registration:
    """Manual registration: the authority checks the password, then registers as `register`.

    `given` is the control request's {username, password}. The password is redacted from
    every log line while the sign-in runs, and forgotten after it. ContactError is raised
    as the authority reported it (the caller maps it with sign_in_failure).
    """
    username = str(given.get("username") or "").strip()
    password = str(given.get("password") or "")
    if not username or not password:
        raise UsageError("a sign-in needs a username and a password")
    logs.redactor.add(password)
    try:
        log.info("signing in device %s as %r", identity.guid, username)
        body = {**_device(identity, report, username, user_home), "password": password}
        try:
            answer = client.sign_in(token, body)
        except ContactError as exc:
            log.warning("sign-in as %r failed: %s (code=%s)", username, exc.message, exc.code)
            raise
    finally:
        logs.redactor.discard(password)
    return _save(answer, credential_path)


# Codes the authority answers a sign-in with, as the user's command shows them.
_WRONG_INPUT = ("invalid_username", "username_not_email", "invalid_request")


def sign_in_failure(exc: ContactError) -> AgentError:
    """The authority's answer to a failed sign-in, as the error `holdfast login` exits with.

    A wrong password is a failure (exit 1: type it again); a locked account, or one the
    authority will not let sign in at all, is a refusal (exit 4: nothing the user can type
    helps); a username the organization cannot have is bad input (exit 2); the authority, or
    its directory, out of reach is a failure (exit 1: try again later).
    """
    if exc.code == "sign_in_failed":
        return AgentError(exc.message)
    if exc.code in _WRONG_INPUT:
        return UsageError(exc.message)
    if exc.code == "sign_in_locked" or isinstance(exc, PermanentError):
        return Refused(exc.message)
    return AgentError(f"the sign-in could not be completed now: {exc.message}; try again later")


def _device(
    identity: Identity, report: dict[str, Any], username: str, user_home: str
) -> dict[str, Any]:
    return {
        **report,
        "device_guid": identity.guid,
        "hardware_id": identity.hardware_id,
        "username": username,
        "user_home": user_home,
    }


def _save(answer: dict[str, Any], credential_path: Path) -> Registration:
    try:
        credential = str(answer["credential"])
        result = Registration(
            device_guid=str(answer["device_guid"]),
            org=str(answer["org"]),
            username=str(answer["username"]),
            registered_at=str(answer["registered_at"]),
            warning=str(answer["warning"]) if answer.get("warning") else None,
        )
    except (KeyError, TypeError) as exc:
        raise TransientError("bad_answer", f"the registration answer lacks {exc}") from None
    write_atomic(credential_path, (credential + "\n").encode(), mode=0o600)
    if result.warning:
        log.warning("registered with a caveat: %s", result.warning)
    return result


def load_credential(path: Path) -> str | None:
    """The device credential, or None before registration; StateDamaged when the file holds
    something no authority issues (a truncated or corrupted file)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    value = raw.strip()
    if not _CREDENTIAL.fullmatch(value):
        raise StateDamaged(path, "not a device credential")
    return value.decode("ascii")


# What can travel in an Authorization header: printable ASCII, no spaces.
_CREDENTIAL = re.compile(rb"[!-~]{1,1024}")


__all__ = ["Registration", "load_credential", "register", "sign_in", "sign_in_failure"]
