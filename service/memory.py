"""glibc's allocator, set for a process that frees large request bodies in another thread.

With glibc's defaults, a 200 KB body is mmapped, or taken from a per-thread arena whose top is
trimmed when the writer thread frees it: every request then faults its pages in afresh. One
arena (the GIL already keeps Python's allocations from running in parallel), bodies up to
16 MiB from the heap, and free memory trimmed only past 64 MiB let freed bodies be reused for
the next ones instead (docs/design.md has the figures). Peak memory is unchanged.
"""

import ctypes

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # from glibc's malloc.h
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, 16 << 20), (_M_TRIM_THRESHOLD, 64 << 20))


def tune_malloc() -> bool:
    """Apply the settings above to this process and the workers it forks; False where the C
    library is not glibc (musl has no mallopt), which changes nothing but speed."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the C library this Python runs on
    if mallopt is None:
        return False
    return all(mallopt(option, value) == 1 for option, value in _SETTINGS)
