"""User detection: run the policy's detection script and read the user it prints.

    detect(script) = verify sha256 ─▶ run_script ─▶ parse_output ─▶ DetectionResult

`run_script` is the one place a detection script is started; the sandbox (unprivileged user,
rlimits, namespaces) hardens it later without changing its callers. Already now a script runs
only if its bytes match the policy's sha256, in a fresh private scratch folder (its working
directory, HOME and TMPDIR, removed afterwards), with an allow-listed environment, stdin from
/dev/null, a time limit and an output cap; on either limit its whole process tree is killed.

A DetectionError's `code` is one of: policy_invalid, script_hash_mismatch, interpreter_missing,
start_failed, timeout, too_much_output, script_failed, incomplete_output, invalid_username,
invalid_home.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PureWindowsPath
from typing import Any

import psutil

from agent.errors import DetectionError

log = logging.getLogger(__name__)

SCRIPT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_OUTPUT_CAP = 64 * 1024
MAX_USERNAME_CHARS = 256
MAX_HOME_CHARS = 4096

_USERNAME_KEYS = ("C42_USERNAME", "AGENT_USERNAME")
_HOME_KEYS = ("C42_USER_HOME", "AGENT_USER_HOME")
_SANE_LANG = re.compile(r"(C|POSIX|[a-z]{2,3}(_[A-Z]{2})?)(\.[A-Za-z0-9-]{1,20})?(@[a-z]{1,20})?")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
# Once the script has exited, descendants it left behind may still hold its pipes open: wait
# this long for them to finish writing, then stop reading (they are killed with its group).
_PIPE_GRACE_S = 0.5
_POLL_S = 0.05
_STDERR_LINE_CHARS = 200


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
class ScriptRun:
    """What one run of a detection script did. A negative exit code is the killing signal."""

    exit_code: int
    stdout: str
    stderr: str
    duration_s: float


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


def detect(script: DetectionScript, *, timeout_s: float) -> DetectionResult:
    """Run `script` and return the user it found; a failure is a DetectionError."""
    run = run_script(script, timeout_s=timeout_s)
    log.debug(
        "detection script %s exited %d after %.2f s",
        script.filename,
        run.exit_code,
        run.duration_s,
    )
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


def run_script(
    script: DetectionScript, *, timeout_s: float, output_cap: int = DEFAULT_OUTPUT_CAP
) -> ScriptRun:
    """Run a detection script once, within `timeout_s` seconds and `output_cap` bytes per stream.

    MUST refuse a script whose bytes do not match its sha256. The scratch folder is removed and
    every process of the run is killed before this returns or raises.
    """
    payload = script.script.encode("utf-8")
    actual = hashlib.sha256(payload).hexdigest()
    if actual != script.sha256.lower():
        raise DetectionError(
            "script_hash_mismatch",
            f"the detection script {script.filename} does not match the SHA-256 in the policy "
            f"(policy {script.sha256[:12]}..., script {actual[:12]}...); it was not run",
        )
    argv = _resolve_interpreter(script.interpreter)
    try:
        scratch = tempfile.mkdtemp(prefix="holdfast-detect-")
    except OSError as exc:
        raise _start_failed(script, "its scratch folder could not be created", exc) from exc
    try:
        os.chmod(scratch, 0o700)
        path = os.path.join(scratch, script.filename)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(payload)
    except OSError as exc:
        _remove_tree(scratch)
        raise _start_failed(script, "it could not be written to its scratch folder", exc) from exc
    try:
        return _run_in(scratch, [*argv, path], script.filename, timeout_s, output_cap)
    finally:
        _remove_tree(scratch)


def _run_in(
    scratch: str, argv: list[str], filename: str, timeout_s: float, output_cap: int
) -> ScriptRun:
    started = time.monotonic()
    deadline = started + timeout_s
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=scratch,
            env=_environment(scratch),
            start_new_session=True,
        )
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EACCES, errno.ENOEXEC):
            raise DetectionError(
                "interpreter_missing",
                f"the interpreter {argv[0]} of the detection script {filename} could not be "
                f"started ({exc.strerror})",
            ) from exc
        raise DetectionError(
            "start_failed",
            f"the detection script {filename} could not be started ({exc.strerror})",
        ) from exc
    with proc:
        try:
            stdout, stderr = _read_output(proc, filename, deadline, timeout_s, output_cap)
            try:
                exit_code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise _timeout(filename, timeout_s) from None
        except BaseException:
            _kill_tree(proc)
            raise
        finally:
            # Whatever the script left behind in its process group goes with it.
            _kill_group(proc.pid)
    return ScriptRun(
        exit_code=exit_code,
        stdout=stdout.decode("utf-8", errors="replace"),
        stderr=stderr.decode("utf-8", errors="replace"),
        duration_s=time.monotonic() - started,
    )


def _read_output(
    proc: subprocess.Popen[bytes], filename: str, deadline: float, timeout_s: float, cap: int
) -> tuple[bytes, bytes]:
    """Both streams, read together so neither can fill its pipe and stall the script."""
    assert proc.stdout is not None and proc.stderr is not None
    streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
    buffers = {fd: bytearray() for fd in streams}
    exited_at: float | None = None
    with selectors.DefaultSelector() as selector:
        for fd in streams:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            now = time.monotonic()
            if now >= deadline:
                raise _timeout(filename, timeout_s)
            if exited_at is None:
                exited_at = now if proc.poll() is not None else None
            elif now - exited_at >= _PIPE_GRACE_S:
                break
            for key, _ in selector.select(timeout=min(_POLL_S, deadline - now)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffer = buffers[key.fd]
                buffer += chunk
                if len(buffer) > cap:
                    raise DetectionError(
                        "too_much_output",
                        f"the detection script {filename} printed more than {_size(cap)} on "
                        f"{streams[key.fd]} and was stopped",
                    )
    return bytes(buffers[proc.stdout.fileno()]), bytes(buffers[proc.stderr.fileno()])


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Kill the script's process group and every descendant, even those that left the group."""
    descendants: list[psutil.Process] = []
    if proc.returncode is None:  # once reaped, its pid may already belong to someone else
        with contextlib.suppress(psutil.Error):
            descendants = psutil.Process(proc.pid).children(recursive=True)
    _kill_group(proc.pid)
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.kill()  # psutil checks the pid was not reused since it was collected


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _environment(scratch: str) -> dict[str, str]:
    """The script's whole environment: nothing of the agent's (its token, its proxy password)."""
    lang = os.environ.get("LANG", "")
    return {
        "PATH": SCRIPT_PATH,
        "LANG": lang if _SANE_LANG.fullmatch(lang) else "C.UTF-8",
        "HOME": scratch,
        "TMPDIR": scratch,
    }


def _resolve_interpreter(interpreter: Sequence[str]) -> list[str]:
    """The interpreter's argv with its program made absolute; `interpreter_missing` if absent."""
    program = interpreter[0]
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


def _timeout(filename: str, timeout_s: float) -> DetectionError:
    return DetectionError(
        "timeout",
        f"the detection script {filename} did not finish within {timeout_s:g} seconds "
        "and was stopped",
    )


def _interpreter_missing(program: str) -> DetectionError:
    return DetectionError(
        "interpreter_missing",
        f"the detection script's interpreter {program} is not installed on this device",
    )


def _start_failed(script: DetectionScript, what: str, exc: OSError) -> DetectionError:
    return DetectionError(
        "start_failed",
        f"the detection script {script.filename} was not run: {what} ({exc.strerror or exc})",
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
    "ScriptRun",
    "detect",
    "parse_output",
    "run_script",
]
