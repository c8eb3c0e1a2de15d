"""The `ChunkStore` contract, run against every implementation.

A new backend (S3-compatible, say) joins by adding itself to `IMPLEMENTATIONS`; passing
this suite is what makes it a store. `MemoryChunkStore` below is a second participant: it
shows the suite tests the contract, not one implementation's files.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from authority.db import Database
from authority.errors import InvalidInput, NotFound, Unavailable
from authority.storage import (
    ChunkStore,
    FileChunkStore,
    IndexEntry,
    check_archive,
    check_pack,
    prefix_within,
)

ARCHIVE_A = "0b7c3c4e-8f6a-4f7e-9a53-6a0b1f3d2c11"
ARCHIVE_B = "5d2e9f10-3b4c-4d8e-8f71-2c6a9b0e4d22"


class MemoryChunkStore:
    """Everything in dictionaries: the smallest store that keeps the contract."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._packs: dict[tuple[str, str], bytes] = {}
        self._index: dict[tuple[str, str], tuple[str, int, int]] = {}

    def missing(self, archive: str, ids: Sequence[str]) -> list[str]:
        check_archive(archive)
        with self._lock:
            return [i for i in dict.fromkeys(ids) if (archive, i) not in self._index]

    def has(self, archive: str, chunk_id: str) -> bool:
        return not self.missing(archive, [chunk_id])

    def put_pack(self, archive: str, pack_id: str, data: bytes, index: Sequence[IndexEntry]) -> int:
        check_archive(archive)
        check_pack(pack_id, data, index)
        with self._lock:
            self._packs[(archive, pack_id)] = data
            for chunk_id, offset, length in index:
                self._index.setdefault((archive, chunk_id), (pack_id, offset, length))
        return len(index)

    def get_blob(self, archive: str, chunk_id: str) -> bytes:
        with self._lock:
            where = self._index.get((archive, chunk_id))
            if where is None:
                raise NotFound(f"chunk {chunk_id} is not stored", code="chunk_not_found")
            pack_id, offset, length = where
            return self._packs[(archive, pack_id)][offset : offset + length]

    def get_blobs(
        self, archive: str, ids: Sequence[str], max_bytes: int
    ) -> list[tuple[str, bytes | None]]:
        check_archive(archive)
        wanted = list(dict.fromkeys(ids))
        with self._lock:
            lengths = {
                i: self._index[(archive, i)][2] for i in wanted if (archive, i) in self._index
            }
        return [
            (i, self.get_blob(archive, i) if i in lengths else None)
            for i in prefix_within(wanted, lengths, max_bytes)
        ]

    def usage(self, archive: str) -> int:
        with self._lock:
            return sum(len(d) for (a, _), d in self._packs.items() if a == archive)


def _file_store(tmp_path: Path, database: Database) -> ChunkStore:
    return FileChunkStore(tmp_path / "store", database)


def _memory_store(tmp_path: Path, database: Database) -> ChunkStore:
    return MemoryChunkStore()


