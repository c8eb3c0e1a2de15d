"""Logging for support staff: `log/agent.log`, rotated by size, secrets redacted at the handler.

Each line: time with offset, level, a stable event ID (agent/events.py), the phase, and a
sentence with key=value context:

    2026-12-04T09:00:01.250+01:00 WARNING HF2101 [awaiting_policy] attempt failed: cannot
    reach the authority at https://...: Connection refused; next attempt at 09:05:01+01:00
    code=connect_failed attempts=1

`log_format: json` in agent.yaml writes the same as one JSON object per line, for log
shippers. Lines whose event is marked `history` also go to `log/history.log`, the short
summary a user or a first-line supporter reads (started, policy found, registered,
backups, stops, recoveries).
Redaction happens in a filter on every handler, so a secret reaches no log file whatever
a later change writes: the token and the device credential are registered with
`Redactor.add` as soon as they are known, a user's password for the length of the sign-in
that carries it (then `Redactor.discard`, so the daemon does not keep it in memory).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
import sys
import threading
from pathlib import Path
from typing import Any

from agent import events
from agent.lifecycle import Event, Failed, State

LOGGER = "holdfast"
REDACTED = "[redacted]"


class Redactor(logging.Filter):
    """Replaces every registered secret in a record's final message."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 6:
            with self._lock:
                self._secrets.add(secret)

    def discard(self, secret: str | None) -> None:
        """Forget a secret that was only needed for a while (a password during a sign-in)."""
        with self._lock:
            self._secrets.discard(secret or "")

    def scrub(self, text: str) -> str:
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = self.scrub(message)
        record.args = None
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        context = getattr(record, "context", None)
        if context:
            # Numbers stay numbers (the JSON mode keeps their type); anything else is
            # written as text, so it is scrubbed as text.
            record.context = {
                k: v if isinstance(v, int | float | None) else self.scrub(str(v))
                for k, v in context.items()
            }
        return True


class PhaseFilter(logging.Filter):
    """Stamps each record with the lifecycle phase the daemon is in, and its event ID."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "-"

    def filter(self, record: logging.LogRecord) -> bool:
        record.phase = self.phase
        if not getattr(record, "event", None):
            record.event = events.for_module(record.module, record.pathname)
        return True


def event(event_id: str, **context: object) -> dict[str, Any]:
    """`extra=` for a log call: its event ID and key=value context, e.g.
    `log.info("policy found", extra=logs.event(events.POLICY_FOUND, org="Eng"))`."""
    return {"event": event_id, "context": context}


# The same, under a name that `log_transition`'s `event` argument does not hide.
event_extra = event


def _local_time(record: logging.LogRecord) -> str:
    return dt.datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")


class _Formatter(logging.Formatter):
    """The text line; the record's context follows the sentence as key=value."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _local_time(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        context = getattr(record, "context", None)
        if context:
            line += " " + " ".join(f"{k}={_value(v)}" for k, v in context.items())
        return line


def _value(value: object) -> str:
    text = str(value)
    # Quoted when it has spaces, so `key=value` pairs stay easy to cut apart.
    return json.dumps(text, ensure_ascii=False) if not text or " " in text else text


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, event, phase, message, then the context."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": _local_time(record),
            "level": record.levelname,
            "event": getattr(record, "event", ""),
            "phase": getattr(record, "phase", "-"),
            "message": record.getMessage(),
        }
        for key, value in (getattr(record, "context", None) or {}).items():
            document.setdefault(key, value)
        if record.exc_text:
            document["exception"] = record.exc_text
        return json.dumps(document, ensure_ascii=False, default=str)


class _HistoryFilter(logging.Filter):
    """The lines for history.log: events marked so in the catalogue, or by the caller."""

    def filter(self, record: logging.LogRecord) -> bool:
        marked = getattr(record, "history", None)
        if marked is not None:
            return bool(marked)
        info = events.describe(getattr(record, "event", ""))
        return info is not None and info.history


FORMAT = "%(asctime)s %(levelname)-7s %(event)s [%(phase)s] %(message)s"
HISTORY_FORMAT = "%(asctime)s %(message)s"
redactor = Redactor()
phase_filter = PhaseFilter()


