"""One scheduled (or requested) backup as the daemon runs it: the policy's conditions
(battery, bandwidth), a low priority, progress, logging, outcome."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil

from agent import events, logs
from agent.backup.engine import run_backup
from agent.backup.progress import PROGRESS_FILE, ProgressFile
from agent.backup.throttle import UploadLimit, interruptible_sleep
from agent.errors import BackupCancelled, TransientError
from agent.lifecycle_model import BackupDone
from agent.transport import AuthorityClient

log = logging.getLogger(logs.LOGGER)

BACKUP_NICE = 10
# Best effort at its lowest level rather than the idle class: on a disk that is never idle
# (a build, a VM, a database) the idle class can starve a backup for good.
BACKUP_IO_LEVEL = 7
BatteryProbe = Callable[[], object]  # psutil.sensors_battery: a reading, or None without one
# psutil offers no battery reading on some systems at all: there, no battery.
_SENSORS_BATTERY: BatteryProbe = getattr(psutil, "sensors_battery", lambda: None)
_PRIORITY_ERRORS = (psutil.Error, OSError, ValueError)
_notices: set[str] = set()  # holds already logged, so a long hold is one line, not one a try


def back_up_home(
    client: AuthorityClient,
    credential: str,
    home: str,
    settings: Mapping[str, Any],
    *,
    state_dir: Path,
    run_dir: Path,
    cancel: threading.Event,
    battery: BatteryProbe = _SENSORS_BATTERY,
) -> BackupDone | None:
    """The committed snapshot as a lifecycle event; None when a stop interrupted the run.

    Errors of the authority or of the device propagate: the daemon turns them into a failed
    attempt, retried on the schedule. So does a hold of the policy (on battery): a
    TransientError that the status shows as the reason no backup ran.
    """
    if settings.get("pause_on_battery") is True and on_battery(battery):
        if "on_battery" not in _notices:
            _notices.add("on_battery")
            log.info(
                "backup held: the device runs on battery (policy pause_on_battery)",
                extra=logs.event(events.BACKUP_HELD),
            )
        raise TransientError(
            "on_battery",
            "the device runs on battery; the policy holds backups until it is plugged in",
        )
    _notices.discard("on_battery")
    # One sleep a stop cuts short, for the bandwidth limit's waits and for the waits between
    # a request's attempts alike.
    sleep = interruptible_sleep(cancel)
    limit = UploadLimit.from_policy(_kbps(settings.get("bandwidth_limit_kbps")), sleep=sleep)
    progress = ProgressFile(run_dir / PROGRESS_FILE)
    log.info("Starting backup of %s", home, extra=logs.event(events.BACKUP_STARTED))
    try:
        with low_priority():
            result = run_backup(
                client,
                credential,
                Path(home),
                list(settings.get("exclude") or []),
                state_dir,
                progress=progress.update,
                sleep=sleep,
                cancel=cancel,
                security=str(settings.get("security", "standard")),
                limit=limit,
            )
    except BackupCancelled:
        # Not a failure: the agent is stopping; nothing was committed, and the next run
        # skips what already arrived.
        log.info(
            "backup interrupted: the agent is stopping",
            extra=logs.event(events.BACKUP_INTERRUPTED),
        )
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
        extra=logs.event(events.BACKUP_COMPLETED),
    )
    for warning in result.warnings[:20]:
        log.warning("backup: %s", warning, extra=logs.event(events.FILE_SKIPPED))
    return BackupDone(result.snapshot_id, result.finished_at, result.files, result.bytes)


def on_battery(probe: BatteryProbe = _SENSORS_BATTERY) -> bool:
    """Whether the device runs on battery; a device without one, or one that cannot tell,
    is plugged in (a probe that fails must not stop backups for good)."""
    try:
        reading = probe()
    except (psutil.Error, OSError) as exc:
        log.debug("cannot read the battery state (%s); taking the device as plugged in", exc)
        return False
    return reading is not None and getattr(reading, "power_plugged", None) is False


def _kbps(value: object) -> int:
    try:
        return int(str(value or 0))
    except (TypeError, ValueError):
        log.warning("bandwidth_limit_kbps %r is not a number; uploading without a limit", value)
        return 0


@contextlib.contextmanager
def low_priority() -> Iterator[None]:
    """Run the block at a low CPU and I/O priority, restored afterwards.

    On Linux both are per thread: the calling thread is lowered, and the upload workers
    the run starts inherit it, while the daemon's control threads keep answering at their
    own priority. On macOS and Windows they are the whole process's. Never raised: an agent
    started lower already (a service's Nice=) stays there. Failing to change either only
    costs speed for others, so it is a debug line, never a failed backup.
    """
    undo: list[tuple[str, Callable[[], object]]] = []
    try:
        me = _backup_task()
    except _PRIORITY_ERRORS as exc:
        log.debug("backup priority left as is: %s", exc)
        me = None
    if me is not None:
        for what, lower in (("CPU", _lower_cpu), ("I/O", _lower_io)):
            try:
                restore = lower(me)
            except _PRIORITY_ERRORS as exc:
                log.debug("backup %s priority left as is: %s", what, exc)
                continue
            if restore is not None:
                undo.append((what, restore))
    try:
        yield
    finally:
        for what, restore in reversed(undo):
            try:
                restore()
            except _PRIORITY_ERRORS as exc:
                # Without CAP_SYS_NICE Linux lets a thread lower its nice, not raise it back.
                log.debug("backup %s priority not restored: %s", what, exc)


def _backup_task() -> psutil.Process:
    if sys.platform == "linux":
        # psutil.Process() would be the main thread only: Linux priorities are per thread.
        return psutil.Process(threading.get_native_id())
    return psutil.Process()


def _lower_cpu(me: psutil.Process) -> Callable[[], object] | None:
    before = me.nice()
    if sys.platform == "win32":
        # Priority classes are not ordered numbers: lower only from the normal class.
        if before != psutil.NORMAL_PRIORITY_CLASS:
            return None
        me.nice(psutil.BELOW_NORMAL_PRIORITY_CLASS)
    else:
        if before >= BACKUP_NICE:
            return None
        me.nice(BACKUP_NICE)
    return lambda: me.nice(before)


def _lower_io(me: psutil.Process) -> Callable[[], object] | None:
    if sys.platform == "linux":
        before = me.ionice()
        if before.ioclass == psutil.IOPRIO_CLASS_IDLE or (
            before.ioclass == psutil.IOPRIO_CLASS_BE and before.value >= BACKUP_IO_LEVEL
        ):
            return None
        me.ionice(psutil.IOPRIO_CLASS_BE, BACKUP_IO_LEVEL)
        return lambda: me.ionice(before.ioclass, before.value)
    if sys.platform == "win32":
        current = me.ionice()  # on Windows a level, not a (class, value) pair
        if current <= psutil.IOPRIO_LOW:
            return None
        me.ionice(psutil.IOPRIO_LOW)
        return lambda: me.ionice(current)
    # macOS: psutil offers no I/O priority (setiopolicy_np would be the way there).
    return None


__all__ = ["back_up_home", "low_priority", "on_battery"]
