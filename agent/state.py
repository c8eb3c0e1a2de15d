"""Atomic, versioned persistence of the agent's files.

Every file is written as: temp file in the same folder, fsync, `os.replace`, fsync of the
folder; a reader (or a crash) sees the old content or the new one, never half of either.
Every JSON state file carries a `version`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from agent.errors import AgentError
from agent.lifecycle import Phase, State, Step


class StateError(AgentError):
    """A state file exists but cannot be used (damaged, or from a newer agent)."""


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` all at once, with permission bits `mode` from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # not on Windows before Python 3.13; ACLs protect there
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable (where the OS can open a folder)."""
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
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


# The lifecycle's state on disk (state/state.json).

STATE_VERSION = 1
_TIMES = ("since", "next_attempt_at")


def save_state(path: Path, state: State) -> None:
    """Persist the lifecycle State after every transition."""
    body = dataclasses.asdict(state)
    for key in _TIMES:
        if body.get(key) is not None:
            body[key] = body[key].isoformat()
    write_json(path, STATE_VERSION, body, mode=0o644)


def load_state(path: Path) -> State:
    """The persisted lifecycle State, or a fresh one when there is none."""
    body = read_json(path, STATE_VERSION)
    if body is None:
        return State()
    body.pop("version", None)
    known = {f.name for f in dataclasses.fields(State)}
    values = {k: v for k, v in body.items() if k in known}
    try:
        for key in _TIMES:
            if values.get(key):
                values[key] = dt.datetime.fromisoformat(values[key])
        values["phase"] = Phase(values.get("phase", Phase.UNCONFIGURED))
        values["step"] = Step(values.get("step", Step.IDLE))
        if values.get("resume_phase"):
            values["resume_phase"] = Phase(values["resume_phase"])
        return State(**values)
    except (TypeError, ValueError) as exc:
        raise StateError(f"{path} is damaged ({exc}); move it aside to start over") from None


__all__ = [
    "STATE_VERSION",
    "StateError",
    "fsync_folder",
    "load_state",
    "read_json",
    "save_state",
    "write_atomic",
    "write_json",
]
