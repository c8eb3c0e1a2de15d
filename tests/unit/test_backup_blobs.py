"""Keys, chunk ids, sealed blobs, the streaming chunker, packs and the retry wrapper."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import stat
import tracemalloc
from pathlib import Path

import pytest
from fastcdc import fastcdc  # type: ignore[import-untyped]

from agent.backup.blobs import BLOB_OVERHEAD, FLAG_ZSTD, chunk_id, open_blob, seal
from agent.backup.chunker import AVG_SIZE, MAX_SIZE, MIN_SIZE, iter_chunks
from agent.backup.keys import KEY_FILE, MasterKey, Subkeys, load_master_key, save_master_key
from agent.backup.packer import INDEX_HEADER_BYTES, PACK_BYTES, Packer, parse_index
from agent.backup.retry import Retrier
from agent.errors import BackupError, BlobCorrupt, PermanentError, TransientError

KEYS = Subkeys.from_master(b"\x01" * 32)
OTHER = Subkeys.from_master(b"\x02" * 32)


def test_subkeys_are_distinct_and_derived_deterministically() -> None:
    again = Subkeys.from_master(b"\x01" * 32)
    assert again == KEYS
    assert KEYS.id_key != KEYS.encryption_key
    assert len(KEYS.id_key) == len(KEYS.encryption_key) == 32


def test_the_key_file_is_private_versioned_and_round_trips(tmp_path: Path) -> None:
    key = MasterKey.new()
    save_master_key(tmp_path, key)
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    body = json.loads((tmp_path / KEY_FILE).read_text())
    assert body["version"] == 1
    assert load_master_key(tmp_path) == key
    assert load_master_key(tmp_path / "none") is None


def test_a_damaged_key_file_stops_the_run_instead_of_making_a_new_key(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text('{"version": 1, "key": "short"}')
    with pytest.raises(BackupError, match="malformed"):
        load_master_key(tmp_path)


def test_chunk_ids_are_keyed() -> None:
    data = b"a well-known file"
    assert chunk_id(KEYS, data) == chunk_id(KEYS, data)
    assert chunk_id(KEYS, data) != chunk_id(OTHER, data)
    assert chunk_id(KEYS, data) != hashlib.sha256(data).hexdigest()
    assert len(chunk_id(KEYS, data)) == 64


def test_compressible_data_is_compressed_and_random_data_stored_raw() -> None:
    text = b"the same line again\n" * 1000
    sealed = seal(KEYS, chunk_id(KEYS, text), text)
    assert sealed[0] == 1 and sealed[1] == FLAG_ZSTD
    assert len(sealed) < len(text) // 10
    noise = os.urandom(10_000)
    raw = seal(KEYS, chunk_id(KEYS, noise), noise)
    assert raw[1] == 0
    assert len(raw) == len(noise) + BLOB_OVERHEAD
    assert open_blob(KEYS, chunk_id(KEYS, text), sealed) == text
    assert open_blob(KEYS, chunk_id(KEYS, noise), raw) == noise


def test_sealing_twice_uses_fresh_nonces() -> None:
    cid = chunk_id(KEYS, b"x")
    assert seal(KEYS, cid, b"x") != seal(KEYS, cid, b"x")


@pytest.mark.parametrize("position", [0, 1, 5, 20, -1])
def test_any_changed_byte_is_caught(position: int) -> None:
    data = b"important numbers 12345\n" * 100
    cid = chunk_id(KEYS, data)
    blob = bytearray(seal(KEYS, cid, data))
    blob[position] ^= 0x01
    with pytest.raises(BlobCorrupt) as caught:
        open_blob(KEYS, cid, bytes(blob))
    assert caught.value.chunk_id == cid


def test_a_blob_asked_for_under_another_id_or_key_fails_authentication() -> None:
    a, b = b"first", b"second"
    blob_a = seal(KEYS, chunk_id(KEYS, a), a)
    with pytest.raises(BlobCorrupt, match="failed authentication"):
        open_blob(KEYS, chunk_id(KEYS, b), blob_a)
    with pytest.raises(BlobCorrupt, match="failed authentication"):
        open_blob(OTHER, chunk_id(KEYS, a), blob_a)
    with pytest.raises(BlobCorrupt, match="truncated"):
        open_blob(KEYS, chunk_id(KEYS, a), blob_a[:10])


def test_streaming_chunks_equal_fastcdc_over_the_whole_file() -> None:
    data = os.urandom(20 * 1024 * 1024) + bytes(10 * 1024 * 1024) + os.urandom(3 * 1024 * 1024)
    whole = [
        data[c.offset : c.offset + c.length] for c in fastcdc(data, MIN_SIZE, AVG_SIZE, MAX_SIZE)
    ]
    assert list(iter_chunks(io.BytesIO(data))) == whole
    # Short reads and the smallest window give the same cut points.
    assert list(iter_chunks(io.BufferedReader(io.BytesIO(data), 4096), window=MAX_SIZE)) == whole
    sizes = [len(c) for c in whole]
    assert all(MIN_SIZE <= s <= MAX_SIZE for s in sizes[:-1])


def test_small_and_empty_files() -> None:
    assert list(iter_chunks(io.BytesIO(b""))) == []
    assert list(iter_chunks(io.BytesIO(b"tiny"))) == [b"tiny"]


def test_chunking_a_large_file_uses_bounded_memory(tmp_path: Path) -> None:
    big = tmp_path / "sparse.bin"
    with open(big, "wb") as f:
        f.truncate(256 * 1024 * 1024)
    tracemalloc.start()
    try:
        with open(big, "rb", buffering=0) as f:
            total = sum(len(c) for c in iter_chunks(f))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 256 * 1024 * 1024
    # The window, one chunk, the tail moved to the front: 32 MiB whatever the file size.
    assert peak < 5 * MAX_SIZE


def test_a_pack_is_named_by_its_sha256_and_indexes_its_blobs() -> None:
    packer = Packer()
    assert packer.add("a" * 64, b"one")
    assert packer.add("b" * 64, b"three")
    assert not packer.add("a" * 64, b"one")  # the same chunk twice is packed once
    pack = packer.finish()
    assert pack.pack_id == hashlib.sha256(b"onethree").hexdigest()
    assert parse_index(pack.index_header) == [("a" * 64, 0, 3), ("b" * 64, 3, 5)]
    assert pack.chunk_ids == ("a" * 64, "b" * 64)
    assert len(packer) == 0


def test_a_pack_closes_at_its_size_or_its_index_header_limit() -> None:
    packer = Packer()
    assert packer.fits(PACK_BYTES * 2)  # an empty pack takes anything: a huge manifest
    packer.add("c" * 64, bytes(PACK_BYTES - 10))
    assert not packer.fits(11)
    packer.finish()
    n = 0
    while packer.fits(10):
        packer.add(f"{n:064x}", b"x" * 10)
        n += 1
    assert 90 <= n <= 110
    header = packer.finish().index_header
    assert len(header) <= INDEX_HEADER_BYTES
    assert len(json.loads(base64.b64decode(header))) == n


def test_the_retrier_retries_transient_errors_with_backoff_and_no_real_waiting() -> None:
    sleeps: list[float] = []
    outcomes: list[Exception | str] = [
        TransientError("x", "busy"),
        TransientError("x", "busy"),
        "ok",
    ]

    def operation() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    retrier = Retrier(sleeps.append, rand=lambda: 1.0)
    assert retrier(operation) == "ok"
    assert sleeps == [1.0, 2.0]


def test_the_retrier_gives_up_after_three_attempts_and_never_retries_a_refusal() -> None:
    sleeps: list[float] = []
    calls = 0

    def down() -> None:
        nonlocal calls
        calls += 1
        raise TransientError("connect_failed", "down")

    with pytest.raises(TransientError):
        Retrier(sleeps.append)(down)
    assert calls == 3 and len(sleeps) == 2

    def refused() -> None:
        raise PermanentError("unauthorized", "no")

    with pytest.raises(PermanentError):
        Retrier(sleeps.append)(refused)
    assert len(sleeps) == 2


def test_a_short_retry_after_is_honoured() -> None:
    sleeps: list[float] = []
    outcomes: list[Exception | None] = [TransientError("busy", "busy", retry_after=5.0), None]

    def operation() -> None:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    Retrier(sleeps.append, rand=lambda: 0.0)(operation)
    assert sleeps == [5.0]
