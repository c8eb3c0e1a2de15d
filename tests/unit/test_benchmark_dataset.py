"""The benchmark's generated home is the same from run to run: same seed, same bytes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from benchmarks.dataset import DEPTH, change_one_percent, generate


def fingerprint(root: Path) -> dict[str, tuple[int, str]]:
    """Every entry: its mode and its content (file bytes' hash, or link target)."""
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            content = os.readlink(path)
        elif path.is_file():
            content = hashlib.sha256(path.read_bytes()).hexdigest() + f"@{info.st_mtime_ns}"
        else:
            content = "dir"
        found[str(path.relative_to(root))] = (info.st_mode, content)
    return found


def test_the_same_seed_generates_the_same_home(tmp_path: Path) -> None:
    first = generate(tmp_path / "one", size_mb=2, files=300, seed=7)
    second = generate(tmp_path / "two", size_mb=2, files=300, seed=7)
    assert fingerprint(tmp_path / "one") == fingerprint(tmp_path / "two")
    assert first.files == second.files == 300
    assert first.bytes == second.bytes


def test_another_seed_generates_another_home(tmp_path: Path) -> None:
    generate(tmp_path / "one", size_mb=2, files=300, seed=7)
    generate(tmp_path / "two", size_mb=2, files=300, seed=8)
    assert fingerprint(tmp_path / "one") != fingerprint(tmp_path / "two")


def test_the_home_has_duplicates_deep_folders_and_about_the_asked_size(tmp_path: Path) -> None:
    made = generate(tmp_path / "home", size_mb=4, files=400, seed=1)
    files = [p for p in (tmp_path / "home").rglob("*") if p.is_file() and not p.is_symlink()]
    hashes = [hashlib.sha256(p.read_bytes()).digest() for p in files]
    assert len(hashes) - len(set(hashes)) >= 0.09 * len(files)
    depths = {len(p.relative_to(tmp_path / "home").parts) - 1 for p in files}
    assert max(depths) >= DEPTH - 1
    assert 0.8 * 4 * 2**20 <= made.bytes <= 1.2 * 4 * 2**20
    assert made.large


def test_the_one_percent_change_is_the_same_from_run_to_run(tmp_path: Path) -> None:
    for name in ("one", "two"):
        generate(tmp_path / name, size_mb=2, files=400, seed=3)
        change = change_one_percent(tmp_path / name, seed=4)
    assert change.created >= 1 and change.deleted >= 1 and change.rewritten == 1
    one, two = fingerprint(tmp_path / "one"), fingerprint(tmp_path / "two")
    # Appended and new files carry today's mtime; their contents must still match.
    assert {k: v[1].split("@")[0] for k, v in one.items()} == {
        k: v[1].split("@")[0] for k, v in two.items()
    }
