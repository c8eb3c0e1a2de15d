"""The walk, `file_changed`, the exclusion semantics and the files cache."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from agent.backup.cache import CACHE_FILE, FilesCache
from agent.backup.scanner import FileStat, ScanReport, file_changed, is_excluded, scan
from agent.errors import BackupError

BASE = FileStat(size=10, mtime_ns=1_000, ctime_ns=2_000, inode=42)


@pytest.mark.parametrize(
    ("current", "reason"),
    [
        (BASE, None),
        (FileStat(11, 1_000, 2_000, 42), "size changed (10 -> 11)"),
        (FileStat(10, 1_001, 2_000, 42), "modification time changed"),
        (FileStat(10, 1_000, 2_001, 42), "change time changed (content or metadata touched)"),
        (FileStat(10, 1_000, 2_000, 43), "inode changed (file replaced)"),
    ],
)
def test_file_changed_says_why_a_file_is_read_again(current: FileStat, reason: str | None) -> None:
    assert file_changed(current, BASE) == reason


def test_a_file_the_cache_does_not_know_is_new() -> None:
    assert file_changed(BASE, None) == "new file"


@pytest.mark.parametrize(
    ("rel", "is_dir", "patterns", "excluded"),
    [
        ("a/b/c.tmp", False, ["*.tmp"], True),  # basename match at any depth
        ("a/b/c.tmp", False, ["a/*.tmp"], True),  # `*` crosses `/`
        ("a/b/c.txt", False, ["*.tmp"], False),
        ("node_modules", True, ["node_modules/"], True),
        ("src/node_modules", True, ["node_modules/"], True),
        ("node_modules", False, ["node_modules/"], False),  # trailing `/`: folders only
        ("Library/Caches", True, ["Library/Caches/"], True),
        ("Other/Caches", True, ["Library/Caches/"], False),
        ("Downloads/x.ISO", False, ["*.iso"], False),  # case-sensitive everywhere
        ("Downloads/x.iso", False, ["Downloads/*.iso"], True),
        ("x.iso", False, ["Downloads/*.iso"], False),
        ("anything", True, ["/"], False),  # an empty pattern matches nothing
    ],
)
def test_exclusion_semantics(rel: str, is_dir: bool, patterns: list[str], excluded: bool) -> None:
    assert is_excluded(rel, is_dir, patterns) is excluded


def _names(root: Path, exclude: tuple[str, ...] = ()) -> tuple[list[tuple[str, str]], ScanReport]:
    report = ScanReport()
    return [(e.path, e.kind) for e in scan(root, list(exclude), report)], report


def test_links_are_recorded_not_followed_and_folders_come_before_their_contents(
    tmp_path: Path,
) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "inner.txt").write_text("x")
    (tmp_path / "a.txt").write_text("x")
    os.symlink("b", tmp_path / "link")
    entries, report = _names(tmp_path)
    # A folder's own entries in name order, then its subfolders': parents before contents.
    assert entries == [
        ("a.txt", "file"),
        ("b", "dir"),
        ("link", "symlink"),
        ("b/inner.txt", "file"),
    ]
    link = next(e for e in scan(tmp_path, [], ScanReport()) if e.kind == "symlink")
    assert link.target == "b"
    assert report.warnings == []


def test_special_files_are_skipped_and_counted(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "file").write_text("x")
    entries, report = _names(tmp_path)
    assert entries == [("file", "file")]
    assert report.skipped_special == 1


def test_an_excluded_folder_is_not_entered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cache" / "deep").mkdir(parents=True)
    (tmp_path / "keep.txt").write_text("x")
    listed: list[str] = []
    real = os.scandir

    def spy(path: str) -> object:
        listed.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr("agent.backup.scanner.os.scandir", spy)
    entries, report = _names(tmp_path, ("cache/",))
    assert entries == [("keep.txt", "file")]
    assert report.excluded == 1
    assert "cache" not in listed


def test_an_unreadable_folder_is_a_warning_and_the_walk_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "locked").mkdir()
    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "f").write_text("x")
    real = os.scandir

    def refuse_locked(path: str) -> object:
        if path.endswith("locked"):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr("agent.backup.scanner.os.scandir", refuse_locked)
    entries, report = _names(tmp_path)
    assert entries == [("locked", "dir"), ("open", "dir"), ("open/f", "file")]
    assert report.warnings == ["cannot read folder locked: Permission denied"]


def test_unicode_and_undecodable_names_survive(tmp_path: Path) -> None:
    (tmp_path / "é ✓.txt").write_text("x")
    raw = os.fsencode(tmp_path) + b"/bad-\xff.txt"
    with open(raw, "wb") as f:
        f.write(b"x")
    entries, _ = _names(tmp_path)
    assert sorted(p for p, _ in entries) == sorted(["bad-\udcff.txt", "é ✓.txt"])


def test_the_cache_keeps_a_runs_updates_only_when_committed(tmp_path: Path) -> None:
    ids = ["ab" * 32, "cd" * 32]
    cache = FilesCache(tmp_path)
    cache.record([("a.txt", BASE, ids)])
    cache.close()  # interrupted run: rolled back
    cache = FilesCache(tmp_path)
    assert cache.lookup(["a.txt"]) == {}
    cache.record([("a.txt", BASE, ids), ("b.txt", BASE, [])])
    cache.commit()

    cache = FilesCache(tmp_path)
    found = cache.lookup(["a.txt", "b.txt", "c.txt"])
    assert found["a.txt"].stat == BASE and found["a.txt"].chunks == tuple(ids)
    assert found["b.txt"].chunks == ()
    cache.seen(["a.txt"])
    cache.commit()  # b.txt was not seen this run: gone
    cache = FilesCache(tmp_path)
    assert set(cache.lookup(["a.txt", "b.txt"])) == {"a.txt"}
    cache.close()
    assert (tmp_path / CACHE_FILE).stat().st_mode & 0o777 == 0o600


def test_a_lookup_batches_many_paths(tmp_path: Path) -> None:
    cache = FilesCache(tmp_path)
    cache.record([(f"f{n}", BASE, []) for n in range(1_200)])
    assert len(cache.lookup([f"f{n}" for n in range(1_300)])) == 1_200
    cache.close()


def test_a_second_run_on_the_same_cache_is_refused(tmp_path: Path) -> None:
    first = FilesCache(tmp_path)
    try:
        with pytest.raises(BackupError, match="another backup is running"):
            FilesCache(tmp_path, lock_wait=0.05)
    finally:
        first.close()


def test_a_damaged_cache_is_set_aside_and_rebuilt(tmp_path: Path) -> None:
    (tmp_path / CACHE_FILE).write_bytes(b"this is not a database" * 100)
    cache = FilesCache(tmp_path)
    assert cache.lookup(["x"]) == {}
    cache.close()
    assert (tmp_path / (CACHE_FILE + ".damaged")).exists()


def test_a_cache_of_another_version_is_replaced(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / CACHE_FILE)
    db.execute("CREATE TABLE files (path TEXT)")
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    cache = FilesCache(tmp_path)
    cache.record([("a", BASE, [])])
    cache.commit()
