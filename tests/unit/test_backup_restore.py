"""Restores: corrupt chunks named by file, hostile manifests refused, nothing overwritten
without being asked, partial restores, snapshot choice."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent.backup import manifest
from agent.backup.blobs import chunk_id, seal
from agent.backup.keys import Subkeys, load_master_key
from agent.backup.packer import Packer
from agent.errors import BackupError
from tests.unit.test_backup_engine import backup, build_tree, describe, restore_all
from tests.unit.test_backup_fake import CREDENTIAL, FakeAuthority


@pytest.fixture
def fake() -> FakeAuthority:
    return FakeAuthority()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    build_tree(tmp_path / "home")
    return tmp_path / "home"


def keys_of(state: Path) -> Subkeys:
    key = load_master_key(state)
    assert key is not None
    return Subkeys.from_master(key.secret)


def plant(fake: FakeAuthority, keys: Subkeys, entries: list[dict[str, Any]], **data: bytes) -> str:
    """Store a snapshot with a hand-written manifest (and chunks), as a hostile agent could."""
    packer = Packer()
    for content in data.values():
        cid = chunk_id(keys, content)
        packer.add(cid, seal(keys, cid, content))
    document = manifest.encode("/home/x", "2024-01-01T00:00:00+00:00", entries)
    mid = chunk_id(keys, document)
    packer.add(mid, seal(keys, mid, document))
    pack = packer.finish()
    with fake.client() as client:
        client.put_pack(CREDENTIAL, pack.pack_id, pack.body, pack.index_header)
        answer = client.commit_snapshot(
            CREDENTIAL,
            {"manifest_id": mid, "files": 0, "bytes": 0, "started_at": "", "finished_at": ""},
        )
    return str(answer["snapshot_id"])


def file_entry(keys: Subkeys, path: str, content: bytes) -> dict[str, Any]:
    return {
        "path": path,
        "type": "file",
        "mode": 0o644,
        "mtime_ns": 0,
        "size": len(content),
        "chunks": [chunk_id(keys, content)],
    }


def test_a_tampered_chunk_fails_its_file_by_name_and_the_others_are_restored(
    fake: FakeAuthority, home: Path, state: Path, tmp_path: Path
) -> None:
    backup(fake, home, state)
    cid = chunk_id(keys_of(state), (home / "docs" / "notes.txt").read_bytes())
    blob = bytearray(fake.blobs[cid])
    blob[40] ^= 0x01
    fake.blobs[cid] = bytes(blob)

    result = restore_all(fake, state, tmp_path / "restored")

    assert not result.ok
    assert [path for path, _ in result.failed] == ["docs/notes.txt"]
    assert "failed authentication" in result.failed[0][1]
    assert not (tmp_path / "restored" / "docs" / "notes.txt").exists()
    assert (tmp_path / "restored" / "big.bin").read_bytes() == (home / "big.bin").read_bytes()
    assert result.files == 9
    # No temporary file is left behind by the failed one.
    assert sorted(p.name for p in (tmp_path / "restored" / "docs").iterdir()) == [
        "run.sh",
        "secret.txt",
    ]


def test_a_swapped_blob_is_refused(
    fake: FakeAuthority, home: Path, state: Path, tmp_path: Path
) -> None:
    backup(fake, home, state)
    keys = keys_of(state)
    notes = chunk_id(keys, (home / "docs" / "notes.txt").read_bytes())
    run = chunk_id(keys, (home / "docs" / "run.sh").read_bytes())
    fake.blobs[notes] = fake.blobs[run]
    result = restore_all(fake, state, tmp_path / "restored")
    assert [path for path, _ in result.failed] == ["docs/notes.txt"]


def test_a_chunk_missing_on_the_authority_fails_its_file(
    fake: FakeAuthority, home: Path, state: Path, tmp_path: Path
) -> None:
    backup(fake, home, state)
    del fake.blobs[chunk_id(keys_of(state), (home / "docs" / "run.sh").read_bytes())]
    result = restore_all(fake, state, tmp_path / "restored")
    assert [path for path, _ in result.failed] == ["docs/run.sh"]
    assert "the authority does not hold chunk" in result.failed[0][1]
    assert not (tmp_path / "restored" / "docs" / "run.sh").exists()


def many_small_files(home: Path, count: int) -> None:
    for n in range(count):
        folder = home / f"d{n % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{n}.txt").write_bytes(f"file {n}\n".encode() * (n % 5 + 1))


def test_many_small_files_come_back_in_a_few_requests(
    fake: FakeAuthority, tmp_path: Path, state: Path
) -> None:
    home = tmp_path / "home"
    many_small_files(home, 1200)
    backup(fake, home, state)
    fake.calls.clear()
    result = restore_all(fake, state, tmp_path / "restored")
    assert result.ok and result.files == 1200
    assert describe(tmp_path / "restored") == describe(home)
    # 1,200 chunks and the manifest: 512 ids a batch, never one request per chunk.
    assert fake.count("POST", "/api/v1/device/chunks/fetch") <= 5
    assert fake.count("GET", "/api/v1/device/chunks/") == 0


def test_an_answer_cut_short_by_the_authority_is_completed_by_asking_again(
    fake: FakeAuthority, tmp_path: Path, state: Path
) -> None:
    home = tmp_path / "home"
    many_small_files(home, 40)
    backup(fake, home, state)
    fake.fetch_max_bytes = 1  # one blob per answer
    fake.calls.clear()
    result = restore_all(fake, state, tmp_path / "restored")
    assert result.ok and describe(tmp_path / "restored") == describe(home)
    assert fake.count("POST", "/api/v1/device/chunks/fetch") >= 40


def test_an_authority_without_batch_fetches_is_read_chunk_by_chunk(
    fake: FakeAuthority, home: Path, state: Path, tmp_path: Path
) -> None:
    backup(fake, home, state)
    fake.fetch_supported = False
    del fake.blobs[chunk_id(keys_of(state), (home / "docs" / "run.sh").read_bytes())]
    result = restore_all(fake, state, tmp_path / "restored")
    assert [path for path, _ in result.failed] == ["docs/run.sh"]
    assert result.files == 9
    assert fake.count("GET", "/api/v1/device/chunks/") >= 9


def test_hostile_entries_are_refused_and_nothing_lands_outside(
    fake: FakeAuthority, home: Path, state: Path, tmp_path: Path
) -> None:
    backup(fake, home, state)
    keys = keys_of(state)
    outside = tmp_path / "outside"
    outside.mkdir()
    payload = b"planted\n"
    entries = [
        file_entry(keys, "../x", payload),
        file_entry(keys, str(outside / "absolute"), payload),
        file_entry(keys, "a\x00b", payload),
        file_entry(keys, "ok/./dot", payload),
        {"path": "a", "type": "symlink", "mode": 0o777, "mtime_ns": 0, "target": str(outside)},
        file_entry(keys, "a/b", payload),
        {"path": "dir", "type": "dir", "mode": 0o755, "mtime_ns": 0},
        {"path": "weird", "type": "device", "mode": 0o644, "mtime_ns": 0},
        file_entry(keys, "fine.txt", payload),
    ]
    snapshot = plant(fake, keys, entries, payload=payload)
    to = tmp_path / "to"

    result = restore_all(fake, state, to, snapshot_id=snapshot)

    refused = dict(result.refused)
    assert set(refused) == {"../x", str(outside / "absolute"), "a\x00b", "ok/./dot", "a/b", "weird"}
    assert refused["a/b"] == "'a' on its way is a symlink in the snapshot"
    assert not result.ok
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "x").exists()
    assert (to / "fine.txt").read_bytes() == payload
    assert os.readlink(to / "a") == str(outside)


def test_a_link_already_in_the_target_is_not_written_through(
    fake: FakeAuthority, home: Path, state: Path, tmp_path: Path
) -> None:
    backup(fake, home, state)
    outside = tmp_path / "outside"
    outside.mkdir()
    to = tmp_path / "to"
    to.mkdir()
    os.symlink(outside, to / "docs")
    result = restore_all(fake, state, to, overwrite=True)
    refused = dict(result.refused)
    assert set(refused) == {"docs", "docs/notes.txt", "docs/run.sh", "docs/secret.txt"}
    assert "not a folder" in refused["docs/notes.txt"]
    assert list(outside.iterdir()) == []
    assert (to / "big.bin").exists()


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../x", "a/../../x", "a//b", ".", "", "a/./b", "x\x00y"]
)
def test_paths_that_could_leave_the_target_are_problems(path: str) -> None:
    assert manifest.path_problem(path) is not None


@pytest.mark.parametrize("path", ["a", "a/b.txt", "..hidden", "with space/é.txt", "a..b"])
def test_plain_relative_paths_are_fine(path: str) -> None:
    assert manifest.path_problem(path) is None


def test_existing_files_are_left_alone_without_overwrite(
    fake: FakeAuthority, home: Path, state: Path, tmp_path: Path
) -> None:
    backup(fake, home, state)
    to = tmp_path / "to"
    (to / "docs").mkdir(parents=True)
    (to / "docs" / "notes.txt").write_text("mine, newer\n")
    os.symlink("elsewhere", to / "link-to-notes")

    kept = restore_all(fake, state, to)
    assert sorted(kept.existing) == ["docs/notes.txt", "link-to-notes"]
    assert kept.ok
    assert (to / "docs" / "notes.txt").read_text() == "mine, newer\n"
    assert os.readlink(to / "link-to-notes") == "elsewhere"

    replaced = restore_all(fake, state, to, overwrite=True)
    assert replaced.existing == [] and replaced.ok
    assert describe(to) == describe(home)


def test_a_folder_in_the_way_of_a_file_is_never_deleted(
    fake: FakeAuthority, home: Path, state: Path, tmp_path: Path
) -> None:
    backup(fake, home, state)
    to = tmp_path / "to"
    (to / "empty.txt").mkdir(parents=True)
    (to / "empty.txt" / "precious").write_text("keep me")
    result = restore_all(fake, state, to, overwrite=True)
    assert [path for path, _ in result.refused] == ["empty.txt"]
    assert (to / "empty.txt" / "precious").read_text() == "keep me"


def test_only_the_asked_paths_come_back_with_their_folders(
    fake: FakeAuthority, home: Path, state: Path, tmp_path: Path
) -> None:
    backup(fake, home, state)
    to = tmp_path / "to"
    result = restore_all(fake, state, to, paths=["docs/notes.txt", f"{home}/日本語"])
    assert result.ok
    names = set(describe(to))
    assert names == {"docs", "docs/notes.txt", "日本語", "日本語/ファイル.md"}
    assert (to / "docs").stat().st_mtime_ns == (home / "docs").stat().st_mtime_ns
    with pytest.raises(BackupError, match="not in the snapshot: nope"):
        restore_all(fake, state, to, paths=["nope"])


def test_a_snapshot_is_chosen_by_id_or_prefix_and_the_latest_by_default(
    fake: FakeAuthority, home: Path, state: Path, tmp_path: Path
) -> None:
    backup(fake, home, state)
    (home / "empty.txt").write_text("no longer empty")
    backup(fake, home, state)
    first = restore_all(fake, state, tmp_path / "first", snapshot_id="snap-0001")
    assert first.snapshot_id == "snap-0001"
    assert (tmp_path / "first" / "empty.txt").read_bytes() == b""
    latest = restore_all(fake, state, tmp_path / "latest")
    assert latest.snapshot_id == "snap-0002"
    assert (tmp_path / "latest" / "empty.txt").read_text() == "no longer empty"
    with pytest.raises(BackupError, match="matches several snapshots"):
        restore_all(fake, state, tmp_path / "x", snapshot_id="snap-")
    with pytest.raises(BackupError, match="is not a snapshot"):
        restore_all(fake, state, tmp_path / "x", snapshot_id="other")


def test_a_new_machine_restores_with_the_escrowed_key(
    fake: FakeAuthority, home: Path, state: Path, tmp_path: Path
) -> None:
    backup(fake, home, state)
    result = restore_all(fake, tmp_path / "fresh-state", tmp_path / "to")
    assert result.ok
    assert describe(tmp_path / "to") == describe(home)


def test_without_any_key_nothing_can_be_restored(fake: FakeAuthority, tmp_path: Path) -> None:
    fake.snapshots.append(
        {"snapshot_id": "s", "created_at": "", "files": 0, "bytes": 0, "manifest_id": "0" * 64}
    )
    with pytest.raises(BackupError, match="no backup key"):
        restore_all(fake, tmp_path / "state", tmp_path / "to")


def test_a_damaged_manifest_stops_the_restore(
    fake: FakeAuthority, home: Path, state: Path, tmp_path: Path
) -> None:
    backup(fake, home, state)
    mid = fake.snapshots[-1]["manifest_id"]
    fake.blobs[mid] = fake.blobs[mid][:-1] + bytes([fake.blobs[mid][-1] ^ 1])
    with pytest.raises(BackupError, match="manifest is unusable"):
        restore_all(fake, state, tmp_path / "to")
