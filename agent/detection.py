"""User detection: the policy's script, run in the sandbox, and the user it prints.

    detect(script) = verify sha256 ─▶ sandbox.plan ─▶ scratch folder ─▶ sandbox_posix.run
                     (or sandbox_windows.run) ─▶ parse_output ─▶ DetectionResult,
                     each run recorded in detection.log (agent.detection_log)

This module is the policy side: what the policy's script object must hold, that its bytes
match the policy's SHA-256 before anything runs, which interpreter starts it and what its
output means. How a run is contained (account, rlimits, namespaces, killing) is agent.sandbox's
and its POSIX and Windows halves'.

A DetectionError's `code` is one of: policy_invalid, script_hash_mismatch, interpreter_missing,
account_unusable, sandbox_unavailable, start_failed, timeout, too_much_output, stopped,
script_failed, incomplete_output, invalid_username, invalid_home.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

from agent import logs, sandbox_posix, sandbox_windows
from agent.detection_log import Journal
from agent.errors import DetectionError
from agent.sandbox import (
    DEFAULT_OUTPUT_CAP,
    SCRIPT_PATH,
    Account,
    Isolation,
    SandboxSettings,
    ScriptRun,
    plan,
)

log = logging.getLogger(logs.LOGGER)

MAX_USERNAME_CHARS = 256
MAX_HOME_CHARS = 4096

_USERNAME_KEYS = ("C42_USERNAME", "AGENT_USERNAME")
_HOME_KEYS = ("C42_USER_HOME", "AGENT_USER_HOME")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_STDERR_LINE_CHARS = 200
_SCRATCH_PREFIX = "holdfast-detect-"
_STALE_SCRATCH_S = 900  # three times the longest detection timeout (300 s)


@dataclass(frozen=True)
class DetectionScript:
    """The detection script of the policy, as the authority sent it for this OS."""

    os: str
    filename: str
    interpreter: tuple[str, ...]
    script: str
    sha256: str

    @classmethod
    def from_policy(cls, detection: Mapping[str, Any]) -> DetectionScript:
        """Read the policy's `detection` object; anything malformed is `policy_invalid`."""

        def bad(problem: str) -> DetectionError:
            return DetectionError(
                "policy_invalid", f"the policy's detection script is malformed: {problem}"
            )

        if not isinstance(detection, Mapping):
            raise bad("it is not an object")
        for key in ("os", "filename", "script", "sha256"):
            if not isinstance(detection.get(key), str):
                raise bad(f"{key!r} is missing or not a string")
        filename: str = detection["filename"]
        if filename in ("", ".", "..") or any(c in filename for c in "/\\\0"):
            raise bad(f"the file name {filename!r} is not a plain file name")
        interpreter = detection.get("interpreter")
        if (
            not isinstance(interpreter, list | tuple)
            or not interpreter
            or not all(isinstance(a, str) and a and "\0" not in a for a in interpreter)
        ):
            raise bad("'interpreter' must be a non-empty list of non-empty strings")
        sha256: str = detection["sha256"]
        if not _SHA256_HEX.fullmatch(sha256):
            raise bad("'sha256' is not 64 hexadecimal digits")
        return cls(
            os=detection["os"],
            filename=filename,
            interpreter=tuple(interpreter),
            script=detection["script"],
            sha256=sha256.lower(),
        )


@dataclass(frozen=True)
class DetectionResult:
    """The detected user; both None when no user is logged in yet (retry later)."""

    username: str | None
    user_home: str | None
    run: ScriptRun


def parse_output(stdout: str) -> tuple[str | None, str | None]:
    """The (username, home) a script printed (CONTRACT section 3), or (None, None) for none."""
    values: dict[str, tuple[str, str]] = {}
    for raw in stdout.removeprefix("\ufeff").split("\n"):
        key, sep, value = raw.partition("=")
        key = key.strip()
        if not sep:
            continue
        if key in _USERNAME_KEYS:
            values["username"] = (key, value.strip())
        elif key in _HOME_KEYS:
            values["home"] = (key, value.strip())
    user_key, username = values.get("username", ("", ""))
    home_key, home = values.get("home", ("", ""))
    if not username and not home:
        return None, None
    if not home:
        raise DetectionError(
            "incomplete_output",
            f"the detection script printed {user_key} but no user home "
            f"({' or '.join(_HOME_KEYS)}); it must print both or neither",
        )
    if not username:
        raise DetectionError(
            "incomplete_output",
            f"the detection script printed {home_key} but no user name "
            f"({' or '.join(_USERNAME_KEYS)}); it must print both or neither",
        )
    if len(username) > MAX_USERNAME_CHARS or not username.isprintable():
        raise DetectionError(
            "invalid_username",
            f"the user name printed by the detection script ({_shorten(username)}) is not "
            f"1-{MAX_USERNAME_CHARS} printable characters",
        )
    if len(home) > MAX_HOME_CHARS or not home.isprintable() or not _is_absolute(home):
        raise DetectionError(
            "invalid_home",
            f"the user home printed by the detection script ({_shorten(home)}) is not an "
            "absolute path such as /Users/name, C:\\Users\\name or \\\\server\\share\\name",
        )
    return username, home


