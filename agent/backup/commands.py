"""`holdfast backup-now`, `snapshots` and `restore`: thin commands over the engine."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from agent.backup.progress import eta_seconds
from agent.backup.restore import list_snapshots, restore
from agent.control import call
from agent.device import registered_access
from agent.errors import AgentError, UsageError
from agent.paths import AgentPaths
from agent.status import collect

# Reading the status is a few small files; 0.1 s keeps a quick backup from waiting on it.
POLL_SECONDS = 0.1


def _clock(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    # mm:ss, with the hours in front once there are any: a first backup over a slow link
    # can take hours, which bare mm:ss would show as three-digit minutes.
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def progress_line(running: Mapping[str, Any]) -> str:
    """The one-line progress `backup-now` keeps rewriting: files, MB read (of the total
    once the scan has ended), the daemon's recent read rate and the ETA."""
    read = _number(running.get("read_bytes")) / 1e6
    total = running.get("total_bytes")
    amount = (
        f"{read:.1f} MB read / {_number(total) / 1e6:.1f} MB total"
        if isinstance(total, int | float)
        else f"{read:.1f} MB read"
    )
    eta = eta_seconds(running)
    return (
        f"\rbacking up: {_number(running.get('files'))} files, {amount}, "
        f"{_number(running.get('rate_bps')) / 1e6:.1f} MB/s, "
        f"ETA {'unknown' if eta is None else _clock(eta)}   "
    )


def _number(value: object) -> int | float:
    """A counter of the progress file, 0 when absent (a daemon of an older version)."""
    return value if isinstance(value, int | float) else 0


def backup_now(paths: AgentPaths, err: TextIO = sys.stderr) -> int:
    """Ask the daemon for a backup and wait until its snapshot is committed."""
    answer = call(paths.run, "backup-now")
    if not answer.get("accepted"):
        raise UsageError(
            f"no backup now: the device is in phase {answer.get('phase')}, not backing_up"
        )
    previous = answer.get("previous_backup")
    before = collect(paths)
    seen_running = False
    while True:
        time.sleep(POLL_SECONDS)
        status = collect(paths)
        if not status["daemon_running"]:
            raise AgentError("the agent stopped before the backup finished")
        if status["phase"] == "stopped":
            raise AgentError(f"the backup was interrupted: stopped by {status['stopped_by']}")
        last = status["last_backup"] or {}
        # A backup with nothing new may commit the same snapshot again: the finish time
        # tells this backup from the one before.
        if last and last != previous:
            err.write("\n")
            print(
                f"Backup complete: snapshot {last['snapshot_id']}, {last['files']} files, "
                f"{last['bytes'] / 1e6:.1f} MB"
            )
            return 0
        running = status.get("backup_running")
        if running:
            seen_running = True
            err.write(progress_line(running))
            err.flush()
        elif status["attempts"] > before["attempts"] and (seen_running or status["last_error"]):
            err.write("\n")
            raise AgentError(f"the backup failed: {status['last_error']}")


def snapshots(paths: AgentPaths, as_json: bool) -> int:
    client, credential = registered_access(paths)
    with client:
        found = list_snapshots(client, credential)
    if as_json:
        print(json.dumps([asdict(s) for s in found], indent=2))
    elif not found:
        print("No snapshots yet.")
    else:
        for s in found:
            print(f"{s.snapshot_id}  {s.created_at}  {s.files} files  {s.bytes / 1e6:.1f} MB")
    return 0


def restore_command(
    paths: AgentPaths, to: Path, snapshot_id: str | None, overwrite: bool, wanted: list[str]
) -> int:
    client, credential = registered_access(paths)
    with client:
        result = restore(
            client,
            credential,
            paths.state,
            to,
            snapshot_id=snapshot_id,
            paths=wanted,
            overwrite=overwrite,
        )
    print(
        f"Restored snapshot {result.snapshot_id} into {to}: {result.files} files, "
        f"{result.dirs} folders, {result.symlinks} links, {result.bytes / 1e6:.1f} MB"
    )
    if result.existing:
        print(
            f"{len(result.existing)} existing files left alone (use --overwrite), e.g. "
            + ", ".join(result.existing[:5])
        )
    for path, why in result.refused + result.failed:
        print(f"not restored: {path}: {why}", file=sys.stderr)
    return 0 if result.ok else 1


__all__ = ["backup_now", "progress_line", "restore_command", "snapshots"]
