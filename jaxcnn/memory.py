"""Host memory allocation for training on the CPU.

Why: XLA's CPU runtime allocates each compiled call's buffers afresh, and its fused operations
allocate scratch at every step. glibc's ``malloc`` serves the large ones with a fresh ``mmap``
and hands them back with ``munmap`` on ``free``, so the next call touches new pages and pays a
page fault for each 4 KiB of them. With :func:`keep_freed_memory`, in the runner's compiled
calls of 20 steps on a 2-core AVX-512 EPYC: simple_cnn at batch 128 went from 757 to 189 page
faults a step and trained 4% faster, lenet5 2% (batch 128) and 8% (batch 1024); simple_cnn at
batch 1024 kept its faults and its speed (``benchmarks/keep_freed_memory.py``; why, in
``benchmarks/README.md``). The
usual cure is a caching allocator (jemalloc or tcmalloc, preloaded); this gets part of its
effect from glibc itself, with ``mallopt``.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["ENV_VAR", "keep_freed_memory"]

#: Set to ``0`` to leave glibc's ``malloc`` as it is (the runner then does not call
#: :func:`keep_freed_memory`).
ENV_VAR = "JAXCNN_KEEP_FREED_MEMORY"

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied = False


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep the memory it frees for the next allocation: no ``mmap``
    per large block (``M_MMAP_MAX = 0``) and no trimming of the heap below 2 GiB of free space
    (``M_TRIM_THRESHOLD``). Process-wide and for the rest of the process; the cost is that the
    process keeps its peak heap instead of returning freed memory to the system.

    Returns whether it applied: False off Linux, with another C library (musl), or when
    ``JAXCNN_KEEP_FREED_MEMORY=0``. Calling it again does nothing more.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get(ENV_VAR, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  glibc only: musl has mallopt but not these
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied
