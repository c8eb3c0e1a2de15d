"""Restore: bring a snapshot (or part of it) back into a folder, exactly and safely.

Every chunk is authenticated before a byte of it is written (`open_blob`); contents, modes,
mtimes and links come back as they were, folders' modes and mtimes last (writing into a
folder changes its mtime, and a read-only folder could not be filled). Nothing is written
outside `to` (see `restore_fs`); a place already taken is left alone unless `overwrite`.

One file's problem (a corrupt or missing chunk, a refused name) is reported by name and
the restore goes on with the others; the caller exits non-zero when `ok` is false. A disk
that fills up, or an authority that cannot be reached, stops the restore.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

from agent import logs
from agent.backup import manifest
from agent.backup.blobs import open_blob
from agent.backup.heap import release_free_memory
from agent.backup.keys import Subkeys, restore_key
from agent.backup.manifest import ManifestEntry
from agent.backup.restore_fs import Destination
from agent.backup.retry import Retrier
from agent.errors import BackupError, BlobCorrupt, EntryExists, EntryRefused, PermanentError
from agent.transport import AuthorityClient

log = logging.getLogger(logs.LOGGER)

T = TypeVar("T")

# Modes come back without setuid/setgid: a restore run as root must not mint them.
MODE_MASK = 0o1777
# Errors of the disk being written that no other entry would escape either.
_FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    created_at: str
    files: int
    bytes: int
    manifest_id: str


@dataclass
class RestoreResult:
    """What a restore did; `ok` is false when an entry failed or was refused."""

    snapshot_id: str
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    existing: list[str] = field(default_factory=list)  # left alone: no overwrite asked
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    @property
    def ok(self) -> bool:
        return not self.refused and not self.failed


def list_snapshots(
    client: AuthorityClient, credential: str, *, sleep: Callable[[float], None] = time.sleep
) -> list[Snapshot]:
    """The device's snapshots, oldest first."""
    answer = Retrier(sleep)(partial(client.list_snapshots, credential))
    snapshots: list[Snapshot] = []
    for raw in answer:
        try:
            snapshots.append(
                Snapshot(
                    snapshot_id=str(raw["snapshot_id"]),
                    created_at=str(raw.get("created_at", "")),
                    files=int(raw.get("files", 0)),
                    bytes=int(raw.get("bytes", 0)),
                    manifest_id=str(raw["manifest_id"]),
                )
            )
        except (KeyError, TypeError, ValueError):
            log.warning("the authority listed a malformed snapshot: %r", raw)
    return snapshots


def _choose(snapshots: list[Snapshot], wanted: str | None) -> Snapshot:
    if not snapshots:
        raise BackupError("this device has no snapshot yet")
    if wanted is None:
        return snapshots[-1]
    matches = [s for s in snapshots if s.snapshot_id == wanted] or [
        s for s in snapshots if s.snapshot_id.startswith(wanted)
    ]
    if len(matches) != 1:
        problem = "matches several snapshots" if matches else "is not a snapshot of this device"
        raise BackupError(f"{wanted!r} {problem}; `holdfast snapshots` lists them")
    return matches[0]


def _select(entries: list[ManifestEntry], root: str, paths: list[str]) -> list[ManifestEntry]:
    """The entries under any of `paths` (relative, or absolute under the snapshot's root),
    with the folders that hold them, so those come back with their modes too."""
    wanted: list[str] = []
    for raw in paths:
        rel = raw.strip()
        if root and (rel == root or rel.startswith(root.rstrip("/") + "/")):
            rel = rel[len(root.rstrip("/")) :]
        rel = rel.strip("/")
        if rel in ("", "."):
            return entries
        if manifest.path_problem(rel):
            raise BackupError(f"{raw!r} is not a path inside the snapshot")
        wanted.append(rel)
    if not wanted:
        return entries
    chosen = [e for e in entries if any(e.path == w or e.path.startswith(w + "/") for w in wanted)]
    absent = [
        w for w in wanted if not any(e.path == w or e.path.startswith(w + "/") for e in chosen)
    ]
    if absent:
        raise BackupError(f"not in the snapshot: {', '.join(absent)}")
    chosen_paths = {e.path for e in chosen}
    holders = {"/".join(e.parts[:i]) for e in chosen for i in range(1, len(e.parts))}
    return [e for e in entries if e.path in chosen_paths or (e.kind == "dir" and e.path in holders)]


def _consistent(entries: list[ManifestEntry], result: RestoreResult) -> list[ManifestEntry]:
    """Entries whose parents the snapshot itself has as folders (or not at all).

    A backup never descends into a link, so `a -> /` followed by `a/b` only comes from a
    hostile or broken manifest; refused here, whatever the target folder looks like.
    """
    kinds = {e.path: e.kind for e in entries}
    kept: list[ManifestEntry] = []
    for entry in entries:
        holders = ("/".join(entry.parts[:i]) for i in range(1, len(entry.parts)))
        odd = next((h for h in holders if kinds.get(h, "dir") != "dir"), None)
        if odd is None:
            kept.append(entry)
        else:
            result.refused.append(
                (entry.path, f"{odd!r} on its way is a {kinds[odd]} in the snapshot")
            )
    return kept


