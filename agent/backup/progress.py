"""A running backup's progress in `run/progress.json`, for `holdfast backup-now` and the tray.

Written at most every half second from the backup's own thread, atomically, world-readable
(it says how far a backup is, nothing more), and removed when the run ends.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agent.backup.engine import BackupProgress
from agent.state import write_atomic

PROGRESS_FILE = "progress.json"
INTERVAL_SECONDS = 0.5


class ProgressFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, progress: BackupProgress) -> None:
        now = time.monotonic()
        if now - self._last < INTERVAL_SECONDS:
            return
        self._last = now
        body = {**asdict(progress), "elapsed_s": round(now - self.started, 1)}
        with contextlib.suppress(OSError):  # a courtesy: the backup goes on without it
            write_atomic(self.path, json.dumps(body).encode(), mode=0o644)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def read_progress(path: Path) -> dict[str, Any] | None:
    try:
        body = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


__all__ = ["PROGRESS_FILE", "ProgressFile", "read_progress"]
