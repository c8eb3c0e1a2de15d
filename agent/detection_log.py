"""log/detection.log, for support staff: a `start` and an `end` line per detection run.

Each line is a timestamp, the event and key=value fields, a run's lines tied together by a
random `run` id. The file rotates at DETECTION_LOG_BYTES, keeping three old files; a failure to
write it is a warning in agent.log, never a failed detection.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import logging.handlers
import re
import secrets
from pathlib import Path

from agent import logs
from agent.errors import DetectionError
from agent.sandbox import Plan, ScriptRun

log = logging.getLogger(logs.LOGGER)

STDERR_LOG_CHARS = 2048
DETECTION_LOG_BYTES = 1024 * 1024

_BARE_VALUE = re.compile(r"[A-Za-z0-9_.,:/@+()=-]+")


class Journal:
    """The detection.log lines of one run (none when `path` is None), key=value.

    It goes through the agent's redactor although the script's environment holds no secret:
    the file quotes what the script printed, and that is not the agent's to trust.
    """

    def __init__(self, path: Path | None, filename: str, sha256: str) -> None:
        self.path = path
        self.head = {
            "run": secrets.token_hex(4),  # ties a run's lines together
            "script": filename,
            "sha256": sha256[:12],
        }

    def start(self, chosen: Plan, timeout_s: float) -> None:
        """The run is about to start: who runs it, in which isolation, for how long at most."""
        account = chosen.account
        who = account.name if account.switch else f"{account.name} (the agent's own: not root)"
        self._write(
            "start", account=who, isolation=chosen.isolation.value, timeout=f"{timeout_s:g}s"
        )

    def end(
        self,
        run: ScriptRun | None,
        *,
        username: str | None = None,
        home: str | None = None,
        error: DetectionError | None = None,
    ) -> None:
        """The run's outcome: `error`, else the user found (`username`), else no user."""
        fields: dict[str, str] = {}
        if run is not None:
            fields.update(duration=f"{run.duration_s:.2f}s", exit=str(run.exit_code))
        if error is not None:
            fields.update(result=error.code, reason=error.message)
        elif username is not None:
            fields.update(result="user", username=username, home=str(home))
        else:
            fields["result"] = "no_user"
        if run is not None and run.stderr.strip():
            fields["stderr"] = run.stderr.strip()[-STDERR_LOG_CHARS:]
        self._write("end", **fields)

    def _write(self, event: str, **fields: str) -> None:
        if self.path is None:
            return
        moment = dt.datetime.now().astimezone().isoformat(timespec="milliseconds")
        text = " ".join(f"{key}={_quote(value)}" for key, value in {**self.head, **fields}.items())
        record = logging.makeLogRecord({"msg": f"{moment} {event} {text}", "levelno": logging.INFO})
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.RotatingFileHandler(
                self.path, maxBytes=DETECTION_LOG_BYTES, backupCount=3, encoding="utf-8"
            )
        except OSError as exc:
            log.warning("could not write %s: %s", self.path, exc)
            return
        with contextlib.closing(handler):
            handler.addFilter(logs.redactor)
            handler.handle(record)


def _quote(value: str) -> str:
    """A value as one line of text: bare when plain, else repr(), which escapes controls."""
    return value if _BARE_VALUE.fullmatch(value) else repr(value)


__all__ = ["DETECTION_LOG_BYTES", "STDERR_LOG_CHARS", "Journal"]
