"""Atomic, versioned persistence of the agent's files.

Every file is written as: temp file in the same folder, fsync, `os.replace`, fsync of the
folder; a reader (or a crash) sees the old content or the new one, never half of either.
Every JSON state file carries a `version`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from agent.errors import AgentError


class StateError(AgentError):
    """A state file exists but cannot be used (damaged, or from a newer agent)."""


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` all at once, with permission bits `mode` from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_json(path: Path, version: int, body: dict[str, Any], mode: int = 0o600) -> None:
    payload = {"version": version, **body}
    write_atomic(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode(), mode)


def read_json(path: Path, version: int) -> dict[str, Any] | None:
    """The body of a versioned JSON file, or None when it does not exist."""
    try:
        raw = path.read_text("utf-8")
    except FileNotFoundError:
        return None
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise StateError(f"{path} is damaged ({exc}); move it aside to start over") from None
    if not isinstance(body, dict):
        raise StateError(f"{path} is damaged (not a JSON object); move it aside to start over")
    if body.get("version") != version:
        raise StateError(
            f"{path} has version {body.get('version')!r}; this agent reads version {version}"
        )
    return body


__all__ = ["StateError", "read_json", "write_atomic", "write_json"]
