"""Keep the daemon's resident memory close to what it holds.

What the store holds per example is ~12 KB in the daemon (its embedding twice: the store's generation and the KNN
index; tracemalloc after 300 examples). Yet each change of the store builds a new generation and a new index — arrays
the size of the whole store, and several temporaries as large — and glibc's allocator kept what they freed: taught one
at a time through the control socket, the daemon grew 65-78 KB per example (scripts/bench/soak.py). Two glibc knobs
bring that down: a fixed mmap threshold (by default glibc raises it to the largest block freed so far, so the store's
ever larger arrays end up in heaps that fragment instead of in mappings returned on free), and ``malloc_trim`` once a
change has been applied. Elsewhere than glibc (musl, macOS) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD = 128 * 1024  # glibc's default start value, kept fixed


@functools.cache
def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None  # glibc has both, musl not


def fix_mmap_threshold() -> bool:
    """Blocks of 128 KiB and more are mapped, and returned to the system when freed. True if applied (glibc)."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def give_back() -> None:
    """Return the allocator's free pages to the system (after a store change: a few ms, never per frame)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
