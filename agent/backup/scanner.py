"""The walk of a home folder: what to back up, and whether a file must be read again.

Exclusion patterns (the policy's `exclude`), matched against the path relative to the home,
`/`-separated, case-sensitive on every OS:

- A pattern ending in `/` matches folders only: `node_modules/` leaves out every folder
  named so (and all it holds), `Library/Caches/` that one folder.
- Any other pattern matches files, links and folders alike.
- A pattern is tried with `fnmatch` against the whole relative path and against the last
  component, so `*.tmp` drops `a/b/c.tmp`, and `Downloads/*.iso` drops `Downloads/x.iso`.
  `*` also matches `/`: `Downloads/*.iso` drops `Downloads/old/x.iso` too.
- An excluded folder is not entered at all.

Links are recorded as links, never followed; sockets, pipes and devices are skipped and
counted. A folder that cannot be listed is a warning: the run goes on and is partial.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent import logs

log = logging.getLogger(logs.LOGGER)

Kind = Literal["file", "dir", "symlink"]
_INT64 = 1 << 63


@dataclass(frozen=True)
class FileStat:
    """What decides whether a file changed: borg's and restic's choice of fields."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStat:
        # An inode number can use all 64 bits (network and Windows filesystems); SQLite
        # keeps signed 64-bit integers, so fold it, which keeps equality meaningful.
        inode = st.st_ino if st.st_ino < _INT64 else st.st_ino - 2 * _INT64
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, inode)


@dataclass(frozen=True)
class Entry:
    """One thing found in the home: `path` is relative, `/`-separated."""

    path: str
    kind: Kind
    mode: int
    mtime_ns: int
    stat: FileStat
    target: str | None = None  # symlinks only

    def absolute(self, root: Path) -> Path:
        return root.joinpath(*self.path.split("/"))


@dataclass
class ScanReport:
    """What the walk left out, for the run's result and log."""

    warnings: list[str] = field(default_factory=list)
    skipped_special: int = 0
    excluded: int = 0

    def warn(self, message: str) -> None:
        """A source problem: logged, and the run will be partial."""
        log.warning("%s", message)
        self.warnings.append(message)


def file_changed(current: FileStat, cached: FileStat | None) -> str | None:
    """Why a file must be read again, or None when its cached chunks still describe it.

    ctime catches a content change that kept size and mtime (an mtime set back by a tool),
    and the inode a file replaced by another (a save through rename).
    """
    if cached is None:
        return "new file"
    if current.size != cached.size:
        return f"size changed ({cached.size} -> {current.size})"
    if current.mtime_ns != cached.mtime_ns:
        return "modification time changed"
    if current.ctime_ns != cached.ctime_ns:
        return "change time changed (content or metadata touched)"
    if current.inode != cached.inode:
        return "inode changed (file replaced)"
    return None


def is_excluded(rel: str, is_dir: bool, patterns: Sequence[str]) -> bool:
    """Whether `rel` (relative, `/`-separated) is left out; see the module's docstring."""
    name = rel.rsplit("/", 1)[-1]
    for pattern in patterns:
        folders_only = pattern.endswith("/")
        if folders_only and not is_dir:
            continue
        body = pattern.rstrip("/") if folders_only else pattern
        if body and (fnmatch.fnmatchcase(rel, body) or fnmatch.fnmatchcase(name, body)):
            return True
    return False


def scan(
    root: Path,
    exclude: Sequence[str],
    report: ScanReport,
    *,
    skip: Collection[Path] = (),
) -> Iterator[Entry]:
    """Everything under `root` worth backing up, each folder before what it holds.

    `skip` holds absolute paths never backed up whatever the policy says: the agent's own
    state, whose cache changes during the run that reads it.
    """
    skipped = {os.path.normcase(os.path.abspath(p)) for p in skip}
    stack: list[tuple[str, str]] = [(str(root), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as listing:
                found = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            report.warn(f"cannot read folder {prefix.rstrip('/') or '.'}: {_reason(exc)}")
            continue
        subfolders: list[tuple[str, str]] = []
        for item in found:
            rel = f"{prefix}{item.name}"
            entry = _entry(item, rel, report)
            if entry is None:
                continue
            if os.path.normcase(item.path) in skipped:
                continue
            if is_excluded(rel, entry.kind == "dir", exclude):
                report.excluded += 1
                log.debug("excluded by policy: %s", rel)
                continue
            yield entry
            if entry.kind == "dir":
                subfolders.append((item.path, rel + "/"))
        # Reversed onto the stack so that folders come out in name order.
        stack.extend(reversed(subfolders))


def _entry(item: os.DirEntry[str], rel: str, report: ScanReport) -> Entry | None:
    try:
        st = item.stat(follow_symlinks=False)
    except OSError as exc:
        if not isinstance(exc, FileNotFoundError):  # gone since listed: nothing to say
            report.warn(f"cannot read {rel}: {_reason(exc)}")
        return None
    mode = stat.S_IMODE(st.st_mode)
    file_stat = FileStat.of(st)
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(item.path)
        except OSError as exc:
            report.warn(f"cannot read link {rel}: {_reason(exc)}")
            return None
        return Entry(rel, "symlink", mode, st.st_mtime_ns, file_stat, target)
    if stat.S_ISDIR(st.st_mode):
        return Entry(rel, "dir", mode, st.st_mtime_ns, file_stat)
    if stat.S_ISREG(st.st_mode):
        return Entry(rel, "file", mode, st.st_mtime_ns, file_stat)
    report.skipped_special += 1
    log.debug("skipped (not a file, folder or link): %s", rel)
    return None


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def open_source(path: Path) -> int:
    """Open a file to back up, read-only, never through a link swapped in since the scan."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    # O_NONBLOCK: a file replaced by a pipe since the scan must not hang the run.
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


__all__ = [
    "Entry",
    "FileStat",
    "ScanReport",
    "file_changed",
    "is_excluded",
    "open_source",
    "scan",
]
