"""A deterministic "home folder" for the backup benchmark, and its 1 % change step.

Same seed, same size, same file count: the same paths, bytes, modes and mtimes, so two
runs (and two machines) measure the same work. The mix is what a laptop home holds:

- many small compressible text files (notes, source, configuration);
- medium documents, part text and part already-compressed bytes;
- a few large incompressible binaries (videos, disk images);
- about 10 % exact duplicates of other files, elsewhere in the tree;
- folders up to 6 levels deep, a few private (0600) and executable (0755) files, symlinks.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024
DEPTH = 6
TOP_FOLDERS = ("Documents", "Projects", "Pictures", "Music", "Downloads", ".config", "Desktop")
BASE_MTIME_NS = 1_700_000_000 * 10**9  # mid-November 2023: fixed, so runs are identical

# Shares of the total size; the rest of the size is duplicates of small and medium files.
LARGE_SHARE = 0.40
MEDIUM_SHARE = 0.35
SMALL_SHARE = 0.15
LARGE_FILES = 8
MEDIUM_FRACTION = 0.08  # of the unique files
DUPLICATE_FRACTION = 0.10  # of all files
SYMLINKS = 10


@dataclass
class Dataset:
    """What was generated: counts and sizes, to print beside the results."""

    root: Path
    files: int = 0
    bytes: int = 0
    duplicates: int = 0
    large: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)


def _vocabulary(rng: random.Random) -> list[str]:
    letters = "etaoinshrdlucmfwypvbgkqjxz"
    weights = [26 - i for i in range(len(letters))]
    return ["".join(rng.choices(letters, weights, k=rng.randint(2, 10))) for _ in range(3000)]


def _corpus(rng: random.Random, size: int) -> bytes:
    """English-like text: compresses about 3:1 with zstd, like real notes and source."""
    words = _vocabulary(rng)
    lines = []
    total = 0
    while total < size:
        line = " ".join(rng.choices(words, k=rng.randint(3, 16))) + "\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()


def _folders(rng: random.Random, count: int) -> list[str]:
    """`count` folders, every level from 1 to DEPTH represented."""
    folders = list(TOP_FOLDERS)
    while len(folders) < count:
        parent = rng.choice(folders)
        if parent.count("/") + 1 >= DEPTH:
            continue
        folders.append(
            f"{parent}/{rng.choice(('work', 'old', 'src', 'misc', 'data'))}{len(folders)}"
        )
    chain = TOP_FOLDERS[0]
    for level in range(2, DEPTH + 1):  # one guaranteed path to the deepest level
        chain = f"{chain}/level{level}"
        folders.append(chain)
    return folders


def _text(rng: random.Random, corpus: bytes, size: int, serial: int) -> bytes:
    start = rng.randrange(0, len(corpus) - size - 1) if size < len(corpus) - 1 else 0
    return f"file {serial}\n".encode() + corpus[start : start + size]


def _medium(rng: random.Random, corpus: bytes, size: int, serial: int) -> bytes:
    packed = int(size * rng.uniform(0.2, 0.8))  # images and zipped parts do not compress
    return _text(rng, corpus, size - packed, serial) + rng.randbytes(packed)


def _write(path: Path, data: bytes, mode: int, mtime_ns: int) -> None:
    path.write_bytes(data)
    path.chmod(mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def generate(root: Path, size_mb: int = 1024, files: int = 20000, seed: int = 1) -> Dataset:
    """Write the home under `root` (created; must not hold anything yet)."""
    rng = random.Random(seed)  # noqa: S311  # reproducible data, not secrets
    total = size_mb * MIB
    root.mkdir(parents=True, exist_ok=True)
    result = Dataset(root)
    corpus = _corpus(rng, min(8 * MIB, max(MIB // 4, total // 16)))
    folders = _folders(rng, max(len(TOP_FOLDERS) + DEPTH, files // 40))
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)

    duplicates = int(files * DUPLICATE_FRACTION)
    large = min(LARGE_FILES, max(1, files // 50))
    unique = files - duplicates - large - SYMLINKS
    medium = max(1, int(unique * MEDIUM_FRACTION))
    small = unique - medium
    plan: list[tuple[str, int]] = [("large", max(1, int(total * LARGE_SHARE / large)))] * large
    plan += [("medium", int(total * MEDIUM_SHARE / medium))] * medium
    plan += [("small", max(64, int(total * SMALL_SHARE / small)))] * small

    written: list[str] = []
    for serial, (kind, mean) in enumerate(plan):
        folder = rng.choice(folders)
        size = max(1, int(mean * rng.uniform(0.5, 1.5)))
        if kind == "large":
            name = f"{folder}/video-{serial}.bin"
            data = rng.randbytes(size)
            result.large.append(name)
        elif kind == "medium":
            name = f"{folder}/document-{serial}.{rng.choice(('pdf', 'docx', 'odt'))}"
            data = _medium(rng, corpus, size, serial)
        else:
            name = f"{folder}/note-{serial}.{rng.choice(('txt', 'md', 'py', 'conf'))}"
            data = _text(rng, corpus, size, serial)
            result.text.append(name)
        mode = rng.choice((0o644,) * 8 + (0o600, 0o755))
        _write(root / name, data, mode, BASE_MTIME_NS + serial * 10**9)
        written.append(name)
        result.bytes += len(data)

    copyable = [n for n in written if n not in result.large]
    for serial in range(duplicates):
        source = rng.choice(copyable)
        name = f"{rng.choice(folders)}/copy {serial} of {Path(source).name}"
        data = (root / source).read_bytes()
        _write(root / name, data, 0o644, BASE_MTIME_NS + (len(plan) + serial) * 10**9)
        result.bytes += len(data)
    result.duplicates = duplicates

    for serial in range(SYMLINKS):
        link = root / rng.choice(folders) / f"link-{serial}"
        link.symlink_to(os.path.relpath(root / rng.choice(copyable), link.parent))
    result.files = len(written) + duplicates + SYMLINKS
    return result


@dataclass(frozen=True)
class Change:
    """What the 1 % change step did."""

    appended: int
    rewritten: int
    created: int
    deleted: int

    @property
    def files(self) -> int:
        return self.appended + self.rewritten + self.created + self.deleted


def change_one_percent(root: Path, seed: int = 2) -> Change:
    """Change 1 % of the files: appends, a rewrite inside a large file, new and deleted files.

    For 20,000 files: 99 appends, 1 rewrite of 1 MiB inside a large binary, 50 new files,
    50 deleted (scaled down, at least one of each, for small sets).
    """
    rng = random.Random(seed)  # noqa: S311  # reproducible data, not secrets
    files = sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.is_symlink()
    )
    linked = {str(p.resolve().relative_to(root)) for p in root.rglob("link-*")}
    budget = max(4, len(files) // 100)
    created = deleted = max(1, min(50, budget // 4))
    appended = max(1, budget - created - deleted - 1)
    large = [f for f in files if Path(f).name.startswith("video-")]
    ordinary = [f for f in files if f not in large and f not in linked]
    picked = rng.sample(ordinary, appended + deleted)

    for name in picked[:appended]:
        with (root / name).open("ab") as out:
            out.write(f"appended line {rng.random()}\n".encode() * rng.randint(1, 50))
    for name in picked[appended:]:
        (root / name).unlink()
    target = root / rng.choice(large)
    with target.open("r+b") as out:
        out.seek(target.stat().st_size // 2)
        out.write(rng.randbytes(min(MIB, target.stat().st_size // 4)))
    folder = root / "Documents" / "new this week"
    folder.mkdir(exist_ok=True)
    for serial in range(created):
        text = f"new file {serial}\n".encode() * rng.randint(10, 2000)
        (folder / f"new-{serial}.txt").write_bytes(text)
    return Change(appended=appended, rewritten=1, created=created, deleted=deleted)


__all__ = ["Change", "Dataset", "change_one_percent", "generate"]
