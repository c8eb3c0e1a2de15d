"""Give the memory of a finished backup or restore back to the system.

A run moves hundreds of megabytes through 1-8 MiB buffers. glibc serves them from its heap
once its mmap threshold has risen (it does, up to 32 MiB, each time such a block is
freed), and a heap only shrinks from its top: after a 1 GB first backup the daemon stayed
at ~250 MB resident, for a few MB of live objects, all day. `malloc_trim(0)` hands every
free page back (glibc >= 2.8 also releases pages inside the heap), so an idle agent is
small again.

Not done: fixing the mmap threshold at 1 MiB, which lowered the peak by ~10 MB but cost
~20 % more CPU in page faults (docs/performance.md). Elsewhere than glibc (macOS,
Windows, musl) this does nothing: those allocators return memory on their own terms.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

_trim: list[Callable[[int], int] | None] = []


def _malloc_trim() -> Callable[[int], int] | None:
    if not _trim:
        found: Callable[[int], int] | None = None
        if sys.platform.startswith("linux"):
            try:
                function = ctypes.CDLL(None).malloc_trim
                function.argtypes = [ctypes.c_size_t]
                function.restype = ctypes.c_int
                found = function
            except (AttributeError, OSError):  # not glibc
                found = None
        _trim.append(found)
    return _trim[0]


def release_free_memory() -> bool:
    """Return the allocator's free pages to the system; whether anything could be asked."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


__all__ = ["release_free_memory"]
