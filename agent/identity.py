"""The device's identity: a GUID made once, bound to the machine it was made on.

A golden image cloned onto many laptops carries the same `state/identity`. Binding the
GUID to a digest of the machine's own identity (systemd's machine-id, the macOS platform
UUID, the Windows MachineGuid) lets each clone notice that the file is not its own and make
a fresh GUID, so clones never share a device record or a backup archive.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from agent.errors import AgentError
from agent.state import read_json, write_json

IDENTITY_VERSION = 1
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


def load_or_create(path: Path, hardware: str, now: dt.datetime) -> tuple[Identity, str | None]:
    """The identity for this machine, and why a new one was made (None when it was kept)."""
    body = read_json(path, IDENTITY_VERSION)
    if body is not None and body.get("hardware_id") == hardware and body.get("guid"):
        return Identity(str(body["guid"]), hardware, str(body.get("created_at", ""))), None
    reason = (
        "first start"
        if body is None
        else f"the identity file belongs to other hardware (device {body.get('guid')}): "
        "a cloned disk image; this machine gets its own device"
    )
    identity = Identity(str(uuid.uuid4()), hardware, now.isoformat())
    write_json(
        path,
        IDENTITY_VERSION,
        {"guid": identity.guid, "hardware_id": hardware, "created_at": identity.created_at},
        mode=0o644,
    )
    return identity, reason


def renew(path: Path, hardware: str, now: dt.datetime) -> Identity:
    """A fresh GUID for this machine (the authority said the old one is another machine's)."""
    identity = Identity(str(uuid.uuid4()), hardware, now.isoformat())
    write_json(
        path,
        IDENTITY_VERSION,
        {"guid": identity.guid, "hardware_id": hardware, "created_at": identity.created_at},
        mode=0o644,
    )
    return identity


__all__ = ["Identity", "hardware_id", "load_or_create", "renew"]