def detect(
    script: DetectionScript,
    *,
    timeout_s: float,
    sandbox: SandboxSettings | None = None,
    log_path: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> DetectionResult:
    """Run `script` and return the user it found; a failure is a DetectionError.

    Every attempt, refused ones included, leaves a `start` and/or an `end` line in `log_path`.
    `should_stop` is polled while the script runs: true ends it (code `stopped`).
    """
    settings = sandbox or SandboxSettings()
    journal = Journal(log_path, script.filename, script.sha256)
    run: ScriptRun | None = None
    try:
        run = _run(script, timeout_s, settings, should_stop, journal)
        _raise_if_stopped(script, run, timeout_s, settings.output_cap)
        result = _result_of(script, run)
    except DetectionError as exc:
        journal.end(run, error=exc)
        raise
    journal.end(run, username=result.username, home=result.user_home)
    return result


def run_script(
    script: DetectionScript,
    *,
    timeout_s: float,
    sandbox: SandboxSettings | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ScriptRun:
    """Run a detection script once in the sandbox, whatever it prints.

    MUST refuse a script whose bytes do not match its sha256. The scratch folder is removed and
    every process of the run is killed before this returns or raises.
    """
    settings = sandbox or SandboxSettings()
    journal = Journal(None, script.filename, script.sha256)  # a path of None: no lines
    run = _run(script, timeout_s, settings, should_stop, journal)
    _raise_if_stopped(script, run, timeout_s, settings.output_cap)
    return run


def _run(
    script: DetectionScript,
    timeout_s: float,
    settings: SandboxSettings,
    should_stop: Callable[[], bool] | None,
    journal: Journal,
) -> ScriptRun:
    payload = script.script.encode("utf-8")
    actual = hashlib.sha256(payload).hexdigest()
    if actual != script.sha256.lower():
        raise DetectionError(
            "script_hash_mismatch",
            f"the detection script {script.filename} does not match the SHA-256 in the policy "
            f"(policy {script.sha256[:12]}..., script {actual[:12]}...); it was not run",
        )
    interpreter = _resolve_interpreter(script.interpreter)
    chosen = plan(settings)
    journal.start(chosen, timeout_s)
    scratch = _make_scratch(chosen.account, script.filename, payload)
    try:
        argv = [*interpreter, os.path.join(scratch, script.filename)]
        if chosen.isolation is Isolation.JOB_OBJECT:
            return sandbox_windows.run(chosen, argv, scratch, timeout_s, should_stop)
        return sandbox_posix.run(
            chosen, argv, scratch=scratch, timeout_s=timeout_s, should_stop=should_stop
        )
    finally:
        _remove_tree(scratch)


def _raise_if_stopped(script: DetectionScript, run: ScriptRun, timeout_s: float, cap: int) -> None:
    """The sandbox ended the run: say why, as the error the daemon reports."""
    if run.stopped_for == "timeout":
        raise DetectionError(
            "timeout",
            f"the detection script {script.filename} did not finish within {timeout_s:g} "
            "seconds and was stopped",
        )
    if run.stopped_for == "too_much_output":
        raise DetectionError(
            "too_much_output",
            f"the detection script {script.filename} printed more than {_size(cap)} on "
            f"{run.stream} and was stopped",
        )
    if run.stopped_for is not None:
        raise DetectionError(
            "stopped", f"the detection script {script.filename} was stopped: the agent is stopping"
        )


def _result_of(script: DetectionScript, run: ScriptRun) -> DetectionResult:
    if run.exit_code == 0:
        username, home = parse_output(run.stdout)
        return DetectionResult(username=username, user_home=home, run=run)
    # Vendor scripts exit non-zero when their own log write fails: a user they printed counts.
    try:
        username, home = parse_output(run.stdout)
    except DetectionError as exc:
        raise _script_failed(script, run, f" ({exc.message})") from exc
    if username is None:
        raise _script_failed(script, run, "")
    return DetectionResult(username=username, user_home=home, run=run)


def _make_scratch(account: Account, filename: str, payload: bytes) -> str:
    """A fresh private folder holding the script, owned by the account that will run it."""
    # An agent that was killed outright left its folder behind: no run lasts this long.
    for stale in glob.glob(os.path.join(tempfile.gettempdir(), f"{_SCRATCH_PREFIX}*")):
        with contextlib.suppress(OSError):
            if time.time() - os.lstat(stale).st_mtime > _STALE_SCRATCH_S:
                _remove_tree(stale)
    try:
        scratch = tempfile.mkdtemp(prefix=_SCRATCH_PREFIX)
    except OSError as exc:
        raise _start_failed(filename, "its scratch folder could not be created", exc) from exc
    # On Windows the restricted token is granted the folder by ACL (agent.sandbox_windows).
    owned = account.switch and sys.platform != "win32"
    try:
        fd = os.open(os.path.join(scratch, filename), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(payload)
            if owned:  # its folder to write in, its script to read
                os.fchown(file.fileno(), account.uid, account.gid)
        if owned:
            os.chown(scratch, account.uid, account.gid)
    except OSError as exc:
        _remove_tree(scratch)
        raise _start_failed(filename, "it could not be written to its scratch folder", exc) from exc
    return scratch


def _resolve_interpreter(interpreter: Sequence[str]) -> list[str]:
    """The interpreter's argv with its program made absolute; `interpreter_missing` if absent."""
    program = interpreter[0]
    if sys.platform == "win32":
        # powershell.exe and cmd.exe come from System32 through the Windows sandbox's own
        # environment; the POSIX search path below means nothing there.
        return list(interpreter)
    if os.path.isabs(program):
        resolved: str | None = program
    else:  # a bare name is looked up on the script's PATH; a relative path means nothing here
        resolved = None if "/" in program else shutil.which(program, path=SCRIPT_PATH)
    if resolved is None or not (os.path.isfile(resolved) and os.access(resolved, os.X_OK)):
        raise _interpreter_missing(program)
    if os.path.basename(resolved) == "env":
        # `#!/usr/bin/env python3`: the interpreter that matters is the one env would start.
        target = _program_of_env(interpreter[1:])
        if target is not None and shutil.which(target, path=SCRIPT_PATH) is None:
            raise _interpreter_missing(target)
    return [resolved, *interpreter[1:]]


def _program_of_env(args: Sequence[str]) -> str | None:
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in ("-u", "--unset", "-C", "--chdir"):
            index += 2
        elif arg.startswith("-") or "=" in arg:
            index += 1
        else:
            return None if any(c.isspace() for c in arg) else arg
    return None


def _remove_tree(folder: str) -> None:
    """Remove the scratch folder even where the script took away its own permissions."""

    def unlock_and_retry(function: Callable[..., Any], path: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), stat.S_IRWXU)
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, stat.S_IRWXU)
                shutil.rmtree(path, ignore_errors=True)
            else:
                function(path)

    if sys.version_info >= (3, 12):
        shutil.rmtree(folder, onexc=unlock_and_retry)
    else:
        shutil.rmtree(folder, onerror=unlock_and_retry)
    if os.path.lexists(folder):
        log.warning("could not remove the detection script's scratch folder %s", folder)


def _is_absolute(path: str) -> bool:
    return path.startswith("/") or PureWindowsPath(path).is_absolute()


def _shorten(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _size(cap: int) -> str:
    return f"{cap // 1024} KiB" if cap % 1024 == 0 else f"{cap} bytes"


def _interpreter_missing(program: str) -> DetectionError:
    return DetectionError(
        "interpreter_missing",
        f"the detection script's interpreter {program} is not installed on this device",
    )


def _start_failed(filename: str, what: str, exc: OSError) -> DetectionError:
    return DetectionError(
        "start_failed",
        f"the detection script {filename} was not run: {what} ({exc.strerror or exc})",
    )


def _script_failed(script: DetectionScript, run: ScriptRun, detail: str) -> DetectionError:
    if run.exit_code < 0:
        how = f"was killed by signal {-run.exit_code}"
    else:
        how = f"failed with exit code {run.exit_code}"
    lines = [line.strip() for line in run.stderr.splitlines() if line.strip()]
    said = f": {lines[-1][:_STDERR_LINE_CHARS]}" if lines else ""
    return DetectionError(
        "script_failed",
        f"the detection script {script.filename} {how} without printing a user{detail}{said}",
    )


__all__ = [
    "DEFAULT_OUTPUT_CAP",
    "SCRIPT_PATH",
    "DetectionError",
    "DetectionResult",
    "DetectionScript",
    "SandboxSettings",
    "ScriptRun",
    "detect",
    "parse_output",
    "run_script",
]
