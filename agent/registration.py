"""Silent registration: the device becomes the detected user's, and gets its own credential.

The credential is saved (atomically, mode 0600) before the lifecycle moves on. A crash
between the authority accepting the registration and that save is harmless: the next
attempt registers the same GUID again, and registration is idempotent by GUID.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import TransientError
from agent.identity import Identity
from agent.state import write_atomic
from agent.transport import AuthorityClient


@dataclass(frozen=True)
class Registration:
    device_guid: str
    org: str
    username: str
    registered_at: str


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
    answer = client.register(
        token,
        {
            **report,
            "device_guid": identity.guid,
            "hardware_id": identity.hardware_id,
            "username": username,
            "user_home": user_home,
        },
    )
    try:
        credential = str(answer["credential"])
        result = Registration(
            device_guid=str(answer["device_guid"]),
            org=str(answer["org"]),
            username=str(answer["username"]),
            registered_at=str(answer["registered_at"]),
        )
    except (KeyError, TypeError) as exc:
        raise TransientError("bad_answer", f"the registration answer lacks {exc}") from None
    write_atomic(credential_path, (credential + "\n").encode(), mode=0o600)
    return result


def load_credential(path: Path) -> str | None:
    try:
        value = path.read_text("utf-8").strip()
    except FileNotFoundError:
        return None
    return value or None


__all__ = ["Registration", "load_credential", "register"]
