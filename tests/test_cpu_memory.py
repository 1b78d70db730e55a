"""jaxcnn.cpu.memory: glibc keeps freed memory, so reusing a large buffer costs no page faults."""

import os
import subprocess
import sys

import pytest

# Mallocs, touches and frees a 64 MiB buffer, then counts the minor page faults of doing it
# again: about 16,000 (one per 4 KiB page) when malloc maps fresh memory, near 0 when reused.
_PROBE = """
import ctypes, resource, sys
from jaxcnn.cpu import memory
applied = memory.keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(None)
libc.prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: count 4 KiB pages, whatever the THP setting
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def touch():  # as XLA's buffers: plain malloc (NumPy would ask for huge pages)
    p = libc.malloc(64 << 20); ctypes.memset(p, 1, 64 << 20); libc.free(p)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))
           and k != "LD_PRELOAD"}  # glibc's defaults in the probe
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_keep_freed_memory_reuses_pages_instead_of_faulting_new_ones():
    applied, kept = _faults("keep")
    if applied == "False":
        pytest.skip("not glibc (keep_freed_memory returned False)")
    _, fresh = _faults("default")
    assert fresh > 10_000, fresh  # 64 MiB of 4 KiB pages, mapped anew
    assert kept < 1_000, kept

