"""Content-defined chunking of a file with FastCDC, streamed through a bounded buffer.

Sizes are restic's range (min 512 KiB, average 1 MiB, max 8 MiB): an insertion early in a
file moves one or two chunk boundaries, not all of them, so an edited file uploads little.

fastcdc's own file API maps the whole file; a chunk's cut point only depends on at most
`MAX_SIZE` bytes from the chunk's start, so feeding it a window of `2 * MAX_SIZE` and only
accepting cuts with a full `MAX_SIZE` of look-ahead (or the end of file) gives the same
chunks as the whole file would, with a memory use that does not grow with the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from fastcdc import fastcdc  # type: ignore[import-untyped]

MIN_SIZE = 512 * 1024
AVG_SIZE = 1024 * 1024
MAX_SIZE = 8 * 1024 * 1024
WINDOW = 2 * MAX_SIZE


class Source(Protocol):
    """What the chunker reads from: a file opened in binary mode, or a BytesIO."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...


class Chunker:
    """Chunks files one after another through one buffer of `window` bytes.

    The buffer is allocated once per run, not per file: zeroing 16 MiB for each of 20,000
    small files would cost more than reading them. One file at a time: a file's chunks are
    consumed (or abandoned) before the next file's are asked for.
    """

    def __init__(self, window: int = WINDOW) -> None:
        if window < MAX_SIZE:
            raise ValueError("the window must hold at least one maximal chunk")
        self.window = window
        self._buffer: bytearray | None = None

    def chunks(self, stream: Source) -> Iterator[bytes]:
        """The file's chunks in order; an empty file has none, a small one is one chunk.

        Read into the buffer, chunked, the unchunked tail moved to the front, refilled.
        Each chunk is yielded as its own bytes.
        """
        if self._buffer is None:
            self._buffer = bytearray(self.window)
        whole = memoryview(self._buffer)
        filled = 0
        at_eof = False
        while True:
            while not at_eof and filled < self.window:
                count = stream.readinto(whole[filled:])
                if not count:  # 0 at the end; None (would block) cannot happen on a file
                    at_eof = True
                else:
                    filled += count
            if not filled:
                return
            data = whole[:filled]
            consumed = 0
            cuts = fastcdc(data, MIN_SIZE, AVG_SIZE, MAX_SIZE)
            for chunk in cuts:
                if not at_eof and filled - chunk.offset < MAX_SIZE:
                    break  # this cut could move once the next bytes are in
                consumed = chunk.offset + chunk.length
                yield bytes(data[chunk.offset : consumed])
            cuts.close()
            data.release()
            if at_eof and consumed == filled:
                return
            # memoryview assignment is a memmove: overlapping ranges are safe.
            whole[: filled - consumed] = whole[consumed:filled]
            filled -= consumed


def iter_chunks(stream: Source, window: int = WINDOW) -> Iterator[bytes]:
    """The chunks of one file, with a buffer of its own."""
    return Chunker(window).chunks(stream)


__all__ = ["AVG_SIZE", "MAX_SIZE", "MIN_SIZE", "Chunker", "iter_chunks"]