# A batch of chunks fetched with one request: about this many plaintext bytes (estimated
# from the files' sizes), or this many ids. A few batches per worker in flight bound the
# memory to ~8 x 4 MiB, and 20,000 small files take ~100 requests instead of 20,000.
BATCH_BYTES = 4 * 1024 * 1024
# Fetching and opening batches beside the thread that writes the files: measured, 4
# workers restored no faster than 2 (the writing is the bound) and held 70 MB more.
RESTORE_WORKERS = 2
BATCH_IDS = 512

Plain = bytes | Exception
"""A chunk's plaintext, or why this one chunk cannot be had (corrupt, not stored)."""


def _batches(files: list[ManifestEntry]) -> Iterator[deque[tuple[int, str]]]:
    """(file number, chunk id) in the order the files need them, cut into batches."""
    batch: deque[tuple[int, str]] = deque()
    size = 0
    for n, entry in enumerate(files):
        each = entry.size // max(1, len(entry.chunks))
        for cid in entry.chunks:
            batch.append((n, cid))
            size += each
            if len(batch) >= BATCH_IDS or size >= BATCH_BYTES:
                yield batch
                batch, size = deque(), 0
    if batch:
        yield batch


class _Chunks:
    """Chunk plaintexts in the order the files need them, fetched ahead in batches."""

    def __init__(
        self,
        fetch: Callable[[list[str]], dict[str, Plain]],
        files: list[ManifestEntry],
        workers: int,
    ):
        self._fetch = fetch
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="holdfast-restore")
        self._todo = _batches(files)
        self._window = 2 * max(1, workers)
        self._ahead: deque[tuple[deque[tuple[int, str]], Future[dict[str, Plain]]]] = deque()

    def _fill(self) -> None:
        while len(self._ahead) < self._window:
            batch = next(self._todo, None)
            if batch is None:
                return
            ids = list(dict.fromkeys(cid for _, cid in batch))
            self._ahead.append((batch, self._pool.submit(self._fetch, ids)))

    def _head(self, n: int) -> tuple[deque[tuple[int, str]], Future[dict[str, Plain]]] | None:
        """The batch holding file `n`'s next chunk, earlier files' leftovers dropped (a
        file refused before its first chunk, or stopped by an error, never reads them)."""
        while True:
            self._fill()
            if not self._ahead:
                return None
            batch, future = self._ahead[0]
            while batch and batch[0][0] < n:
                batch.popleft()
            if batch:
                return (batch, future) if batch[0][0] == n else None
            self._ahead.popleft()
            future.cancel()

    def of(self, n: int) -> Iterator[bytes]:
        """The plaintexts of file `n`, in order."""
        while (head := self._head(n)) is not None:
            batch, future = head
            _, cid = batch.popleft()
            plain = future.result()[cid]
            if isinstance(plain, Exception):
                raise plain
            yield plain

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _fetcher(
    client: AuthorityClient, credential: str, keys: Subkeys, retry: Retrier
) -> Callable[[list[str]], dict[str, Plain]]:
    """Fetch, authenticate and open a batch of chunks: each id's plaintext or problem."""
    one_by_one = False

    def fetch(ids: list[str]) -> dict[str, Plain]:
        nonlocal one_by_one
        plains: dict[str, Plain] = {}
        todo = list(ids)
        while todo:
            if one_by_one:
                got = [(todo[0], _get_one(todo[0]))]
            else:
                try:
                    got = retry(partial(client.get_blobs, credential, todo))
                except PermanentError as exc:
                    if exc.code != "no_such_endpoint":
                        raise
                    one_by_one = True  # an authority older than batch fetches
                    continue
            for cid, sealed in got:
                plains[cid] = _open(cid, sealed)
            todo = [cid for cid in todo if cid not in plains]
        return plains

    def _get_one(cid: str) -> bytes | None:
        try:
            return retry(partial(client.get_blob, credential, cid))
        except PermanentError as exc:
            if exc.code != "chunk_not_found":
                raise
            return None

    def _open(cid: str, sealed: bytes | None) -> Plain:
        if sealed is None:
            return PermanentError(
                "chunk_not_found", f"the authority does not hold chunk {cid[:16]}"
            )
        try:
            return open_blob(keys, cid, sealed)
        except BlobCorrupt as exc:
            return exc

    return fetch


def _checked(entry: ManifestEntry, chunks: Iterator[bytes]) -> Iterator[bytes]:
    total = 0
    for data in chunks:
        total += len(data)
        yield data
    if total != entry.size:
        raise EntryRefused(f"{entry.path}: {total} bytes restored, the snapshot says {entry.size}")


