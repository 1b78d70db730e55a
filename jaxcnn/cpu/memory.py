"""Host memory allocation for training on the CPU.

Why: XLA's CPU runtime allocates each compiled call's buffers afresh, and its fused operations
allocate scratch at every step. glibc's ``malloc`` serves the large ones with a fresh ``mmap``
and hands them back with ``munmap`` on ``free``, so the next call touches new pages and pays a
page fault for each 4 KiB of them. With :func:`keep_freed_memory`, in compiled calls of 20
steps as the runner makes them, on a 2-core AVX-512 EPYC: lenet5 at batch 128 went from 1,146
to 35 page faults a step and trained 28% faster, simple_cnn 9%; at batch 1024 lenet5 7% and
simple_cnn 1%, which kept its faults (``benchmarks/keep_freed_memory.py``; why, in
``benchmarks/README.md``). The usual cure is a caching allocator (jemalloc or tcmalloc,
preloaded); this gets part of its effect from glibc itself, with ``mallopt``.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied = False


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep the memory it frees for the next allocation: no ``mmap``
    per large block (``M_MMAP_MAX = 0``) and no trimming of the heap below 2 GiB of free space
    (``M_TRIM_THRESHOLD``). Process-wide and for the rest of the process; the cost is that the
    process keeps its peak heap instead of returning freed memory to the system.

    Returns whether it applied: False off Linux or with another C library (musl). Calling it
    again does nothing more. With another allocator preloaded (jemalloc, tcmalloc) glibc's
    settings are moot: it still returns True. The runner calls it where
    :func:`jaxcnn.cpu.enabled`; this module imports only the standard library.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  glibc only: musl has mallopt but not these
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # The trim threshold first: should the second call fail, nothing has changed how large
    # blocks are served.
    _applied = bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)) and bool(mallopt(_M_MMAP_MAX, 0))
    return _applied
