"""Leftovers of a write that a crash interrupted are removed when the daemon starts."""

from __future__ import annotations

from pathlib import Path

from agent.state import sweep_temporaries, write_atomic


def test_a_killed_writes_temporary_file_is_swept_and_real_files_stay(tmp_path: Path) -> None:
    write_atomic(tmp_path / "backup.key", b"{}")
    (tmp_path / ".backup.key.pv7d9uqd.tmp").write_bytes(b"a key never used")
    (tmp_path / ".state.json.x1.tmp").write_bytes(b"{")
    (tmp_path / "notes.tmp").write_bytes(b"not ours: no leading dot")
    assert sorted(sweep_temporaries(tmp_path)) == [".backup.key.pv7d9uqd.tmp", ".state.json.x1.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.key", "notes.tmp"]
