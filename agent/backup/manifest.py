"""The manifest: a snapshot's list of entries, and the checks a restore puts it through.

    {"version": 1, "root": "/home/jdoe", "created_at": iso,
     "entries": [{"path", "type", "mode", "mtime_ns", "size", "chunks", "target"}]}

A manifest arrives authenticated (it is a blob), but a restore still treats it as hostile
input: a bug, an older agent or a stolen key must not make a restore write outside `--to`.
Every entry is checked on its own; a bad one is refused (and reported), the others go on.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from agent.backup.scanner import Entry, Kind
from agent.errors import BackupError

MANIFEST_VERSION = 1
KINDS: tuple[Kind, ...] = ("file", "dir", "symlink")
_CHUNK_ID = re.compile(r"[0-9a-f]{64}")
# Where a backslash or a colon separates paths, a name holding one could climb out.
_FORBIDDEN = "\\:" if os.name == "nt" else ""


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    kind: Kind
    mode: int
    mtime_ns: int
    size: int = 0
    chunks: tuple[str, ...] = ()
    target: str | None = None

    @property
    def parts(self) -> list[str]:
        return self.path.split("/")


@dataclass(frozen=True)
class Manifest:
    root: str
    created_at: str
    entries: list[ManifestEntry]
    refused: list[tuple[str, str]]  # (the entry's path as given, why)


def entry_document(entry: Entry, size: int = 0, chunks: Sequence[str] = ()) -> dict[str, Any]:
    """The manifest form of a scanned entry; files carry their size and chunk ids."""
    doc: dict[str, Any] = {
        "path": entry.path,
        "type": entry.kind,
        "mode": entry.mode,
        "mtime_ns": entry.mtime_ns,
    }
    if entry.kind == "file":
        doc["size"] = size
        doc["chunks"] = list(chunks)
    if entry.kind == "symlink":
        doc["target"] = entry.target
    return doc


def encode(root: str, created_at: str, entries: Sequence[dict[str, Any]]) -> bytes:
    # ensure_ascii: a name that is not UTF-8 (kept by Python as surrogate escapes) survives
    # as \\udcXX escapes and comes back as the same bytes on restore.
    document = {
        "version": MANIFEST_VERSION,
        "root": root,
        "created_at": created_at,
        "entries": list(entries),
    }
    return json.dumps(document, separators=(",", ":")).encode("ascii")


def path_problem(path: object) -> str | None:
    """Why `path` may not be restored, or None when it is a plain relative path."""
    if not isinstance(path, str) or not path:
        return "the path is empty or not text"
    if "\x00" in path:
        return "the path holds a NUL byte"
    if path.startswith("/") or any(c in path for c in _FORBIDDEN):
        return "the path is absolute"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return "the path climbs out or has an empty part"
    return None


def _entry(raw: object) -> ManifestEntry:
    """One validated entry, or ValueError saying what is wrong with it."""
    if not isinstance(raw, dict):
        raise ValueError("the entry is not an object")
    doc = cast(dict[str, Any], raw)
    problem = path_problem(doc.get("path"))
    if problem:
        raise ValueError(problem)
    kind = doc.get("type")
    if kind not in KINDS:
        raise ValueError(f"unknown type {kind!r}")
    ints = {k: doc.get(k, 0) for k in ("mode", "mtime_ns", "size")}
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints.values()):
        raise ValueError("mode, mtime_ns or size is not an integer")
    if not 0 <= ints["mode"] <= 0o7777 or ints["size"] < 0:
        raise ValueError("mode or size is out of range")
    chunks = doc.get("chunks", [])
    if not isinstance(chunks, list) or not all(
        isinstance(c, str) and _CHUNK_ID.fullmatch(c) for c in chunks
    ):
        raise ValueError("the chunk list is malformed")
    target = doc.get("target")
    if kind == "symlink" and (not isinstance(target, str) or not target or "\x00" in target):
        raise ValueError("the link target is malformed")
    return ManifestEntry(
        path=doc["path"],
        kind=cast(Kind, kind),
        mode=ints["mode"],
        mtime_ns=ints["mtime_ns"],
        size=ints["size"],
        chunks=tuple(chunks) if kind == "file" else (),
        target=target if kind == "symlink" else None,
    )


def decode(data: bytes) -> Manifest:
    """The manifest's entries, with the refused ones set apart; BackupError if unreadable."""
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise BackupError(f"the snapshot's manifest is not valid JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("version") != MANIFEST_VERSION:
        raise BackupError("the snapshot's manifest has an unknown version")
    raw_entries = document.get("entries")
    if not isinstance(raw_entries, list):
        raise BackupError("the snapshot's manifest has no entry list")
    entries: list[ManifestEntry] = []
    refused: list[tuple[str, str]] = []
    for raw in raw_entries:
        try:
            entries.append(_entry(raw))
        except ValueError as exc:
            path = raw.get("path") if isinstance(raw, dict) else None
            refused.append((repr(path) if not isinstance(path, str) else path, str(exc)))
    return Manifest(
        root=str(document.get("root", "")),
        created_at=str(document.get("created_at", "")),
        entries=entries,
        refused=refused,
    )


__all__ = ["Manifest", "ManifestEntry", "decode", "encode", "entry_document", "path_problem"]
