"""The backup master key: made once per device, kept in `state/backup.key`, escrowed.

The master key never encrypts anything itself: two subkeys are derived from it with
HKDF-SHA256, one to name chunks (a keyed hash, so the authority cannot test whether it
holds a known file) and one to encrypt them (docs/backup-design.md, "Keys").
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent import logs
from agent.backup.retry import Retrier
from agent.errors import BackupError
from agent.state import StateError, read_json, write_json
from agent.transport import AuthorityClient

log = logging.getLogger(logs.LOGGER)

KEY_FILE = "backup.key"
KEY_VERSION = 1
KEY_BYTES = 32


@dataclass(frozen=True)
class Subkeys:
    """The two keys a backup works with; derived, never stored."""

    id_key: bytes
    encryption_key: bytes

    @classmethod
    def from_master(cls, master: bytes) -> Subkeys:
        return cls(_hkdf(master, b"holdfast chunk id"), _hkdf(master, b"holdfast encryption"))


def _hkdf(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


@dataclass(frozen=True)
class MasterKey:
    """The device's master key and whether the authority holds a copy of it."""

    secret: bytes
    escrowed: bool = False

    @classmethod
    def new(cls) -> MasterKey:
        return cls(os.urandom(KEY_BYTES))

    @property
    def b64(self) -> str:
        return base64.b64encode(self.secret).decode("ascii")


def decode_key(text: str, where: str) -> bytes:
    try:
        secret = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        secret = b""
    if len(secret) != KEY_BYTES:
        raise BackupError(f"the backup key from {where} is malformed")
    return secret


def load_master_key(state_dir: Path) -> MasterKey | None:
    """The key kept in `state_dir`, or None when this device has none yet."""
    path = state_dir / KEY_FILE
    try:
        body = read_json(path, KEY_VERSION)
    except StateError as exc:
        # Not moved aside automatically: a new key would orphan every snapshot made so far.
        raise BackupError(str(exc)) from None
    if body is None:
        return None
    secret = decode_key(str(body.get("key", "")), str(path))
    return MasterKey(secret, bool(body.get("escrowed", False)))


def save_master_key(state_dir: Path, key: MasterKey) -> None:
    """Write the key file atomically, 0600 from its first byte."""
    write_json(
        state_dir / KEY_FILE,
        KEY_VERSION,
        {
            "key": key.b64,
            "escrowed": key.escrowed,
            "saved_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
        mode=0o600,
    )


def ensure_key(
    client: AuthorityClient, credential: str, state_dir: Path, retry: Retrier
) -> Subkeys:
    """The backup subkeys, making and escrowing the master key on the first backup.

    A device whose state folder was lost but whose identity survived gets its escrowed key
    back instead of a new one, so its earlier snapshots stay readable and deduplicate.
    Escrow happens before any data leaves: a snapshot the organization cannot restore after
    losing the device is what `security: standard` promises not to make.
    """
    key = load_master_key(state_dir)
    if key is None:
        escrowed = retry(lambda: client.get_key(credential))
        if escrowed is not None:
            key = MasterKey(decode_key(escrowed, "the authority"), escrowed=True)
            log.info("backup key recovered from the authority's escrow")
        else:
            key = MasterKey.new()
            log.info("backup key created for this device")
        save_master_key(state_dir, key)
    if not key.escrowed:
        secret = key.b64
        retry(lambda: client.put_key(credential, secret))
        key = MasterKey(key.secret, escrowed=True)
        save_master_key(state_dir, key)
        log.info("backup key escrowed with the authority")
    return Subkeys.from_master(key.secret)


def restore_key(
    client: AuthorityClient, credential: str, state_dir: Path, retry: Retrier
) -> Subkeys:
    """The subkeys for a restore: the local key, else the escrowed one (then kept)."""
    key = load_master_key(state_dir)
    if key is None:
        escrowed = retry(lambda: client.get_key(credential))
        if escrowed is None:
            raise BackupError(
                "this device has no backup key and the authority holds none for it: "
                "nothing can be restored here"
            )
        key = MasterKey(decode_key(escrowed, "the authority"), escrowed=True)
        save_master_key(state_dir, key)
    return Subkeys.from_master(key.secret)


__all__ = [
    "KEY_FILE",
    "MasterKey",
    "Subkeys",
    "ensure_key",
    "load_master_key",
    "restore_key",
    "save_master_key",
]
