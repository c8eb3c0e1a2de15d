"""The home a fault scenario backs up, and the byte-for-byte check of its restore."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

# Many files, so a backup makes several packs (at most 100 chunks each) and a kill has
# something to land in; a few megabytes, so an iteration stays quick.
SMALL_FILES = 150
SMALL_MAX_BYTES = 40_000
LARGE_FILES = 2
LARGE_BYTES = 700_000


def make_home(root: Path, rng: random.Random) -> Path:
    """A home of about 4 MB drawn from `rng`: nested folders, small and large files,
    an empty file, a link, unusual names and modes. Readable by the detection account."""
    (root / "Documents" / "projects" / "q3").mkdir(parents=True)
    (root / "Pictures").mkdir()
    folders = [root / "Documents", root / "Documents" / "projects" / "q3", root / "Pictures"]
    for n in range(SMALL_FILES):
        folder = folders[n % len(folders)]
        (folder / f"file {n:03d}.dat").write_bytes(rng.randbytes(rng.randint(1, SMALL_MAX_BYTES)))
    for n in range(LARGE_FILES):
        (root / "Pictures" / f"large-{n}.raw").write_bytes(rng.randbytes(LARGE_BYTES))
    (root / "Documents" / "empty").write_bytes(b"")
    (root / "Documents" / "é ü naïve.txt").write_text("unicode name\n" * 50)
    (root / "Documents" / "private.txt").write_text("mode 0600\n")
    (root / "Documents" / "private.txt").chmod(0o600)
    (root / "latest").symlink_to("Documents/projects/q3")
    for folder in (root.parent, root):
        folder.chmod(0o755)  # detection runs as an unprivileged account
    return root


def tree(root: Path) -> dict[str, tuple[str, int, int, bytes]]:
    """Every entry under `root` by relative path: (type, mode bits, mtime ns, content or
    link target). Folders carry no time: a restore sets it, a later write may move it."""
    found: dict[str, tuple[str, int, int, bytes]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            key = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                found[key] = ("link", 0, info.st_mtime_ns, os.readlink(path).encode())
            elif stat.S_ISDIR(info.st_mode):
                found[key] = ("dir", stat.S_IMODE(info.st_mode), 0, b"")
            else:
                content = path.read_bytes()
                found[key] = ("file", stat.S_IMODE(info.st_mode), info.st_mtime_ns, content)
    return found


def differences(original: Path, restored: Path) -> list[str]:
    """What differs between two trees (empty when the restore gave the home back exactly)."""
    want, got = tree(original), tree(restored)
    problems = [f"missing: {p}" for p in sorted(want.keys() - got.keys())]
    problems += [f"unexpected: {p}" for p in sorted(got.keys() - want.keys())]
    for path in sorted(want.keys() & got.keys()):
        (kind, mode, mtime, content), (kind2, mode2, mtime2, content2) = want[path], got[path]
        if kind != kind2:
            problems.append(f"{path}: a {kind2}, not a {kind}")
        elif content != content2:
            problems.append(f"{path}: content differs ({len(content2)} of {len(content)} bytes)")
        elif mode != mode2 or mtime != mtime2:
            problems.append(f"{path}: mode {mode2:o}/{mode:o}, mtime {mtime2}/{mtime}")
    return problems
