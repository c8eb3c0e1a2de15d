"""One backup run: scan the home, read what changed, upload what the authority lacks,
then commit the snapshot last.

Order is the crash-safety: data packs, then the manifest (a blob in a pack of its own),
then the snapshot commit, then the files cache. A run stopped anywhere before the commit
leaves no snapshot and an untouched cache; the next run asks `chunks/missing` and sends
only what never arrived.

Errors on one source file (unreadable, vanished) are warnings: the run goes on and is
partial. Errors on the destination (the authority, after a few quick retries) and on the
agent's own state abort the run: never a silently broken snapshot.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import logs
from agent.backup import manifest
from agent.backup.blobs import chunk_id
from agent.backup.cache import CachedFile, FilesCache
from agent.backup.chunker import Chunker
from agent.backup.heap import keep_large_buffers_apart, release_free_memory
from agent.backup.keys import Subkeys, ensure_key
from agent.backup.retry import Retrier
from agent.backup.scanner import (
    Entry,
    FileStat,
    ScanReport,
    file_changed,
    open_source,
    scan,
)
from agent.backup.throttle import UploadLimit
from agent.backup.uploader import UPLOAD_WORKERS, Uploader
from agent.errors import BackupCancelled, BackupError
from agent.transport import AuthorityClient

log = logging.getLogger(logs.LOGGER)

SCAN_BATCH = 256
PROGRESS_EVERY = 0.5  # seconds between progress reports
_warned_security: set[str] = set()


@dataclass(frozen=True)
class BackupProgress:
    """Where a run is, for a progress display (reported from the run's own thread)."""

    files: int
    bytes: int
    read_bytes: int
    sent_bytes: int
    chunks_uploaded: int
    current: str | None
    # Bytes of the files this run reads, known once the scan has ended (the scan streams
    # into the reading); None before, when no honest estimate of the rest exists.
    to_read_bytes: int | None = None


@dataclass(frozen=True)
class BackupResult:
    """What a run did; `partial` when some source files could not be backed up."""

    snapshot_id: str
    files: int
    bytes: int
    new_bytes: int  # plaintext bytes of the chunks the authority lacked
    chunks_uploaded: int
    warnings: tuple[str, ...]
    partial: bool
    files_read: int = 0
    read_bytes: int = 0
    sent_bytes: int = 0  # pack bytes on the wire, manifest included
    requests: int = 0
    skipped_special: int = 0
    excluded: int = 0
    started_at: str = ""
    finished_at: str = ""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


class _Run:
    """The state of one run between scan and commit."""

    def __init__(
        self,
        home: Path,
        *,
        keys: Subkeys,
        cache: FilesCache,
        uploader: Uploader,
        progress: Callable[[BackupProgress], None] | None,
        cancel: threading.Event | None,
    ) -> None:
        self.home = home
        self.keys = keys
        self.cache = cache
        self.uploader = uploader
        self.progress = progress
        self.cancel = cancel
        self.report = ScanReport()
        self.chunker = Chunker()
        self.entries: list[dict[str, Any] | None] = []
        # Manifest index and entry of files taken from the cache, in case the authority
        # turns out to have lost one of their chunks.
        self.reused: list[tuple[int, Entry, CachedFile]] = []
        self.files = self.bytes = self.files_read = self.read_bytes = 0
        self.to_read_bytes = 0
        self.scan_done = False
        self._last_report = 0.0

    def walk(self, exclude: list[str], skip: Iterable[Path]) -> None:
        found = scan(self.home, exclude, self.report, skip=tuple(skip))
        for batch in _batched(self._until_scanned(found), SCAN_BATCH):
            cached = self.cache.lookup([e.path for e in batch if e.kind == "file"])
            # Decided for the whole batch before reading it, so that once the scan has
            # ended the progress knows every byte still to read.
            reasons = {
                e.path: file_changed(e.stat, cached[e.path].stat if e.path in cached else None)
                for e in batch
                if e.kind == "file"
            }
            self.to_read_bytes += sum(
                e.stat.size for e in batch if e.kind == "file" and reasons[e.path] is not None
            )
            unchanged: list[str] = []
            read: list[tuple[str, FileStat, list[str]]] = []
            for entry in batch:
                self.check_cancel()
                if entry.kind != "file":
                    self.entries.append(manifest.entry_document(entry))
                    continue
                hit = cached.get(entry.path)
                reason = reasons[entry.path]
                if reason is None and hit is not None:
                    self.reused.append((len(self.entries), entry, hit))
                    self._add_file(entry, entry.stat.size, hit.chunks)
                    self.uploader.verify(hit.chunks)
                    unchanged.append(entry.path)
                    continue
                log.debug("reading %s: %s", entry.path, reason)
                outcome = self._read(entry)
                if outcome is not None:
                    read.append((entry.path, *outcome))
            self.cache.seen(unchanged)
            self.cache.record(read)
            self._tick(None, force=True)
        self._tick(None, force=True)  # a last full batch learns the scan ended only now

    def _until_scanned(self, found: Iterable[Entry]) -> Iterator[Entry]:
        yield from found
        self.scan_done = True

    def recover_lost(self) -> None:
        """Re-read unchanged files whose cached chunks the authority no longer holds."""
        self.uploader.drain()
        if not self.uploader.lost:
            return
        stale = [(i, e) for i, e, hit in self.reused if self.uploader.lost & set(hit.chunks)]
        self.cache.forget(e.path for _, e in stale)
        self.to_read_bytes += sum(e.stat.size for _, e in stale)
        read: list[tuple[str, FileStat, list[str]]] = []
        for index, entry in stale:
            self.check_cancel()
            self.entries[index] = None
            self.files -= 1
            self.bytes -= entry.stat.size
            log.info("reading %s again: the authority lacks some of its chunks", entry.path)
            outcome = self._read(entry, index)
            if outcome is not None:
                read.append((entry.path, *outcome))
        self.cache.record(read)
        self.uploader.drain()
        self._drop_unrecovered()

    def _drop_unrecovered(self) -> None:
        """Leave out files sharing a lost chunk no file could provide again (its only
        source vanished meanwhile): a snapshot must not reference what is not stored."""
        gone = self.uploader.unrecovered()
        if not gone:
            return
        for index, doc in enumerate(self.entries):
            if doc is not None and doc["type"] == "file" and gone & set(doc["chunks"]):
                self.entries[index] = None
                self.files -= 1
                self.bytes -= doc["size"]
                self.cache.forget([doc["path"]])
                self.report.warn(f"{doc['path']}: its data is no longer on the authority")

    def _add_file(
        self, entry: Entry, size: int, chunks: Iterable[str], index: int | None = None
    ) -> None:
        doc = manifest.entry_document(entry, size, list(chunks))
        if index is None:
            self.entries.append(doc)
        else:
            self.entries[index] = doc
        self.files += 1
        self.bytes += size

    def _read(self, entry: Entry, index: int | None = None) -> tuple[FileStat, list[str]] | None:
        """Chunk a file and queue its chunks; its stat for the cache, or None if unusable."""
        path = entry.absolute(self.home)
        try:
            fd = open_source(path)
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):  # deleted since the scan: not news
                self.report.warn(f"cannot read {entry.path}: {exc.strerror or exc}")
            return None
        ids: list[str] = []
        size = 0
        with open(fd, "rb", buffering=0) as source:
            try:
                before = os.fstat(source.fileno())
                if not stat.S_ISREG(before.st_mode):
                    self.report.skipped_special += 1
                    return None
                for data in self.chunker.chunks(source):
                    cid = chunk_id(self.keys, data)
                    ids.append(cid)
                    size += len(data)
                    self.read_bytes += len(data)
                    if self.uploader.wants(cid):
                        self.uploader.add(cid, data)
                    self._tick(entry.path)
                after = FileStat.of(os.fstat(source.fileno()))
            except OSError as exc:
                self.report.warn(f"cannot read {entry.path}: {exc.strerror or exc}")
                return None
        self.files_read += 1
        opened = FileStat.of(before)
        now = Entry(entry.path, "file", stat.S_IMODE(before.st_mode), before.st_mtime_ns, opened)
        self._add_file(now, size, ids, index)
        if after != opened or size != opened.size:
            # What was read is kept; not caching it makes the next run read it again.
            log.info("%s changed while it was read; it is read again next time", entry.path)
            return None
        return opened, ids

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise BackupCancelled()

    def _tick(self, current: str | None, force: bool = False) -> None:
        if self.progress is None:
            return
        moment = time.monotonic()
        if not force and moment - self._last_report < PROGRESS_EVERY:
            return
        self._last_report = moment
        self.progress(
            BackupProgress(
                files=self.files,
                bytes=self.bytes,
                read_bytes=self.read_bytes,
                sent_bytes=self.uploader.sent_bytes,
                chunks_uploaded=self.uploader.chunks_uploaded,
                current=current,
                to_read_bytes=self.to_read_bytes if self.scan_done else None,
            )
        )