def setup(
    log_file: Path,
    level: str = "info",
    console: bool = False,
    *,
    log_format: str = "text",
    history_file: Path | None = None,
    max_bytes: int = 10 * 1024 * 1024,
    backups: int = 5,
) -> logging.Logger:
    """Route the agent's logger to `log_file` (10 MB x 5 by default), the history lines to
    `history_file` (1 MB x 3) when given, and to stderr when `console`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    main = logging.handlers.RotatingFileHandler(
        log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
    )
    main.setFormatter(_JsonFormatter() if log_format == "json" else _Formatter(FORMAT))
    handlers: list[logging.Handler] = [main]
    if history_file is not None:
        history = logging.handlers.RotatingFileHandler(
            history_file, maxBytes=1024 * 1024, backupCount=3, encoding="utf-8"
        )
        history.addFilter(_HistoryFilter())
        history.setFormatter(_Formatter(HISTORY_FORMAT))
        handlers.append(history)
    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(_Formatter(FORMAT))
        handlers.append(stream)
    for handler in handlers:
        # Before the formatters run: every handler writes the scrubbed record.
        handler.addFilter(phase_filter)
        handler.addFilter(redactor)
    logger = logging.getLogger(LOGGER)
    for old in logger.handlers:
        old.close()
    logger.handlers[:] = handlers
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


def when(moment: dt.datetime | None) -> str:
    """A moment as support staff read it in the log: local time with its offset."""
    return moment.astimezone().isoformat(timespec="seconds") if moment else "-"


class _Streak:
    """The failures in a row the log has seen, to collapse identical ones."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.first_at: dt.datetime | None = None
        self.reason: tuple[str, str] | None = None


# Failures in a row logged one by one; after that, identical ones are collapsed into a
# "still failing" line on the 4th, 8th, 16th, ... attempt (the others at debug level).
SHOWN_FAILURES = 3
_streak = _Streak()


def log_transition(
    before: State, after: State, event: Event, now: dt.datetime | None = None
) -> None:
    """One line per phase change and per failed attempt, with the next attempt's time;
    repeated identical failures collapsed, and a line when attempts succeed again."""
    logger = logging.getLogger(LOGGER)
    phase_filter.phase = after.phase.value
    moment = now or dt.datetime.now(dt.UTC)
    if isinstance(event, Failed):
        _log_failure(logger, after, event, moment)
    elif _streak.count and (after.attempts == 0 or before.phase != after.phase):
        logger.info(
            "recovered after %d failed attempts since %s (last: %s)",
            _streak.count,
            when(_streak.first_at),
            _streak.reason[1] if _streak.reason else "-",
            extra=event_extra(events.RECOVERED, failures=_streak.count),
        )
        _streak.reset()
    if before.phase != after.phase:
        upcoming = (
            f"; next attempt at {when(after.next_attempt_at)}" if after.next_attempt_at else ""
        )
        logger.info(
            "phase %s -> %s (%s)%s",
            before.phase.value,
            after.phase.value,
            type(event).__name__,
            upcoming,
            extra=event_extra(events.PHASE_CHANGED),
        )


def _log_failure(logger: logging.Logger, after: State, event: Failed, moment: dt.datetime) -> None:
    reason = (event.code, event.message)
    if reason != _streak.reason:
        _streak.count, _streak.reason, _streak.first_at = 0, reason, moment
    _streak.count += 1
    count = _streak.count
    context = {"code": event.code, "attempts": after.attempts}
    event_id = events.for_failure(event.code, event.message)
    if event_id == events.ATTEMPT_FAILED and after.phase.value == "backing_up":
        event_id = events.BACKUP_FAILED
    if count <= SHOWN_FAILURES:
        extra = event_extra(event_id, **context)
        extra["history"] = count == 1  # the summary tells the first failure of a streak
        logger.log(
            logging.WARNING,
            "attempt failed: %s; next attempt at %s",
            event.message,
            when(after.next_attempt_at),
            extra=extra,
        )
        return
    collapsed = count & (count - 1) == 0  # a power of two: 4, 8, 16, ...
    logger.log(
        logging.ERROR if collapsed else logging.DEBUG,
        "still failing: same reason, %d attempts since %s: %s; next attempt at %s",
        count,
        when(_streak.first_at),
        event.message,
        when(after.next_attempt_at),
        extra=event_extra(events.STILL_FAILING, **context, first=event_id),
    )


def close() -> None:
    logger = logging.getLogger(LOGGER)
    for handler in logger.handlers:
        handler.close()
    logger.handlers[:] = []


__all__ = [
    "LOGGER",
    "REDACTED",
    "Redactor",
    "close",
    "event",
    "log_transition",
    "phase_filter",
    "redactor",
    "setup",
    "when",
]
