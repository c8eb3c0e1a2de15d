"""Backup runs against the in-memory authority: round trips, the files cache, dedup,
interrupted runs, retries. Also the tree helpers the restore tests share."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.backup import engine
from agent.backup.engine import BackupResult, run_backup
from agent.backup.keys import KEY_FILE, load_master_key
from agent.backup.restore import RestoreResult, restore
from agent.backup.scanner import open_source
from agent.backup.throttle import interruptible_sleep
from agent.errors import BackupCancelled, TransientError
from agent.transport import AuthorityClient
from tests.unit.test_backup_fake import CREDENTIAL, URL, FakeAuthority, error

MTIME = 1_600_000_000_123_456_789
BIG = 5 * 1024 * 1024


def build_tree(home: Path) -> None:
    """A home with the awkward cases: empty, unicode, spaces, big, links, deep, modes."""
    home.mkdir(parents=True)
    (home / "empty.txt").write_bytes(b"")
    (home / "résumé ✓.txt").write_text("curriculum vitae\n", "utf-8")
    (home / "日本語").mkdir()
    (home / "日本語" / "ファイル.md").write_text("# 見出し\n" * 100, "utf-8")
    (home / "with spaces").mkdir()
    (home / "with spaces" / "a file.txt").write_text("spaced out\n")
    (home / "big.bin").write_bytes(os.urandom(BIG))
    (home / "docs").mkdir()
    (home / "docs" / "notes.txt").write_text("lorem ipsum\n" * 5000)
    (home / "docs" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (home / "docs" / "run.sh").chmod(0o755)
    (home / "docs" / "secret.txt").write_text("private\n")
    (home / "docs" / "secret.txt").chmod(0o600)
    deep = home / "deep"
    for level in range(30):
        deep = deep / f"level{level}"
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_text("at the bottom\n")
    os.symlink("docs/notes.txt", home / "link-to-notes")
    os.symlink("/nonexistent/target", home / "dangling")
    os.symlink("docs", home / "link-to-docs")
    (home / "readonly").mkdir()
    (home / "readonly" / "inside.txt").write_text("kept\n")
    set_mtimes(home)
    (home / "readonly").chmod(0o555)


def set_mtimes(root: Path) -> None:
    """Distinct, nanosecond-precise mtimes on everything, deepest first."""
    paths = sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    for n, path in enumerate(paths):
        os.utime(path, ns=(MTIME + n, MTIME + n), follow_symlinks=False)


def describe(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything a restore must bring back, by relative path."""
    found: dict[str, tuple[Any, ...]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("symlink", os.readlink(path), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                found[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, path.read_bytes())
    return found


def backup(fake: FakeAuthority, home: Path, state: Path, **kwargs: Any) -> BackupResult:
    kwargs.setdefault("sleep", lambda _s: None)
    with fake.client() as client:
        return run_backup(client, CREDENTIAL, home, kwargs.pop("exclude", []), state, **kwargs)


def restore_all(fake: FakeAuthority, state: Path, to: Path, **kwargs: Any) -> RestoreResult:
    kwargs.setdefault("snapshot_id", None)
    kwargs.setdefault("paths", [])
    kwargs.setdefault("overwrite", False)
    with fake.client() as client:
        return restore(client, CREDENTIAL, state, to, sleep=lambda _s: None, **kwargs)


@pytest.fixture
def fake() -> FakeAuthority:
    return FakeAuthority()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    build_tree(tmp_path / "home")
    return tmp_path / "home"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_round_trip_restores_contents_modes_mtimes_and_links(
    fake: FakeAuthority, home: Path, state: Path, tmp_path: Path
) -> None:
    result = backup(fake, home, state)
    assert result.snapshot_id == "snap-0001"
    assert not result.partial
    assert result.files == 10
    assert result.bytes == sum(
        p.stat().st_size for p in home.rglob("*") if p.is_file() and not p.is_symlink()
    )
    assert [s["snapshot_id"] for s in fake.snapshots] == ["snap-0001"]

    restored = restore_all(fake, state, tmp_path / "restored")
    assert restored.ok, (restored.refused, restored.failed)
    assert describe(tmp_path / "restored") == describe(home)
    assert restored.files == 10
    assert restored.symlinks == 3


def test_the_key_is_escrowed_private_and_the_server_sees_only_ciphertext(
    fake: FakeAuthority, home: Path, state: Path
) -> None:
    backup(fake, home, state)
    key = load_master_key(state)
    assert key is not None and key.escrowed
    assert fake.key == key.b64
    assert stat.S_IMODE((state / KEY_FILE).stat().st_mode) == 0o600
    stored = b"".join(fake.blobs.values())
    assert b"lorem ipsum" not in stored
    assert b"notes.txt" not in stored  # the manifest is encrypted too


def test_an_unchanged_tree_is_not_read_again_and_uploads_no_chunk(
    fake: FakeAuthority, home: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = backup(fake, home, state)
    assert first.files_read == 10
    assert first.read_bytes == first.bytes
    opened: list[Path] = []

    def counting_open(path: Path) -> int:
        opened.append(path)
        return open_source(path)

    monkeypatch.setattr("agent.backup.engine.open_source", counting_open)
    packs_before = fake.count("PUT", "/api/v1/device/packs/")

    second = backup(fake, home, state)

    assert opened == []
    assert (second.files_read, second.read_bytes, second.chunks_uploaded) == (0, 0, 0)
    assert second.new_bytes == 0
    assert second.files == first.files and second.bytes == first.bytes
    # Only the new manifest travels, in a pack of its own.
    assert fake.count("PUT", "/api/v1/device/packs/") == packs_before + 1
    assert len(fake.snapshots) == 2


def test_a_changed_file_is_read_again_with_its_reason_logged(
    fake: FakeAuthority, home: Path, state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backup(fake, home, state)
    (home / "docs" / "notes.txt").write_text("lorem ipsum, revised\n")
    with caplog.at_level(logging.DEBUG, logger="holdfast"):
        second = backup(fake, home, state)
    assert second.files_read == 1
    assert second.chunks_uploaded == 1
    assert "reading docs/notes.txt: size changed" in caplog.text


def test_a_duplicate_file_adds_no_chunk(fake: FakeAuthority, home: Path, state: Path) -> None:
    backup(fake, home, state)
    blobs = len(fake.blobs)
    shutil.copyfile(home / "big.bin", home / "big copy.bin")
    second = backup(fake, home, state)
    assert second.files_read == 1
    assert second.chunks_uploaded == 0
    assert len(fake.blobs) == blobs + 1  # the new manifest, nothing else


def test_identical_chunks_in_one_run_are_uploaded_once(fake: FakeAuthority, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    content = os.urandom(100_000)
    for n in range(5):
        (home / f"copy{n}.bin").write_bytes(content)
    result = backup(fake, home, tmp_path / "state")
    assert result.files == 5
    assert result.chunks_uploaded == 1


def test_a_failed_commit_leaves_no_snapshot_and_the_next_run_resends_nothing(
    fake: FakeAuthority, home: Path, state: Path
) -> None:
    def fail_commit(request: httpx.Request) -> httpx.Response | None:
        if request.method == "POST" and request.url.path.endswith("/snapshots"):
            return error(503, "unavailable")
        return None

    fake.faults.append(fail_commit)
    sleeps: list[float] = []
    with pytest.raises(TransientError):
        backup(fake, home, state, sleep=sleeps.append)
    assert fake.snapshots == []
    assert len(sleeps) == 2  # three attempts, then the lifecycle's turn

    fake.faults.clear()
    second = backup(fake, home, state)
    assert second.snapshot_id == "snap-0001"
    # The cache was not committed: files are read again, but every chunk had arrived.
    assert second.files_read == 10
    assert second.chunks_uploaded == 0


def test_a_permanently_failing_pack_upload_fails_the_run_and_the_next_uploads_the_rest(
    fake: FakeAuthority, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    for n in range(450):  # ~100 blobs a pack: five packs of data
        (home / f"file{n:03}.txt").write_bytes(os.urandom(200))
    state = tmp_path / "state"
    puts = 0

    def third_put_fails(request: httpx.Request) -> httpx.Response | None:
        nonlocal puts
        if request.method == "PUT" and "/packs/" in request.url.path:
            puts += 1
            if puts >= 3:
                return error(500, "internal")
        return None

    fake.faults.append(third_put_fails)
    with pytest.raises(TransientError):
        backup(fake, home, state, workers=1)
    assert fake.snapshots == []
    arrived = len(fake.blobs)
    assert arrived == 200

    fake.faults.clear()
    second = backup(fake, home, state)
    assert second.chunks_uploaded == 450 - arrived
    assert len(fake.blobs) == 450 + 1


def test_many_small_files_are_a_few_requests(fake: FakeAuthority, tmp_path: Path) -> None:
    home = tmp_path / "home"
    for folder in range(20):
        (home / f"d{folder}").mkdir(parents=True)
        for n in range(100):
            (home / f"d{folder}" / f"f{n}.txt").write_text(f"file {folder}/{n}\n" * 3)
    result = backup(fake, home, tmp_path / "state")
    assert result.files == 2000
    assert result.requests == len(fake.calls) - 2  # all but the key lookup and escrow
    assert len(fake.calls) < 40


def test_a_transient_failure_is_retried_with_the_injected_sleep(
    fake: FakeAuthority, home: Path, state: Path
) -> None:
    failures = 0

    def flaky(request: httpx.Request) -> httpx.Response | None:
        nonlocal failures
        if request.url.path.endswith("/chunks/missing") and failures < 2:
            failures += 1
            return error(503, "unavailable")
        return None

    fake.faults.append(flaky)
    sleeps: list[float] = []
    result = backup(fake, home, state, sleep=sleeps.append)
    assert result.snapshot_id
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0  # exponential, jittered


def test_a_stop_during_the_wait_between_attempts_ends_the_run_without_more_attempts(
    fake: FakeAuthority, home: Path, state: Path
) -> None:
    cancel = threading.Event()

    def unavailable_then_stopped(request: httpx.Request) -> httpx.Response | None:
        if not request.url.path.endswith("/chunks/missing"):
            return None
        cancel.set()  # the stop arrives while the run waits to try again
        return error(503, "unavailable")

    fake.faults.append(unavailable_then_stopped)
    with pytest.raises(BackupCancelled):
        # The daemon's sleep (agent/backup/schedule.py): a stop cuts it short.
        backup(fake, home, state, cancel=cancel, sleep=interruptible_sleep(cancel))
    assert fake.count("POST", "/api/v1/device/chunks/missing") == 1
    assert fake.snapshots == []


def test_a_long_retry_after_is_left_to_the_lifecycle(
    fake: FakeAuthority, home: Path, state: Path
) -> None:
    fake.faults.append(
        lambda r: (
            httpx.Response(503, headers={"Retry-After": "600"})
            if r.url.path.endswith("/chunks/missing")
            else None
        )
    )
    sleeps: list[float] = []
    with pytest.raises(TransientError) as caught:
        backup(fake, home, state, sleep=sleeps.append)
    assert caught.value.retry_after == 600
    assert sleeps == []


def test_an_unreadable_file_makes_the_run_partial_not_failed(
    fake: FakeAuthority, home: Path, state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse_secret(path: Path) -> int:
        if path.name == "secret.txt":
            raise PermissionError(13, "Permission denied", str(path))
        return open_source(path)

    monkeypatch.setattr("agent.backup.engine.open_source", refuse_secret)
    result = backup(fake, home, state)
    assert result.partial
    assert result.warnings == ("cannot read docs/secret.txt: Permission denied",)
    assert result.snapshot_id and result.files == 9
    restored = restore_all(fake, state, tmp_path / "restored")
    assert restored.ok
    assert not (tmp_path / "restored" / "docs" / "secret.txt").exists()
    assert (tmp_path / "restored" / "docs" / "notes.txt").exists()


def test_chunks_the_authority_lost_are_uploaded_again(
    fake: FakeAuthority, home: Path, state: Path, tmp_path: Path
) -> None:
    backup(fake, home, state)
    notes = (home / "docs" / "notes.txt").read_bytes()
    from agent.backup.blobs import chunk_id
    from agent.backup.keys import Subkeys

    key = load_master_key(state)
    assert key is not None
    lost = chunk_id(Subkeys.from_master(key.secret), notes)
    del fake.blobs[lost]

    second = backup(fake, home, state)
    assert second.files_read == 1
    assert second.chunks_uploaded == 1
    assert lost in fake.blobs
    assert restore_all(fake, state, tmp_path / "restored").ok


def test_a_lost_state_folder_recovers_the_escrowed_key_and_deduplicates(
    fake: FakeAuthority, home: Path, state: Path
) -> None:
    backup(fake, home, state)
    shutil.rmtree(state)
    second = backup(fake, home, state)
    assert second.files_read == 10
    assert second.chunks_uploaded == 0


def test_excluded_paths_and_the_agents_own_state_are_left_out(
    fake: FakeAuthority, home: Path, tmp_path: Path
) -> None:
    (home / "node_modules" / "pkg").mkdir(parents=True)
    (home / "node_modules" / "pkg" / "index.js").write_text("x")
    (home / "docs" / "draft.tmp").write_text("x")
    state = home / ".holdfast-state"  # a state folder inside the home is never backed up
    result = backup(fake, home, state, exclude=["node_modules/", "*.tmp"])
    assert result.excluded == 2
    restored = restore_all(fake, state, tmp_path / "restored")
    names = set(describe(tmp_path / "restored"))
    assert not any(n.startswith(("node_modules", ".holdfast-state")) for n in names)
    assert "docs/draft.tmp" not in names
    assert "docs/notes.txt" in names
    assert restored.ok


def test_a_cancelled_run_commits_nothing(fake: FakeAuthority, home: Path, state: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(BackupCancelled):
        backup(fake, home, state, cancel=cancel)
    assert fake.snapshots == []


def test_a_stop_while_uploads_hang_ends_the_run_without_waiting_for_them(
    fake: FakeAuthority, tmp_path: Path, state: Path
) -> None:
    # An authority gone silent: its packs never answer (until the test lets them go).
    home = tmp_path / "videos"
    home.mkdir()
    for n in range(6):
        (home / f"clip-{n}.mp4").write_bytes(os.urandom(3 * 1024 * 1024))
    released = threading.Event()
    hanging = threading.Event()

    def silent_packs(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and "/packs/" in request.url.path:
            hanging.set()
            released.wait(30)
        return fake.handle(request)

    cancel = threading.Event()
    threading.Thread(target=lambda: hanging.wait(30) and cancel.set(), daemon=True).start()
    client = AuthorityClient(URL, transport=httpx.MockTransport(silent_packs))
    started = time.monotonic()
    try:
        with pytest.raises(BackupCancelled):
            run_backup(client, CREDENTIAL, home, [], state, cancel=cancel, sleep=lambda _s: None)
        assert time.monotonic() - started < 10  # the packs hang for 30 s
    finally:
        released.set()
        client.close()
    assert fake.snapshots == []


def test_progress_is_reported(fake: FakeAuthority, home: Path, state: Path) -> None:
    seen: list[engine.BackupProgress] = []
    backup(fake, home, state, progress=seen.append)
    assert seen
    assert seen[-1].files == 10


def test_a_lost_chunk_no_file_can_provide_again_is_not_referenced(
    fake: FakeAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, state = tmp_path / "home", tmp_path / "state"
    home.mkdir()
    content = os.urandom(1000)
    (home / "a.txt").write_bytes(content)
    (home / "b.txt").write_bytes(content)
    backup(fake, home, state)
    from agent.backup.blobs import chunk_id
    from agent.backup.keys import Subkeys

    key = load_master_key(state)
    assert key is not None
    del fake.blobs[chunk_id(Subkeys.from_master(key.secret), content)]
    os.utime(home / "b.txt", ns=(MTIME, MTIME))  # b is read again, but its chunk is "known"

    def a_vanishes(path: Path) -> int:
        if path.name == "a.txt":
            raise FileNotFoundError(2, "No such file", str(path))
        return open_source(path)

    monkeypatch.setattr("agent.backup.engine.open_source", a_vanishes)
    second = backup(fake, home, state)
    assert second.warnings == ("b.txt: its data is no longer on the authority",)
    assert second.files == 0
    assert restore_all(fake, state, tmp_path / "restored").ok

    monkeypatch.undo()
    third = backup(fake, home, state)
    assert (third.files, third.chunks_uploaded, third.partial) == (2, 1, False)