def restore(
    client: AuthorityClient,
    credential: str,
    state_dir: Path,
    to: Path,
    *,
    snapshot_id: str | None,
    paths: list[str],
    overwrite: bool,
    sleep: Callable[[float], None] = time.sleep,
    workers: int = RESTORE_WORKERS,
) -> RestoreResult:
    """Restore `paths` (all when empty) of a snapshot (the latest when None) under `to`."""
    retry = Retrier(sleep)
    snapshot = _choose(list_snapshots(client, credential, sleep=sleep), snapshot_id)
    keys = restore_key(client, credential, state_dir, retry)

    fetch = _fetcher(client, credential, keys, retry)
    try:
        plain = fetch([snapshot.manifest_id])[snapshot.manifest_id]
        if isinstance(plain, Exception):
            raise plain
        document = manifest.decode(plain)
    except BlobCorrupt as exc:
        raise BackupError(f"snapshot {snapshot.snapshot_id}'s manifest is unusable: {exc}") from exc
    result = RestoreResult(snapshot.snapshot_id, refused=list(document.refused))
    selected = _select(_consistent(document.entries, result), document.root, paths)
    destination = Destination(to)
    try:
        _restore_entries(result, destination, selected, fetch, overwrite=overwrite, workers=workers)
    finally:
        destination.close()
        release_free_memory()
    for path, why in result.refused + result.failed:
        log.warning("restore: %s: %s", path, why)
    log.info(
        "restored snapshot %s into %s: %d files, %d folders, %d links, %d bytes; "
        "%d left as they were, %d refused, %d failed",
        result.snapshot_id,
        to,
        result.files,
        result.dirs,
        result.symlinks,
        result.bytes,
        len(result.existing),
        len(result.refused),
        len(result.failed),
    )
    return result


def _restore_entries(
    result: RestoreResult,
    destination: Destination,
    selected: list[ManifestEntry],
    fetch: Callable[[list[str]], dict[str, Plain]],
    *,
    overwrite: bool,
    workers: int,
) -> None:
    # Folders first, then files, then links: no file can be written through a link this
    # restore made. Folder modes and mtimes last, deepest first.
    touched: list[ManifestEntry] = []
    for entry in (e for e in selected if e.kind == "dir"):
        done, _ = _attempt(
            result, entry, partial(destination.make_dir, entry.parts, overwrite=overwrite)
        )
        if done:
            touched.append(entry)
    files = [
        entry
        for entry in selected
        if entry.kind == "file"
        and _attempt(result, entry, partial(_free, destination, entry, overwrite))[0]
    ]
    chunks = _Chunks(fetch, files, workers)
    try:
        for n, entry in enumerate(files):
            content = _checked(entry, chunks.of(n))
            mode = entry.mode & MODE_MASK
            write = partial(
                destination.write_file,
                entry.parts,
                content,
                mode,
                entry.mtime_ns,
                overwrite=overwrite,
            )
            done, written = _attempt(result, entry, write)
            if done:
                result.files += 1
                result.bytes += written or 0
    finally:
        chunks.close()
    for entry in (e for e in selected if e.kind == "symlink"):
        link = partial(
            destination.make_symlink,
            entry.parts,
            entry.target or "",
            entry.mtime_ns,
            overwrite=overwrite,
        )
        if _attempt(result, entry, link)[0]:
            result.symlinks += 1
    for entry in reversed(touched):
        meta = partial(
            destination.set_dir_meta, entry.parts, entry.mode & MODE_MASK, entry.mtime_ns
        )
        if _attempt(result, entry, meta)[0]:
            result.dirs += 1


def _free(destination: Destination, entry: ManifestEntry, overwrite: bool) -> None:
    """Refuse a taken place before fetching the entry's chunks, not after."""
    if not overwrite and destination.kind(entry.parts) is not None:
        raise EntryExists(f"{entry.path}: already there")


def _attempt(
    result: RestoreResult, entry: ManifestEntry, action: Callable[[], T]
) -> tuple[bool, T | None]:
    """Run one entry's action: (True, its value), or (False, None) with the failure
    recorded under the entry's name."""
    try:
        return True, action()
    except EntryExists:
        result.existing.append(entry.path)
    except EntryRefused as exc:
        result.refused.append((entry.path, str(exc).removeprefix(f"{entry.path}: ")))
    except BlobCorrupt as exc:
        result.failed.append((entry.path, str(exc)))
    except PermanentError as exc:
        if exc.code != "chunk_not_found":
            raise
        result.failed.append((entry.path, str(exc)))
    except OSError as exc:
        if exc.errno in _FATAL_ERRNOS:
            raise
        result.failed.append((entry.path, exc.strerror or str(exc)))
    return False, None


__all__ = ["RestoreResult", "Snapshot", "list_snapshots", "restore"]
