"""Give the memory of a finished backup or restore back to the system.

A run moves hundreds of megabytes through 1-8 MiB buffers. glibc serves them from its heap
once its mmap threshold has risen (it does, up to 32 MiB, each time such a block is
freed), and a heap only shrinks from its top: after a 1 GB first backup the daemon stayed
at ~250 MB resident, for a few MB of live objects, all day. `malloc_trim(0)` hands every
free page back (glibc >= 2.8 also releases pages inside the heap), so an idle agent is
small again.

While a run goes, `keep_large_buffers_apart` fixes glibc's mmap threshold at 4 MiB: a
pack (up to 8 MiB), a large chunk and its sealed form each get a mapping of their own,
returned whole when freed, instead of a place in a heap that freed blocks fragment. The
first backup's peak went from 160 to ~130 MB, for a few percent more CPU in page faults
(at 1 MiB the faults cost ~20 %: the many 1 MiB chunks then took mappings too).
Elsewhere than glibc (macOS, Windows, musl) this does nothing: those allocators return
memory on their own terms.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable

_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD = 4 * 1024 * 1024


def _glibc(name: str, *argtypes: type[ctypes._SimpleCData[int]]) -> Callable[..., int] | None:
    """glibc's function `name`, or None where the C library is another (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (AttributeError, OSError):
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    found: Callable[..., int] = function
    return found


@functools.cache
def _malloc_trim() -> Callable[..., int] | None:
    return _glibc("malloc_trim", ctypes.c_size_t)


def release_free_memory() -> bool:
    """Return the allocator's free pages to the system; whether anything could be asked."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def keep_large_buffers_apart() -> bool:
    """Blocks of MMAP_THRESHOLD and more get mappings of their own (glibc; once a process).

    Whether it applies: False where the allocator is not glibc's.
    """
    mallopt = _glibc("mallopt", ctypes.c_int, ctypes.c_int)
    return mallopt is not None and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1


__all__ = ["MMAP_THRESHOLD", "keep_large_buffers_apart", "release_free_memory"]
