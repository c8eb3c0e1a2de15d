"""Atomic, versioned persistence of the agent's files.

Every file is written as: temp file in the same folder, fsync, `os.replace`, fsync of the
folder; a reader (or a crash) sees the old content or the new one, never half of either.
Every JSON state file carries a `version`.

A file that is there but not what an agent wrote (truncated, corrupted, edited by hand) is
StateDamaged. The daemon sets such a file aside (`NAME.damaged-<UTC time>`, kept for
support) and goes on from what it can still trust; a file of another version is not
damaged, and stops the agent instead (a downgrade must not throw a newer agent's state away).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from agent import events, logs
from agent.errors import AgentError
from agent.lifecycle import Phase, State, Step

log = logging.getLogger(logs.LOGGER)
T = TypeVar("T")


class StateError(AgentError):
    """A state file exists but cannot be used (damaged, or from a newer agent)."""


class StateDamaged(StateError):
    """A state file that is not what an agent wrote: truncated, corrupted, edited."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path} is damaged ({problem}); move it aside to start over")
        self.path = path
        self.problem = problem


def sweep_temporaries(folder: Path) -> list[str]:
    """Remove what `write_atomic` left in `folder` when its process was killed mid-write.

    Only the daemon calls this, at its start, once it owns the folders (the pid file): no
    write of another process can be in flight. A leftover may be a copy of a secret (the
    backup key, the credential), so it does not stay. The names removed.
    """
    removed: list[str] = []
    for leftover in folder.glob(".*.tmp"):
        try:
            leftover.unlink()
        except FileNotFoundError:
            continue
        removed.append(leftover.name)
    return removed


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
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a failed write() names no file; say which one
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
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        body = json.loads(raw.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError included: corrupted bytes
        raise StateDamaged(path, _short(exc)) from None
    if not isinstance(body, dict):
        raise StateDamaged(path, "not a JSON object")
    found = body.get("version")
    if not isinstance(found, int) or isinstance(found, bool):
        raise StateDamaged(path, "no version")
    if found != version:
        raise StateError(f"{path} has version {found!r}; this agent reads version {version}")
    return body


def set_aside(path: Path, now: dt.datetime) -> Path:
    """Move a damaged file out of the way, kept beside it for support; where it went."""
    stamp = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    os.replace(path, aside)
    fsync_folder(path.parent)
    return aside


def recover(load: Callable[[Path], T], path: Path, fallback: T, now: dt.datetime, then: str) -> T:
    """What `load` reads from `path`; a damaged file is set aside, logged, and `fallback`
    is used instead. `then` tells support what the agent does without the file."""
    try:
        return load(path)
    except StateDamaged as exc:
        aside = set_aside(path, now)
        log.warning(
            "%s is damaged (%s): moved it to %s; %s",
            path,
            exc.problem,
            aside.name,
            then,
            extra=logs.event(events.LOCAL_ERROR, damaged=path.name),
        )
        return fallback


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
        _check_types(values)
        for key in _TIMES:
            if values.get(key):
                values[key] = dt.datetime.fromisoformat(values[key])
                if values[key].tzinfo is None:
                    raise ValueError(f"{key} has no time zone")
        values["phase"] = Phase(values.get("phase", Phase.UNCONFIGURED))
        values["step"] = Step(values.get("step", Step.IDLE))
        if values.get("resume_phase"):
            values["resume_phase"] = Phase(values["resume_phase"])
        return State(**values)
    except (TypeError, ValueError) as exc:
        raise StateDamaged(path, _short(exc)) from None


_TEXTS = (
    "since",
    "next_attempt_at",
    "last_error",
    "last_error_code",
    "resume_phase",
    "stopped_by",
    "org",
    "registration",
    "username",
    "user_home",
    "registered_at",
)


def _check_types(values: dict[str, Any]) -> None:
    """Values of the wrong type would surface later, mid-attempt, as a crash: refuse now."""
    for key in ("phase", "step"):
        if key in values and not isinstance(values[key], str):
            raise TypeError(f"{key} is not a string")
    for key in _TEXTS:
        if values.get(key) is not None and not isinstance(values[key], str):
            raise TypeError(f"{key} is not a string or null")
    attempts = values.get("attempts", 0)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
        raise TypeError("attempts is not a count")
    if values.get("last_backup") is not None and not isinstance(values["last_backup"], dict):
        raise TypeError("last_backup is not an object or null")
    facts = values.get("facts", {})
    if not isinstance(facts, dict):
        raise TypeError("facts is not an object")
    if facts.get("settings") is not None and not isinstance(facts["settings"], dict):
        raise TypeError("facts.settings is not an object")
    pins = facts.get("pins", [])
    if not isinstance(pins, list) or not all(isinstance(p, str) for p in pins):
        raise TypeError("facts.pins is not a list of fingerprints")


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:197] + "..."


__all__ = [
    "STATE_VERSION",
    "StateDamaged",
    "StateError",
    "fsync_folder",
    "load_state",
    "read_json",
    "recover",
    "save_state",
    "set_aside",
    "sweep_temporaries",
    "write_atomic",
    "write_json",
]
