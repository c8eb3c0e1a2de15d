"""The device's identity: a GUID made once, bound to the machine it was made on.

A golden image cloned onto many laptops carries the same `state/identity`. Binding the
GUID to a digest of the machine's own identity (systemd's machine-id, the macOS platform
UUID, the Windows MachineGuid) lets each clone notice that the file is not its own and make
a fresh GUID, so clones never share a device record or a backup archive.

`state/identity.backup` is a second copy of the file, written with it. A damaged identity
is set aside and the copy restores it: a new GUID for the same machine would make a second
device on the authority (registration is idempotent by GUID only), orphaning the first with
its snapshots. Only when neither can be read does the machine become a new device.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import events, logs
from agent.errors import AgentError
from agent.state import StateDamaged, StateError, read_json, set_aside, write_json

log = logging.getLogger(logs.LOGGER)

IDENTITY_VERSION = 1
COPY_SUFFIX = ".backup"
LINUX_MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


@dataclass(frozen=True)
class Identity:
    guid: str
    hardware_id: str
    created_at: str


def _read_first(paths: tuple[str, ...]) -> str | None:
    for candidate in paths:
        try:
            value = Path(candidate).read_text("utf-8").strip()
        except OSError:
            continue
        if value:
            return value
    return None


def _platform_machine_id() -> str | None:
    if sys.platform == "darwin":
        out = subprocess.run(
            ["/usr/sbin/ioreg", "-rd1", "-c", "IOPlatformExpertDevice"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout
        for line in out.splitlines():
            if "IOPlatformUUID" in line:
                return line.split("=", 1)[1].strip().strip('"')
        return None
    if sys.platform == "win32":
        import winreg  # type: ignore[import-not-found,unused-ignore]

        key = winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SOFTWARE\Microsoft\Cryptography")
        value, _kind = winreg.QueryValueEx(key, "MachineGuid")
        return str(value)
    return _read_first(LINUX_MACHINE_ID_FILES)


def hardware_id(machine_id_file: str | None = None) -> str:
    """A digest of this machine's identity; the raw machine-id is not sent anywhere."""
    raw = _read_first((machine_id_file,)) if machine_id_file else _platform_machine_id()
    if not raw:
        where = machine_id_file or "the system's machine-id"
        raise AgentError(f"cannot read {where}: the device identity cannot be bound to it")
    return hashlib.sha256(f"holdfast-hardware:{raw}".encode()).hexdigest()


def copy_of(path: Path) -> Path:
    """Where the second copy of the identity file lives."""
    return path.with_name(path.name + COPY_SUFFIX)


def _read(path: Path) -> dict[str, Any] | None:
    body = read_json(path, IDENTITY_VERSION)
    if body is None:
        return None
    try:
        body["guid"] = str(uuid.UUID(str(body.get("guid"))))
    except ValueError:
        raise StateDamaged(path, "no device GUID") from None
    if not isinstance(body.get("hardware_id"), str):
        raise StateDamaged(path, "no hardware_id")
    return body


def _read_copy(path: Path) -> dict[str, Any] | None:
    try:
        return _read(copy_of(path))
    except StateError:
        return None  # the copy is only ever rewritten, never trusted when damaged


def load_or_create(path: Path, hardware: str, now: dt.datetime) -> tuple[Identity, str | None]:
    """The identity for this machine, and why a new one was made (None when it was kept).

    A missing or damaged file (the damaged one set aside) is restored from its copy when
    the copy is this machine's; another version stops the agent (StateError).
    """
    lost = None  # why the file itself could not be used
    try:
        body = _read(path)
    except StateDamaged as exc:
        aside = set_aside(path, now)
        body, lost = None, f"damaged ({exc.problem}; moved to {aside.name})"
    if body is None:
        lost = lost or "missing"
        body = _read_copy(path)
    if body is not None and body["hardware_id"] == hardware:
        identity = Identity(body["guid"], hardware, str(body.get("created_at", "")))
        if lost is not None:
            log.warning(
                "%s is %s: device identity %s restored from %s",
                path,
                lost,
                identity.guid,
                copy_of(path).name,
                extra=logs.event(events.LOCAL_ERROR, damaged=path.name),
            )
        if lost is not None or _read_copy(path) != body:
            _write(path, identity)  # the file restored, or its copy made or refreshed
        return identity, None
    if body is not None:
        reason = (
            f"the identity file belongs to other hardware (device {body['guid']}): "
            "a cloned disk image; this machine gets its own device"
        )
    elif lost == "missing":
        reason = "first start"
    else:
        log.warning(
            "%s is %s, and its copy cannot be read either",
            path,
            lost,
            extra=logs.event(events.LOCAL_ERROR, damaged=path.name),
        )
        reason = (
            "the identity file was damaged and no copy of it could be read; this machine "
            "registers as a new device (an administrator may delete the old one)"
        )
    identity = Identity(str(uuid.uuid4()), hardware, now.isoformat())
    _write(path, identity)
    return identity, reason


def renew(path: Path, hardware: str, now: dt.datetime) -> Identity:
    """A fresh GUID for this machine (the authority said the old one is another machine's)."""
    identity = Identity(str(uuid.uuid4()), hardware, now.isoformat())
    _write(path, identity)
    return identity


def _write(path: Path, identity: Identity) -> None:
    body = {
        "guid": identity.guid,
        "hardware_id": identity.hardware_id,
        "created_at": identity.created_at,
    }
    write_json(path, IDENTITY_VERSION, body, mode=0o644)
    write_json(copy_of(path), IDENTITY_VERSION, body, mode=0o644)


__all__ = ["Identity", "copy_of", "hardware_id", "load_or_create", "renew"]
