"""The backup store: each device's archive of packs, and the index of the blobs in them.

    DATA/store/<archive>/packs/<first 2 hex of the pack id>/<pack id>    mode 0600
    table `packs`  (archive, pack_id, size)                   what an archive occupies
    table `chunks` (archive, chunk_id, pack_id, offset, length)  where each blob lives

An archive is a device's GUID. Blobs arrive encrypted and under keyed ids (see
docs/backup-design.md), so the store checks shapes and hashes, never content. The two-hex
fan-out keeps folders small: a million packs make 256 folders of about 4,000 entries.

`ChunkStore` is the contract; `FileChunkStore` keeps packs on the local disk and the index
in the authority's database. tests/unit/test_storage_conformance.py is the one suite every
implementation passes, so an S3-compatible backend can be added against the same tests.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from authority.datadir import write_atomic
from authority.db import Database, StoredChunk, StoredPack
from authority.errors import InvalidInput, NotFound, Unavailable

log = logging.getLogger("authority")

IndexEntry = tuple[str, int, int]
"""One blob of a pack: (chunk id, offset in the pack, length)."""

# Lowercase only: the hex digests blake3 and SHA-256 produce. One spelling per id keeps
# the index and the file names free of case duplicates.
_HEX_ID = re.compile(r"[0-9a-f]{64}")
# Archive names become folder names: no dots, no separators, so never `..` or a path.
_ARCHIVE = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,63}")
# SQLite allows 999 bound variables per statement in older builds; stay under it.
QUERY_BATCH = 900
# Built once (an IN list expands at execution): every backup asks, and building the
# statement anew cost about as much as running it.
_PRESENT = select(StoredChunk.chunk_id).where(
    StoredChunk.archive == bindparam("archive"),
    StoredChunk.chunk_id.in_(bindparam("ids", expanding=True)),
)


class ChunkStore(Protocol):
    """Where the blobs of every archive are kept. Every implementation MUST:

    - keep archives apart: nothing stored in one archive is visible through another;
    - make `put_pack` all or nothing: a refused pack leaves nothing visible, and a blob
      becomes visible (`has`, `missing`, `get_blob`) only once its pack is durably stored;
    - make `put_pack` idempotent: the same pack again changes nothing and answers the same,
      including when two callers store it at the same moment;
    - be safe to call from several threads at once;
    - refuse what `check_pack` refuses, with its codes (InvalidInput, HTTP 422).
    """

    def missing(self, archive: str, ids: Sequence[str]) -> list[str]:
        """The ids not stored in `archive`, in the order given, each once."""

    def has(self, archive: str, chunk_id: str) -> bool:
        """Whether the blob is stored in `archive`."""

    def put_pack(self, archive: str, pack_id: str, data: bytes, index: Sequence[IndexEntry]) -> int:
        """Store a pack and index its blobs; the number of blobs its index lists."""

    def get_blob(self, archive: str, chunk_id: str) -> bytes:
        """The blob's bytes, exactly as uploaded; NotFound (`chunk_not_found`) if absent."""

    def get_blobs(
        self, archive: str, ids: Sequence[str], max_bytes: int
    ) -> list[tuple[str, bytes | None]]:
        """The blobs of `ids` (each once, in the order given), None for one not stored.

        The answer is a prefix: it stops before its blobs pass `max_bytes` in total, but
        always holds the first id's; the caller asks again for the rest.
        """

    def usage(self, archive: str) -> int:
        """The bytes the archive's packs occupy (each pack counted once)."""


def check_archive(archive: str) -> str:
    if not _ARCHIVE.fullmatch(archive):
        raise InvalidInput(f"archive name {archive!r} is not valid", code="invalid_archive")
    return archive


def check_chunk_id(chunk_id: str) -> str:
    if not _HEX_ID.fullmatch(chunk_id):
        raise InvalidInput(
            f"chunk id {chunk_id[:80]!r} is not 64 lowercase hex digits", code="invalid_chunk_id"
        )
    return chunk_id


def check_pack_id(pack_id: str) -> str:
    if not _HEX_ID.fullmatch(pack_id):
        raise InvalidInput(
            f"pack id {pack_id[:80]!r} is not 64 lowercase hex digits", code="invalid_pack_id"
        )
    return pack_id