def _batched(items: Iterable[Entry], size: int) -> Iterator[list[Entry]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def run_backup(
    client: AuthorityClient,
    credential: str,
    home: Path,
    exclude: list[str],
    state_dir: Path,
    *,
    progress: Callable[[BackupProgress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    workers: int = UPLOAD_WORKERS,
    cancel: threading.Event | None = None,
    security: str = "standard",
    limit: UploadLimit | None = None,
) -> BackupResult:
    """Back up `home` to the device's archive on the authority; the committed snapshot.

    Raises TransientError / PermanentError when the authority could not be used (after
    three quick attempts per request), BackupError when the agent's own state or the home
    folder stops the run, BackupCancelled when `cancel` was set. `limit` caps the upload
    rate (the policy's bandwidth limit); None sends as fast as the link allows.
    """
    if security != "standard" and security not in _warned_security:
        _warned_security.add(security)
        log.warning("security mode %r is not implemented yet; backing up as 'standard'", security)
    if not home.is_dir():
        raise BackupError(f"the folder to back up, {home}, does not exist or is not a folder")
    started_at = _now()
    keep_large_buffers_apart()
    retry = Retrier(sleep)
    # The cache's lock first: two first backups racing would each make a master key.
    cache = FilesCache(state_dir)
    try:
        keys = ensure_key(client, credential, state_dir, retry)
        with Uploader(
            client, credential, keys, retry, workers=workers, limit=limit, cancel=cancel
        ) as uploader:
            run = _Run(
                home, keys=keys, cache=cache, uploader=uploader, progress=progress, cancel=cancel
            )
            run.walk(exclude, skip=(state_dir,))
            run.recover_lost()
            uploader.drain()
            document = manifest.encode(
                str(home), started_at, [e for e in run.entries if e is not None]
            )
            manifest_id = chunk_id(keys, document)
            run.check_cancel()
            uploader.put_alone(manifest_id, document)
        finished_at = _now()
        answer = retry(
            lambda: client.commit_snapshot(
                credential,
                {
                    "manifest_id": manifest_id,
                    "files": run.files,
                    "bytes": run.bytes,
                    "started_at": started_at,
                    "finished_at": finished_at,
                },
            )
        )
        cache.commit()
    finally:
        cache.close()
        release_free_memory()
    result = BackupResult(
        snapshot_id=str(answer.get("snapshot_id", "")),
        files=run.files,
        bytes=run.bytes,
        new_bytes=uploader.new_bytes,
        chunks_uploaded=uploader.chunks_uploaded,
        warnings=tuple(run.report.warnings),
        partial=bool(run.report.warnings),
        files_read=run.files_read,
        read_bytes=run.read_bytes,
        sent_bytes=uploader.sent_bytes,
        requests=uploader.requests + 1,  # the commit
        skipped_special=run.report.skipped_special,
        excluded=run.report.excluded,
        started_at=started_at,
        finished_at=finished_at,
    )
    log.info(
        "snapshot %s committed: %d files, %d bytes, %d read, %d new in %d chunks%s",
        result.snapshot_id,
        result.files,
        result.bytes,
        result.read_bytes,
        result.new_bytes,
        result.chunks_uploaded,
        f"; partial, {len(result.warnings)} warnings" if result.partial else "",
    )
    return result


__all__ = ["BackupProgress", "BackupResult", "run_backup"]
