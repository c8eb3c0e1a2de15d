"""Logging for support staff: `log/agent.log`, rotated by size, secrets redacted at the handler.

Each line: time with offset, level, the phase, and a sentence with key=value context.
Redaction happens in a filter on every handler, so a secret reaches no log file whatever
a later change writes: the token and the device credential are registered with
`Redactor.add` as soon as they are known, a user's password for the length of the sign-in
that carries it (then `Redactor.discard`, so the daemon does not keep it in memory).
"""

from __future__ import annotations

import datetime as dt
import logging
import logging.handlers
import sys
import threading
from pathlib import Path

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
        return True


class PhaseFilter(logging.Filter):
    """Stamps each record with the lifecycle phase the daemon is in."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "-"

    def filter(self, record: logging.LogRecord) -> bool:
        record.phase = self.phase
        return True


class _Formatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = dt.datetime.fromtimestamp(record.created).astimezone()
        return moment.isoformat(timespec="milliseconds")


FORMAT = "%(asctime)s %(levelname)-7s [%(phase)s] %(message)s"
redactor = Redactor()
phase_filter = PhaseFilter()


def setup(log_file: Path, level: str = "info", console: bool = False) -> logging.Logger:
    """Route the agent's logger to `log_file` (10 MB x 5), and to stderr when `console`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [
        logging.handlers.RotatingFileHandler(
            log_file, maxBytes=10 * 1024 * 1024, backupCount=5, encoding="utf-8"
        )
    ]
    if console:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.addFilter(phase_filter)
        handler.addFilter(redactor)
        handler.setFormatter(_Formatter(FORMAT))
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


def log_transition(before: State, after: State, event: Event) -> None:
    """One line per phase change and per failed attempt, with the next attempt's time."""
    logger = logging.getLogger(LOGGER)
    phase_filter.phase = after.phase.value
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
        )
    if isinstance(event, Failed):
        # The first failures are warnings; a run of them is an error worth a look.
        level = logging.WARNING if after.attempts <= 3 else logging.ERROR
        logger.log(
            level,
            "attempt failed: %s (code=%s, attempts=%d); next attempt at %s",
            event.message,
            event.code,
            after.attempts,
            when(after.next_attempt_at),
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
    "log_transition",
    "phase_filter",
    "redactor",
    "setup",
    "when",
]
