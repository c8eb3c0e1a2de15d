"""The backup engine: back a home folder up to the authority, list snapshots, restore.

Design and wire format: docs/backup-design.md. What callers (the daemon, the CLI) use is
this package's `__all__`; the modules behind it are its layers:

    scanner -> cache -> chunker -> blobs/keys -> packer -> uploader -> engine
    manifest -> restore_fs -> restore; retry wraps each request to the authority
"""

from __future__ import annotations

from agent.backup.engine import BackupProgress, BackupResult, run_backup
from agent.backup.restore import RestoreResult, Snapshot, list_snapshots, restore
from agent.backup.scanner import file_changed, is_excluded

__all__ = [
    "BackupProgress",
    "BackupResult",
    "RestoreResult",
    "Snapshot",
    "file_changed",
    "is_excluded",
    "list_snapshots",
    "restore",
    "run_backup",
]
