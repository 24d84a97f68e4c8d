"""Process memory on the CPU: keep freed blocks for the next batch instead of unmapping them."""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's <malloc.h>


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve every block from its heap and never give the heap back.

    By default glibc maps a fresh block for every allocation over 32 MB (its highest mmap
    threshold) and unmaps it when freed, so each step of CPU training whose activations are that
    large (V1 at 72x72 and batch 256: 42 MB for one layer's output) faults in and zeroes new pages
    for every layer, every step. Kept in the heap, the pages of one step serve the next: the
    ``fashion-mnist`` recipe's fp32 step went from 158 to 202 images/s on an AVX2 host
    (docs/results.md, section 2), and evaluating its test set took 25 s instead of 61. The cost
    is that the process keeps its peak memory until it exits, as tcmalloc and jemalloc also do.
    Returns whether the setting took (not off glibc).
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
