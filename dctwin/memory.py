"""The server process's heap (issue 24, memory): glibc's large-allocation threshold.

glibc serves an allocation of at least M_MMAP_THRESHOLD bytes with its own mapping,
returned to the system when freed; the threshold starts at 128 kB but grows to the size
of every such block freed (up to 32 MB), so after the anomaly fit's first large numpy
temporaries, later ones come from the heap and their pages stay with the process. Fixed
at 128 kB, the server's large temporaries go back when freed: on the issue-24 bench
(`bench/bench_series.py --memory --serve`) `dctwin serve` peaked ~35 MB lower. Not for
batch commands: the mappings cost page faults on every large array (the detector bench
scored ~30 % fewer points/s with it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def fix_mmap_threshold(threshold_bytes: int) -> bool:
    """Fix glibc's mmap threshold (0: leave glibc's adaptive default). False where the C
    library is not glibc or refuses it."""
    if threshold_bytes <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("memory: no glibc mallopt here; the heap keeps its defaults")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))
