"""A running backup's progress in `run/progress.json`, for `holdfast backup-now` and the tray.

Written at most every half second from the backup's own thread, atomically, world-readable
(it says how far a backup is, nothing more), and removed when the run ends.

Besides the engine's counters it carries `total_bytes` (the bytes this run reads, or null
while the scan is still going: the scan streams into the reading, so no earlier total is
honest) and `rate_bps`, the reading rate over the last `RATE_WINDOW_SECONDS`: recent
rather than since the start, because a run first skips unchanged files at no read rate at
all, and a whole-run average would make the ETA of the rest far too long.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.state import write_atomic

if TYPE_CHECKING:  # the engine is heavy; `holdfast status` reads progress without it
    from agent.backup.engine import BackupProgress

PROGRESS_FILE = "progress.json"
INTERVAL_SECONDS = 0.5
RATE_WINDOW_SECONDS = 10.0


class ProgressFile:
    """Turns the engine's progress reports into the progress file, with a rate."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self.started = clock()
        self._last: float | None = None
        self._samples: deque[tuple[float, int]] = deque()  # (time, read_bytes)

    def update(self, progress: BackupProgress) -> None:
        now = self.clock()
        if self._last is not None and now - self._last < INTERVAL_SECONDS:
            return
        self._last = now
        body: dict[str, Any] = asdict(progress)
        body["total_bytes"] = body.pop("to_read_bytes")
        body["rate_bps"] = self._rate(now, progress.read_bytes)
        body["elapsed_s"] = round(now - self.started, 1)
        with contextlib.suppress(OSError):  # a courtesy: the backup goes on without it
            write_atomic(self.path, json.dumps(body).encode(), mode=0o644)

    def _rate(self, now: float, read_bytes: int) -> float:
        if not self._samples:
            # From the start of the run, not of the first report, which comes after a batch.
            self._samples.append((self.started, 0))
        self._samples.append((now, read_bytes))
        # The oldest sample kept is the last one at least a window old: the rate spans a
        # full window once the run is that old.
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_SECONDS:
            self._samples.popleft()
        then, before = self._samples[0]
        return round((read_bytes - before) / (now - then), 1) if now > then else 0.0

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def read_progress(path: Path) -> dict[str, Any] | None:
    try:
        body = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def eta_seconds(progress: Mapping[str, Any]) -> float | None:
    """Seconds until the run has read everything, or None when that cannot be told yet
    (scan not over, nothing read lately). Uploads still queued then are not counted: the
    uploader keeps them to a few packs behind the reading."""
    total, read, rate = (progress.get(k) for k in ("total_bytes", "read_bytes", "rate_bps"))
    if not isinstance(total, int | float) or not isinstance(read, int | float):
        return None
    # More read than the scan counted: a file grew while it was read, or a file read again.
    left = max(0.0, total - read)
    if left == 0:
        return 0.0
    if not isinstance(rate, int | float) or rate <= 0:
        return None
    return left / rate


__all__ = ["PROGRESS_FILE", "ProgressFile", "eta_seconds", "read_progress"]