IMPLEMENTATIONS: dict[str, Callable[[Path, Database], ChunkStore]] = {
    "file": _file_store,
    "memory": _memory_store,
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def store(request: pytest.FixtureRequest, tmp_path: Path, database: Database) -> ChunkStore:
    return IMPLEMENTATIONS[request.param](tmp_path, database)


def chunk_id(content: bytes) -> str:
    return hashlib.blake2b(content, digest_size=32).hexdigest()


def make_pack(*blobs: bytes) -> tuple[str, bytes, list[IndexEntry]]:
    """A pack of `blobs`: its id, its bytes, its index."""
    index: list[IndexEntry] = []
    offset = 0
    for blob in blobs:
        index.append((chunk_id(blob), offset, len(blob)))
        offset += len(blob)
    data = b"".join(blobs)
    return hashlib.sha256(data).hexdigest(), data, index


def test_blobs_are_missing_until_their_pack_is_stored(store: ChunkStore) -> None:
    pack_id, data, index = make_pack(b"first blob", b"second blob")
    ids = [entry[0] for entry in index]
    assert store.missing(ARCHIVE_A, ids) == ids
    assert not store.has(ARCHIVE_A, ids[0])

    assert store.put_pack(ARCHIVE_A, pack_id, data, index) == 2

    assert store.missing(ARCHIVE_A, ids) == []
    assert store.has(ARCHIVE_A, ids[0]) and store.has(ARCHIVE_A, ids[1])
    assert store.usage(ARCHIVE_A) == len(data)


def test_missing_keeps_the_order_given_and_names_each_id_once(store: ChunkStore) -> None:
    pack_id, data, index = make_pack(b"stored")
    store.put_pack(ARCHIVE_A, pack_id, data, index)
    absent = [chunk_id(b"x"), chunk_id(b"y")]
    asked = [absent[1], index[0][0], absent[0], absent[1]]
    assert store.missing(ARCHIVE_A, asked) == [absent[1], absent[0]]


def test_missing_answers_for_more_ids_than_one_database_query_takes(store: ChunkStore) -> None:
    pack_id, data, index = make_pack(*(f"blob {n}".encode() for n in range(5)))
    store.put_pack(ARCHIVE_A, pack_id, data, index)
    absent = [chunk_id(f"absent {n}".encode()) for n in range(2500)]
    stored = [entry[0] for entry in index]
    assert store.missing(ARCHIVE_A, absent + stored) == absent


def test_storing_the_same_pack_again_changes_nothing(store: ChunkStore) -> None:
    pack_id, data, index = make_pack(b"alpha", b"beta")
    first = store.put_pack(ARCHIVE_A, pack_id, data, index)
    again = store.put_pack(ARCHIVE_A, pack_id, data, index)
    assert first == again == 2
    assert store.get_blob(ARCHIVE_A, index[1][0]) == b"beta"
    assert store.usage(ARCHIVE_A) == len(data)


def test_get_blob_returns_the_uploaded_bytes_exactly(store: ChunkStore) -> None:
    blobs = [os.urandom(1000), os.urandom(1), os.urandom(70_000)]
    pack_id, data, index = make_pack(*blobs)
    store.put_pack(ARCHIVE_A, pack_id, data, index)
    for blob, (cid, _, _) in zip(blobs, index, strict=True):
        assert store.get_blob(ARCHIVE_A, cid) == blob


def test_an_absent_blob_is_not_found(store: ChunkStore) -> None:
    with pytest.raises(NotFound) as exc:
        store.get_blob(ARCHIVE_A, chunk_id(b"never stored"))
    assert exc.value.code == "chunk_not_found"


def test_get_blobs_answers_in_the_order_asked_each_once_none_when_absent(
    store: ChunkStore,
) -> None:
    first = make_pack(b"one", b"two")
    second = make_pack(b"three")
    for pack_id, data, index in (first, second):
        store.put_pack(ARCHIVE_A, pack_id, data, index)
    one, two, three = first[2][0][0], first[2][1][0], second[2][0][0]
    absent = chunk_id(b"never stored")
    asked = [three, absent, two, one, three]
    assert store.get_blobs(ARCHIVE_A, asked, 1 << 20) == [
        (three, b"three"),
        (absent, None),
        (two, b"two"),
        (one, b"one"),
    ]
    # Another archive holds none of them.
    assert store.get_blobs(ARCHIVE_B, [one], 1 << 20) == [(one, None)]


def test_get_blobs_stops_at_max_bytes_but_always_answers_the_first(store: ChunkStore) -> None:
    blobs = [bytes([n]) * 100 for n in range(5)]
    pack_id, data, index = make_pack(*blobs)
    store.put_pack(ARCHIVE_A, pack_id, data, index)
    ids = [entry[0] for entry in index]
    assert [b for _, b in store.get_blobs(ARCHIVE_A, ids, 250)] == blobs[:2]
    assert [b for _, b in store.get_blobs(ARCHIVE_A, ids, 10)] == blobs[:1]
    assert [b for _, b in store.get_blobs(ARCHIVE_A, ids, 500)] == blobs


def test_a_pack_whose_bytes_are_not_its_id_is_refused_and_nothing_is_stored(
    store: ChunkStore,
) -> None:
    pack_id, data, index = make_pack(b"genuine one", b"genuine two")
    damaged = b"G" + data[1:]
    with pytest.raises(InvalidInput) as exc:
        store.put_pack(ARCHIVE_A, pack_id, damaged, index)
    assert exc.value.code == "pack_hash_mismatch"
    assert store.missing(ARCHIVE_A, [e[0] for e in index]) == [e[0] for e in index]
    assert store.usage(ARCHIVE_A) == 0


@pytest.mark.parametrize(
    "entry",
    [
        ("{id}", 0, 99),  # past the end
        ("{id}", -1, 2),
        ("{id}", 3, 0),  # empty
        ("NOT-HEX", 0, 2),
        ("{ID}", 0, 2),  # upper case: one spelling per id
    ],
)
def test_an_index_entry_outside_the_pack_or_malformed_is_refused(
    store: ChunkStore, entry: IndexEntry
) -> None:
    pack_id, data, _ = make_pack(b"ten bytes!")
    cid = chunk_id(b"ten bytes!")
    bad = (entry[0].format(id=cid, ID=cid.upper()), entry[1], entry[2])
    with pytest.raises(InvalidInput) as exc:
        store.put_pack(ARCHIVE_A, pack_id, data, [bad])
    assert exc.value.code == "invalid_pack_index"
    assert store.usage(ARCHIVE_A) == 0
    assert store.missing(ARCHIVE_A, [cid]) == [cid]


def test_an_index_naming_one_chunk_twice_or_none_is_refused(store: ChunkStore) -> None:
    pack_id, data, index = make_pack(b"once")
    for bad in ([], [index[0], index[0]]):
        with pytest.raises(InvalidInput) as exc:
            store.put_pack(ARCHIVE_A, pack_id, data, bad)
        assert exc.value.code == "invalid_pack_index"


def test_a_pack_id_that_is_not_a_sha256_is_refused(store: ChunkStore) -> None:
    _, data, index = make_pack(b"blob")
    with pytest.raises(InvalidInput) as exc:
        store.put_pack(ARCHIVE_A, "../../etc/passwd", data, index)
    assert exc.value.code == "invalid_pack_id"


def test_archives_are_isolated(store: ChunkStore) -> None:
    pack_id, data, index = make_pack(b"belongs to A")
    store.put_pack(ARCHIVE_A, pack_id, data, index)
    cid = index[0][0]

    assert store.missing(ARCHIVE_B, [cid]) == [cid]
    assert not store.has(ARCHIVE_B, cid)
    with pytest.raises(NotFound):
        store.get_blob(ARCHIVE_B, cid)
    assert store.usage(ARCHIVE_B) == 0

    # B storing the same bytes does not disturb A.
    store.put_pack(ARCHIVE_B, pack_id, data, index)
    assert store.get_blob(ARCHIVE_A, cid) == store.get_blob(ARCHIVE_B, cid) == b"belongs to A"


def test_an_archive_name_that_could_escape_the_store_is_refused(store: ChunkStore) -> None:
    pack_id, data, index = make_pack(b"blob")
    for name in ("..", "a/b", "", ".hidden"):
        with pytest.raises(InvalidInput):
            store.put_pack(name, pack_id, data, index)


def test_a_blob_stored_again_in_another_pack_keeps_one_location(store: ChunkStore) -> None:
    first_id, first, first_index = make_pack(b"shared", b"one")
    second_id, second, second_index = make_pack(b"two", b"shared")
    store.put_pack(ARCHIVE_A, first_id, first, first_index)
    assert store.put_pack(ARCHIVE_A, second_id, second, second_index) == 2
    assert store.get_blob(ARCHIVE_A, chunk_id(b"shared")) == b"shared"
    assert store.get_blob(ARCHIVE_A, chunk_id(b"two")) == b"two"


def test_two_threads_storing_the_same_pack_both_succeed(store: ChunkStore) -> None:
    pack_id, data, index = make_pack(*(os.urandom(50_000) for _ in range(8)))
    start = threading.Barrier(2)
    answers: list[int] = []
    errors: list[BaseException] = []

    def upload() -> None:
        start.wait()
        try:
            answers.append(store.put_pack(ARCHIVE_A, pack_id, data, index))
        except BaseException as exc:  # reported below, with the thread's answer
            errors.append(exc)

    threads = [threading.Thread(target=upload) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert answers == [8, 8]
    assert store.missing(ARCHIVE_A, [e[0] for e in index]) == []
    assert store.usage(ARCHIVE_A) == len(data)
    assert store.get_blob(ARCHIVE_A, index[7][0]) == data[index[7][1] :]


# FileChunkStore's own promises, beyond the contract: where and how packs land on disk.


@pytest.fixture
def file_store(tmp_path: Path, database: Database) -> Iterator[FileChunkStore]:
    yield FileChunkStore(tmp_path / "store", database)


def test_packs_fan_out_by_the_first_two_hex_digits_and_are_private(
    file_store: FileChunkStore,
) -> None:
    pack_id, data, index = make_pack(b"on disk")
    file_store.put_pack(ARCHIVE_A, pack_id, data, index)
    path = file_store.root / ARCHIVE_A / "packs" / pack_id[:2] / pack_id
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for folder in (file_store.root, file_store.root / ARCHIVE_A, path.parent.parent, path.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert [p.name for p in path.parent.iterdir()] == [pack_id]  # no temporary file left


def test_a_refused_pack_leaves_no_file(file_store: FileChunkStore) -> None:
    pack_id, _, index = make_pack(b"genuine")
    with pytest.raises(InvalidInput):
        file_store.put_pack(ARCHIVE_A, pack_id, b"forged!", index)
    assert not file_store.root.exists() or list(file_store.root.rglob("*")) == []


def test_a_pack_lost_from_disk_is_reported_not_served_short(file_store: FileChunkStore) -> None:
    pack_id, data, index = make_pack(b"soon gone")
    file_store.put_pack(ARCHIVE_A, pack_id, data, index)
    file_store.pack_path(ARCHIVE_A, pack_id).unlink()
    for read in (
        lambda: file_store.get_blob(ARCHIVE_A, index[0][0]),
        lambda: file_store.get_blobs(ARCHIVE_A, [index[0][0]], 1 << 20),
    ):
        with pytest.raises(Unavailable) as exc:
            read()
        assert exc.value.code == "store_damaged"


def test_a_pack_written_before_an_interrupted_index_is_indexed_on_upload_again(
    file_store: FileChunkStore,
) -> None:
    pack_id, data, index = make_pack(b"written, never indexed")
    path = file_store.pack_path(ARCHIVE_A, pack_id)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)  # as a crash between the file and the index leaves it
    assert file_store.missing(ARCHIVE_A, [index[0][0]]) == [index[0][0]]
    file_store.put_pack(ARCHIVE_A, pack_id, data, index)
    assert file_store.get_blob(ARCHIVE_A, index[0][0]) == data


def test_a_database_without_insert_or_ignore_still_stores_a_pack_twice_idempotently(
    tmp_path: Path, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Neither SQLite nor PostgreSQL: the row-by-row path with savepoints.
    monkeypatch.setattr(database.engine.dialect, "name", "other")
    store = FileChunkStore(tmp_path / "store", database)
    pack_id, data, index = make_pack(b"one", b"two")
    assert store.put_pack("device-a", pack_id, data, index) == 2
    assert store.put_pack("device-a", pack_id, data, index) == 2
    assert store.missing("device-a", [entry[0] for entry in index]) == []
