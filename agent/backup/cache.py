"""The files cache (`state/files.cache`, SQLite): path -> stat and chunk ids of the last read.

It only saves work: losing it costs one full read of the home, never a wrong backup. So a
cache from another version, or a damaged one, is set aside and rebuilt rather than fatal.

One write transaction spans the whole run: lookups and updates go through it, and it is
committed only after the authority accepted the snapshot. An interrupted run rolls back,
so the cache never claims a file whose chunks no snapshot references. The transaction's
lock also keeps a second backup of the same state folder from running at the same time.

No sqlite3 exception leaves this module: a full disk is the OSError (ENOSPC) every other
write raises, so the daemon makes it the same `disk_full` failed attempt; anything else is
a BackupError, and a cache found damaged during a run is set aside for the next run.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent import events, logs
from agent.backup.scanner import FileStat
from agent.errors import BackupError

log = logging.getLogger(logs.LOGGER)

CACHE_FILE = "files.cache"
CACHE_VERSION = 1
ID_BYTES = 32
# SQLite's historical limit on variables in one statement is 999.
LOOKUP_BATCH = 500
_IN_USE = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
_DAMAGED = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    chunks BLOB NOT NULL,
    seen INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID
"""


@dataclass(frozen=True)
class CachedFile:
    stat: FileStat
    chunks: tuple[str, ...]


def _pack_ids(ids: Sequence[str]) -> bytes:
    return b"".join(bytes.fromhex(i) for i in ids)


def _unpack_ids(raw: bytes) -> tuple[str, ...]:
    return tuple(raw[i : i + ID_BYTES].hex() for i in range(0, len(raw), ID_BYTES))


class FilesCache:
    """The cache for one run: `lookup`, `record`, `seen`, then `commit` or `close`."""

    def __init__(self, state_dir: Path, *, lock_wait: float = 2.0) -> None:
        """Open the cache and take its lock, waiting up to `lock_wait` seconds for it."""
        self.path = state_dir / CACHE_FILE
        self.lock_wait = lock_wait
        state_dir.mkdir(parents=True, exist_ok=True)
        self._db = self._open()
        self._closed = False
        with self._failures():
            # Immediate: the write lock now, so a concurrent run fails here, not midway.
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE files SET seen = 0")

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if _code(exc) in (sqlite3.SQLITE_FULL, *_IN_USE):
                raise self._failure(exc) from None
            aside = self._set_aside()
            log.warning(
                "files cache %s unusable (%s); moved to %s, rebuilt",
                self.path,
                exc,
                aside,
                extra=logs.event(events.LOCAL_ERROR, damaged=CACHE_FILE),
            )
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            raise self._failure(exc) from None

    def _set_aside(self) -> Path:
        """Move the cache (and its journal, which belongs to it) to `files.cache.damaged`:
        one name, replaced each time, so damaged caches never pile up on the disk."""
        aside = self.path.with_name(self.path.name + ".damaged")
        journal = self.path.with_name(self.path.name + "-journal")
        self.path.replace(aside)
        if journal.exists():
            journal.replace(aside.with_name(aside.name + "-journal"))
        else:
            aside.with_name(aside.name + "-journal").unlink(missing_ok=True)
        return aside

    def _failure(self, exc: sqlite3.DatabaseError) -> Exception:
        """The agent's error for an SQLite one."""
        code = _code(exc)
        if code == sqlite3.SQLITE_FULL:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        if code in _IN_USE:
            return BackupError(f"{self.path} is in use: another backup is running ({exc})")
        return BackupError(f"the files cache {self.path} cannot be used ({exc})")

    @contextlib.contextmanager
    def _failures(self) -> Iterator[None]:
        """Translate SQLite's errors in a run; a cache damaged under it is set aside."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            self.close()
            if _code(exc) not in _DAMAGED:
                raise self._failure(exc) from None
            aside = self._set_aside()
            raise BackupError(
                f"the files cache {self.path} is damaged ({exc}); moved it to {aside.name}: "
                "the next backup reads every file again"
            ) from None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.lock_wait, isolation_level=None)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version != CACHE_VERSION:
                if version:
                    log.info("files cache version %s replaced by %s", version, CACHE_VERSION)
                db.execute("DROP TABLE IF EXISTS files")
                db.execute(_SCHEMA)
                db.execute(f"PRAGMA user_version = {CACHE_VERSION}")
            db.execute("SELECT count(*) FROM files").fetchone()
        except BaseException:
            db.close()
            raise
        self.path.chmod(0o600)
        return db

    def lookup(self, paths: Sequence[str]) -> dict[str, CachedFile]:
        """The cached state of those of `paths` the cache knows, in batches."""
        found: dict[str, CachedFile] = {}
        with self._failures():
            for start in range(0, len(paths), LOOKUP_BATCH):
                batch = paths[start : start + LOOKUP_BATCH]
                marks = ",".join("?" * len(batch))
                rows = self._db.execute(
                    "SELECT path, size, mtime_ns, ctime_ns, inode, chunks FROM files "  # noqa: S608
                    f"WHERE path IN ({marks})",
                    batch,
                )
                for path, size, mtime_ns, ctime_ns, inode, chunks in rows:
                    found[path] = CachedFile(
                        FileStat(size, mtime_ns, ctime_ns, inode), _unpack_ids(chunks)
                    )
        return found

    def record(self, files: Iterable[tuple[str, FileStat, Sequence[str]]]) -> None:
        """Remember files just read (kept only if the run commits)."""
        rows = [(p, s.size, s.mtime_ns, s.ctime_ns, s.inode, _pack_ids(ids)) for p, s, ids in files]
        with self._failures():
            self._db.executemany(
                "INSERT OR REPLACE INTO files (path, size, mtime_ns, ctime_ns, inode, chunks, "
                "seen) VALUES (?, ?, ?, ?, ?, ?, 1)",
                rows,
            )

    def seen(self, paths: Iterable[str]) -> None:
        """Mark unchanged files as still there, so the commit keeps them."""
        with self._failures():
            self._db.executemany("UPDATE files SET seen = 1 WHERE path = ?", [(p,) for p in paths])

    def forget(self, paths: Iterable[str]) -> None:
        """Drop files whose cached chunks turned out to be unusable."""
        with self._failures():
            self._db.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in paths])

    def commit(self) -> None:
        """Keep this run's updates; files not seen this run (deleted, excluded) go."""
        with self._failures():
            self._db.execute("DELETE FROM files WHERE seen = 0")
            self._db.execute("COMMIT")
        self.close()

    def close(self) -> None:
        """End the run; without `commit`, every update of the run is rolled back."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.DatabaseError as exc:
            # Closing rolls back as well; a failure here must not hide the run's own error.
            log.debug("files cache rollback failed: %s", exc)
        finally:
            self._db.close()


def _code(exc: sqlite3.DatabaseError) -> int:
    """SQLite's primary result code (the extended code's low byte)."""
    return int(getattr(exc, "sqlite_errorcode", 0)) & 0xFF


__all__ = ["CACHE_FILE", "CachedFile", "FilesCache"]
