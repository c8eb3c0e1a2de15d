"""One scheduled (or requested) backup as the daemon runs it: progress, logging, outcome."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent import logs
from agent.backup.engine import run_backup
from agent.backup.progress import PROGRESS_FILE, ProgressFile
from agent.errors import BackupCancelled
from agent.lifecycle_model import BackupDone
from agent.transport import AuthorityClient

log = logging.getLogger(logs.LOGGER)


def back_up_home(
    client: AuthorityClient,
    credential: str,
    home: str,
    settings: Mapping[str, Any],
    *,
    state_dir: Path,
    run_dir: Path,
    cancel: threading.Event,
) -> BackupDone | None:
    """The committed snapshot as a lifecycle event; None when a stop interrupted the run.

    Errors of the authority or of the device propagate: the daemon turns them into a failed
    attempt, retried on the schedule.
    """
    progress = ProgressFile(run_dir / PROGRESS_FILE)
    log.info("Starting backup of %s", home)
    try:
        result = run_backup(
            client,
            credential,
            Path(home),
            list(settings.get("exclude") or []),
            state_dir,
            progress=progress.update,
            cancel=cancel,
            security=str(settings.get("security", "standard")),
        )
    except BackupCancelled:
        # Not a failure: the agent is stopping; nothing was committed, and the next run
        # skips what already arrived.
        log.info("backup interrupted: the agent is stopping")
        return None
    finally:
        progress.clear()
    partial = f"; partial: {len(result.warnings)} files could not be read" if result.partial else ""
    log.info(
        "Completed backup: snapshot %s, %d files, %d bytes, %d new bytes sent%s",
        result.snapshot_id,
        result.files,
        result.bytes,
        result.new_bytes,
        partial,
    )
    for warning in result.warnings[:20]:
        log.warning("backup: %s", warning)
    return BackupDone(result.snapshot_id, result.finished_at, result.files, result.bytes)


__all__ = ["back_up_home"]