def check_pack(pack_id: str, data: bytes, index: Sequence[IndexEntry]) -> None:
    """Refuse a pack whose id is not its SHA-256 or whose index does not fit its bytes."""
    check_pack_id(pack_id)
    if not index:
        raise InvalidInput("the pack index lists no blobs", code="invalid_pack_index")
    seen: set[str] = set()
    for n, (chunk_id, offset, length) in enumerate(index):
        if not _HEX_ID.fullmatch(chunk_id):
            raise InvalidInput(
                f"pack index entry {n}: chunk id is not 64 lowercase hex digits",
                code="invalid_pack_index",
            )
        if chunk_id in seen:
            raise InvalidInput(
                f"pack index entry {n}: chunk {chunk_id} is listed twice",
                code="invalid_pack_index",
            )
        seen.add(chunk_id)
        if offset < 0 or length < 1 or offset + length > len(data):
            raise InvalidInput(
                f"pack index entry {n}: bytes {offset}..{offset + length} are not inside "
                f"the pack of {len(data)} bytes",
                code="invalid_pack_index",
            )
    # Last: the index checks are cheap, hashing 16 MiB is not.
    actual = hashlib.sha256(data).hexdigest()
    if actual != pack_id:
        raise InvalidInput(
            f"the pack's SHA-256 is {actual}, not its id {pack_id}: damaged in transit?",
            code="pack_hash_mismatch",
        )


def prefix_within(wanted: list[str], lengths: dict[str, int], max_bytes: int) -> list[str]:
    """The leading ids of `wanted` whose blobs fit in `max_bytes` together (at least one);
    an id not stored costs nothing."""
    total = 0
    for n, cid in enumerate(wanted):
        total += lengths.get(cid, 0)
        if total > max_bytes and n > 0:
            return wanted[:n]
    return wanted


