"""Packs: sealed blobs grouped into one upload, named by the SHA-256 of the body.

A pack body is the blobs concatenated; its index travels in the `X-Holdfast-Pack-Index`
header as base64 of compact JSON `[[chunk_id, offset, length], ...]`. Two limits close a
pack, whichever comes first: 8 MiB of body, and the index header's size. The header limit
exists because a server counts headers against a small budget (uvicorn's h11 refuses a
request head over 16 KiB): about 100 blobs per pack. 20,000 small files are then ~200
requests, not 20,000.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

PACK_BYTES = 8 * 1024 * 1024
INDEX_HEADER_BYTES = 12 * 1024
# One index entry in compact JSON: 64 hex in quotes, two numbers, brackets and commas.
_ENTRY_JSON = 64 + 2 + 2 * 10 + 5


@dataclass(frozen=True)
class Pack:
    """A finished pack, ready to upload as is (uploading it twice is harmless).

    The body is kept as its blobs (`parts`): the transport sends them back to back, so a
    pack in flight is not held twice, as blobs and as their concatenation.
    """

    pack_id: str
    parts: tuple[bytes, ...]
    size: int
    index_header: str
    chunk_ids: tuple[str, ...]

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)


class Packer:
    """Accumulates sealed blobs into one pack; skips a chunk id it already holds."""

    def __init__(self, max_bytes: int = PACK_BYTES, max_index: int = INDEX_HEADER_BYTES) -> None:
        self.max_bytes = max_bytes
        # base64 grows by 4/3; the entries are bounded from above, so the header never
        # exceeds `max_index` whatever the offsets turn out to be.
        self.max_blobs = max(1, (max_index * 3 // 4) // (_ENTRY_JSON + 1))
        self._parts: list[bytes] = []
        self._index: list[tuple[str, int, int]] = []
        self._ids: set[str] = set()
        self._size = 0
        self._hash = hashlib.sha256()

    def __len__(self) -> int:
        return len(self._index)

    @property
    def size(self) -> int:
        return self._size

    def fits(self, blob_size: int) -> bool:
        """Whether one more blob of `blob_size` keeps the pack within its limits.

        An empty pack takes any blob, so a blob larger than a pack (a huge manifest) still
        travels, alone.
        """
        if not self._index:
            return True
        return len(self._index) < self.max_blobs and self._size + blob_size <= self.max_bytes

    def add(self, cid: str, *blob: bytes) -> bool:
        """Append a blob, given whole or in parts; False when this pack already holds
        `cid` (nothing added)."""
        if cid in self._ids:
            return False
        length = sum(len(part) for part in blob)
        self._index.append((cid, self._size, length))
        for part in blob:
            self._parts.append(part)
            self._hash.update(part)
        self._ids.add(cid)
        self._size += length
        return True

    def finish(self) -> Pack:
        """The pack of everything added so far; the packer starts empty again."""
        index = json.dumps(self._index, separators=(",", ":")).encode("ascii")
        pack = Pack(
            pack_id=self._hash.hexdigest(),
            parts=tuple(self._parts),
            size=self._size,
            index_header=base64.b64encode(index).decode("ascii"),
            chunk_ids=tuple(cid for cid, _, _ in self._index),
        )
        self._parts, self._index, self._ids, self._size = [], [], set(), 0
        self._hash = hashlib.sha256()
        return pack


def parse_index(header: str) -> list[tuple[str, int, int]]:
    """The entries of an index header (the authority's reading, for tests and tools)."""
    entries = json.loads(base64.b64decode(header, validate=True))
    return [(str(c), int(o), int(n)) for c, o, n in entries]


__all__ = ["INDEX_HEADER_BYTES", "PACK_BYTES", "Pack", "Packer", "parse_index"]
