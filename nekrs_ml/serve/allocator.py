"""Allocator settings of a model worker's process.

glibc hands freed blocks above 128 KiB straight back to the kernel (mmap threshold) and trims
the top of the heap eagerly, so every forward pass page-faults its activations and outputs
anew. Keeping freed memory in the heap, as jemalloc does, about halves a CPU forward pass of
25,000 points through the 3-64-64-2 model.
"""

from __future__ import annotations

import ctypes
import os
import platform

MMAP_THRESHOLD = 32 * 1024 * 1024    # glibc's largest allowed value on 64-bit hosts
TRIM_THRESHOLD = 512 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Raises glibc's mmap and trim thresholds for this process, unless the environment sets
    them (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_) or the C library is not glibc.
    Returns whether the thresholds were changed."""
    if platform.libc_ver()[0] != "glibc":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
