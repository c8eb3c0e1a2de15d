"""Byte-for-byte comparison of a restored tree with its source: contents, modes, links."""

from __future__ import annotations

import filecmp
import os
import stat
from pathlib import Path


def _entries(root: Path) -> dict[str, os.stat_result]:
    found: dict[str, os.stat_result] = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = os.lstat(path)
    return found


def differences(source: Path, restored: Path, limit: int = 10) -> list[str]:
    """What differs between the two trees (empty when identical); at most `limit` lines."""
    want, got = _entries(source), _entries(restored)
    problems = [f"missing: {p}" for p in sorted(want.keys() - got.keys())]
    problems += [f"unexpected: {p}" for p in sorted(got.keys() - want.keys())]
    for path in sorted(want.keys() & got.keys()):
        a, b = want[path], got[path]
        if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode):
            problems.append(f"type differs: {path}")
        elif stat.S_ISLNK(a.st_mode):
            if os.readlink(source / path) != os.readlink(restored / path):
                problems.append(f"link target differs: {path}")
        elif stat.S_IMODE(a.st_mode) != stat.S_IMODE(b.st_mode):
            problems.append(f"mode {oct(a.st_mode)} != {oct(b.st_mode)}: {path}")
        elif stat.S_ISREG(a.st_mode) and (
            a.st_size != b.st_size or not filecmp.cmp(source / path, restored / path, False)
        ):
            problems.append(f"content differs: {path}")
        if len(problems) >= limit:
            break
    return problems[:limit]


__all__ = ["differences"]
