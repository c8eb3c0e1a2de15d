"""`holdfast logs`: the end of one of the agent's logs, and with `-f` everything written after.

Follow mode behaves like `tail -F`: when the agent's RotatingFileHandler renames the file
(agent.log -> agent.log.1) the rest of the old file is printed, then the new file from its
first byte, so a line written around a rotation is neither lost nor printed twice.
"""

from __future__ import annotations

import codecs
import os
import sys
import threading
from pathlib import Path
from typing import BinaryIO, TextIO

from agent.errors import AgentError, Refused, UsageError
from agent.paths import AgentPaths

# What `--file` accepts: each log of `log/`, with what its absence means to support staff.
LOG_FILES = {
    "agent": ("agent.log", "the agent has not run on this device"),
    "history": ("history.log", "the agent has not written its history on this device yet"),
    "detection": ("detection.log", "no user detection has run on this device"),
}
_BLOCK = 64 * 1024


def log_path(paths: AgentPaths, which: str) -> Path:
    """The file `--file which` names."""
    return paths.log / LOG_FILES[which][0]


def _refused(path: Path) -> Refused:
    # The log folder is readable by all; a log may not be, under a strict umask.
    return Refused(f"cannot read {path}: permission denied; run the command again with sudo")


def _open(path: Path, which: str) -> BinaryIO:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise AgentError(
            f"no {which} log yet at {path}: {LOG_FILES[which][1]}, or --home points elsewhere"
        ) from None
    except PermissionError:
        raise _refused(path) from None
    except OSError as exc:
        raise AgentError(f"cannot read {path}: {exc.strerror or exc}") from None


def last_lines(handle: BinaryIO, count: int) -> bytes:
    """The last `count` lines of an open file, read backwards, so a 10 MiB log costs little.

    Leaves the file positioned at the end of what was read, where following goes on.
    """
    end = handle.seek(0, os.SEEK_END)
    if count <= 0:
        return b""
    start, data = end, b""
    # count + 1 line ends: the one before the first wanted line proves that line is whole.
    while start > 0 and data.count(b"\n") <= count:
        step = min(_BLOCK, start)
        start -= step
        handle.seek(start)
        data = handle.read(step) + data
    handle.seek(end)
    return b"".join(data.splitlines(keepends=True)[-count:])


def _write(out: TextIO, text: str) -> None:
    if not text:
        return
    try:
        out.write(text)
    except UnicodeEncodeError:
        # A terminal that cannot show every character still gets every line.
        encoding = getattr(out, "encoding", None) or "ascii"
        out.write(text.encode(encoding, "replace").decode(encoding))
    out.flush()


def _replacement(path: Path, handle: BinaryIO) -> BinaryIO | None:
    """The file now at `path` when it is no longer the one `handle` reads (a rotation)."""
    try:
        now = os.stat(path)
    except OSError:
        return None  # between the rename and the new file: wait for it
    mine = os.fstat(handle.fileno())
    if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
        if now.st_size < handle.tell():
            handle.seek(0)  # truncated in place (copytruncate): start over
        return None
    try:
        return path.open("rb")
    except OSError:
        return None  # created but not yet readable; the next poll tries again


def _follow(path: Path, handle: BinaryIO, out: TextIO, poll: float, stop: threading.Event) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        while not stop.is_set():
            chunk = handle.read(_BLOCK)
            if chunk:
                _write(out, decoder.decode(chunk))
                continue
            if stop.wait(poll):
                break
            newer = _replacement(path, handle)
            if newer is not None:
                # What the agent wrote to the old file just before renaming it comes first.
                _write(out, decoder.decode(handle.read(), final=True))
                handle.close()
                handle = newer
                decoder.reset()
    finally:
        handle.close()


def logs_command(
    paths: AgentPaths,
    lines: int,
    follow: bool,
    which: str = "agent",
    out: TextIO = sys.stdout,
    *,
    poll: float = 0.5,
    stop: threading.Event | None = None,
) -> int:
    """Print the last `lines` lines of a log; with `follow`, keep printing until Ctrl-C."""
    if which not in LOG_FILES:
        raise UsageError(f"unknown log {which!r}; choose one of {', '.join(LOG_FILES)}")
    path = log_path(paths, which)
    handle = _open(path, which)
    try:
        _write(out, last_lines(handle, lines).decode("utf-8", errors="replace"))
        if follow:
            _follow(path, handle, out, poll, stop or threading.Event())
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how following ends
    except BrokenPipeError:
        _quiet_closed_stdout(out)
        return 0  # `holdfast logs | head`: the reader has what it wanted
    finally:
        handle.close()
    return 0


def _quiet_closed_stdout(out: TextIO) -> None:
    """Point a closed pipe at devnull, so Python's exit flush does not complain about it."""
    try:
        fileno = out.fileno()
    except (OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fileno)
    os.close(devnull)


__all__ = ["LOG_FILES", "last_lines", "log_path", "logs_command"]