def _insert_ignoring_duplicates(
    session: Session, model: type[StoredChunk | StoredPack], rows: list[dict[str, Any]]
) -> None:
    """INSERT ... ON CONFLICT DO NOTHING: two uploads of one pack both succeed.

    Writing before any read also lets SQLite wait for the write lock (busy_timeout) instead
    of failing a transaction that began as a reader.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        session.execute(sqlite.insert(model).on_conflict_do_nothing(), rows)
    elif dialect == "postgresql":
        session.execute(postgresql.insert(model).on_conflict_do_nothing(), rows)
    else:
        # Any other database: one row at a time, a duplicate simply skipped.
        for row in rows:
            try:
                with session.begin_nested():
                    session.execute(insert(model), row)
            except IntegrityError:
                pass


class FileChunkStore:
    """Packs as files under `root`, the index in the authority's database."""

    def __init__(self, root: Path, db: Database) -> None:
        self.root = root
        self.db = db

    def pack_path(self, archive: str, pack_id: str) -> Path:
        return self.root / check_archive(archive) / "packs" / pack_id[:2] / pack_id

    def missing(self, archive: str, ids: Sequence[str]) -> list[str]:
        check_archive(archive)
        wanted = list(dict.fromkeys(check_chunk_id(i) for i in ids))
        present: set[str] = set()
        with self.db.transaction() as session:
            for start in range(0, len(wanted), QUERY_BATCH):
                batch = wanted[start : start + QUERY_BATCH]
                present.update(session.scalars(_PRESENT, {"archive": archive, "ids": batch}))
        return [i for i in wanted if i not in present]

    def has(self, archive: str, chunk_id: str) -> bool:
        return not self.missing(archive, [chunk_id])

    def put_pack(self, archive: str, pack_id: str, data: bytes, index: Sequence[IndexEntry]) -> int:
        check_archive(archive)
        check_pack(pack_id, data, index)
        self._write_pack(self.pack_path(archive, pack_id), data)
        # The file is durable before the index names it: a crash in between leaves an
        # unindexed pack, which the agent uploads again (idempotently), never a dangling row.
        with self.db.transaction() as session:
            _insert_ignoring_duplicates(
                session,
                StoredChunk,
                [
                    {
                        "archive": archive,
                        "chunk_id": chunk_id,
                        "pack_id": pack_id,
                        "offset": offset,
                        "length": length,
                    }
                    for chunk_id, offset, length in index
                ],
            )
            _insert_ignoring_duplicates(
                session,
                StoredPack,
                [{"archive": archive, "pack_id": pack_id, "size": len(data)}],
            )
        return len(index)

    def get_blob(self, archive: str, chunk_id: str) -> bytes:
        ((_, blob),) = self.get_blobs(archive, [chunk_id], 0)
        if blob is None:
            raise NotFound(f"chunk {chunk_id} is not stored", code="chunk_not_found")
        return blob

    def get_blobs(
        self, archive: str, ids: Sequence[str], max_bytes: int
    ) -> list[tuple[str, bytes | None]]:
        check_archive(archive)
        wanted = list(dict.fromkeys(check_chunk_id(i) for i in ids))
        where: dict[str, tuple[str, int, int]] = {}
        with self.db.transaction() as session:
            for start in range(0, len(wanted), QUERY_BATCH):
                batch = wanted[start : start + QUERY_BATCH]
                rows = session.execute(
                    select(
                        StoredChunk.chunk_id,
                        StoredChunk.pack_id,
                        StoredChunk.offset,
                        StoredChunk.length,
                    ).where(StoredChunk.archive == archive, StoredChunk.chunk_id.in_(batch))
                )
                where.update((cid, (pack, offset, length)) for cid, pack, offset, length in rows)
        chosen = prefix_within(wanted, {cid: at[2] for cid, at in where.items()}, max_bytes)
        # Each pack opened once, read in offset order: a restore asks for a file's chunks
        # together, and they mostly sit side by side in one pack.
        blobs: dict[str, bytes] = {}
        by_pack: dict[str, list[tuple[int, int, str]]] = {}
        for cid in chosen:
            if cid in where:
                pack_id, offset, length = where[cid]
                by_pack.setdefault(pack_id, []).append((offset, length, cid))
        for pack_id, spans in by_pack.items():
            blobs.update(self._read_spans(archive, pack_id, sorted(spans)))
        return [(cid, blobs.get(cid)) for cid in chosen]

    def _read_spans(
        self, archive: str, pack_id: str, spans: list[tuple[int, int, str]]
    ) -> Iterator[tuple[str, bytes]]:
        path = self.pack_path(archive, pack_id)
        try:
            with path.open("rb") as f:
                for offset, length, cid in spans:
                    f.seek(offset)
                    blob = f.read(length)
                    if len(blob) != length:
                        break
                    yield cid, blob
                else:
                    return
        except FileNotFoundError:
            pass
        # Indexed but not on disk as written: damage outside the authority (a restored
        # disk, a hand-deleted file). Say so loudly; the agent can only retry.
        log.error("pack %s of archive %s is missing or truncated", path, archive)
        raise Unavailable(
            f"pack {pack_id} is indexed but damaged; an administrator must check the store",
            code="store_damaged",
        )

    def usage(self, archive: str) -> int:
        check_archive(archive)
        with self.db.transaction() as session:
            total = session.scalar(
                select(func.coalesce(func.sum(StoredPack.size), 0)).where(
                    StoredPack.archive == archive
                )
            )
        return int(total or 0)

    def _write_pack(self, path: Path, data: bytes) -> None:
        try:
            if path.stat().st_size == len(data):
                # Same name, same size: this very pack, written atomically by an earlier
                # upload (the name is the content's hash). Not writing 16 MiB again.
                return
        except FileNotFoundError:
            pass
        self._make_folders(path.parent)
        write_atomic(path, data)

    def _make_folders(self, folder: Path) -> None:
        # One level at a time: mkdir(parents=True) would give the parents the umask's mode,
        # and the store holds every device's backups.
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for level in reversed(folder.relative_to(self.root).parents[:-1]):
            (self.root / level).mkdir(mode=0o700, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)


__all__ = [
    "QUERY_BATCH",
    "ChunkStore",
    "FileChunkStore",
    "IndexEntry",
    "check_archive",
    "check_chunk_id",
    "check_pack",
    "check_pack_id",
    "prefix_within",
]
