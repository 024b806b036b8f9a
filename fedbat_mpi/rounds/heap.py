"""The process's heap kept between training steps (glibc only), so that a step reuses the memory of the
last one instead of faulting in fresh pages.

glibc hands a freed allocation above its mmap threshold back to the kernel, and trims the top of the
heap once more than its trim threshold is free there. Both adapt to the largest chunk freed (the trim
threshold to twice that), but a CPU training step frees its whole working set at once (every
activation and gradient, tens of MB for CNN4-MNIST at batch 64, hundreds for ResNet-10): the top is
trimmed after every step and the next step faults all of it in again. On the 2-core development
machine that was 2,900-5,600 minor faults and 5-11 ms of system time a CNN4-MNIST step of 64 images
(BENCHMARKS.md §10). With a fixed mmap threshold of 32 MiB (the most glibc takes) and a trim threshold
of 256 MiB, the heap keeps what a step frees and the next step reuses it: allocations change place,
not value, so results are bit for bit the same. The process's peak memory is the same too (a step's
working set is reached at every step either way); between steps it stays at that peak, up to 256 MiB
more than it would.
"""

import ctypes
import ctypes.util
import os

MMAP_THRESHOLD = 32 * 2**20  # allocations above this still go to mmap and back to the kernel when freed
TRIM_THRESHOLD = 256 * 2**20  # free memory at the heap's top kept for the next step
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc's malloc.h)
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_heap() -> bool:
    """Set glibc's mmap and trim thresholds as the module docstring says; True if set. Nothing is
    changed (False) on another C library or where the user's environment already tunes malloc."""
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):  # no C library by that name, or no mallopt (not glibc)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
