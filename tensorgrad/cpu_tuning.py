"""Process-wide CPU settings a training loop opts into: the allocator and BLAS's threads.

Neither changes a result; both change how fast a CPU step runs, for the whole process,
so nothing turns them on by itself: the GPT trainer does (gpt/train.py, on --device cpu),
and nn/threads.py holds BLAS to one thread while its shards run. A loop of your own
may call them the same way:

    from tensorgrad import cpu_tuning
    cpu_tuning.keep_freed_memory()
"""
import ctypes
import functools
import os
import sys

import numpy as np


def keep_freed_memory(on=True):
    """Let glibc keep freed blocks for reuse instead of returning them to the OS.

    glibc gives a large block (over 128 KiB at first) back to the OS when it is
    freed, so every temporary array of a training step is mapped afresh and
    page-faults on first touch: a large part of a CPU step's time. Raising the
    mmap and trim thresholds keeps the blocks in the heap, where the next step's
    temporaries of the same sizes find them. The heap then stays at the step's
    peak instead of shrinking between steps (the peak itself does not grow).

    keep_freed_memory(False) puts glibc's defaults back; the environment variable
    TENSORGRAD_KEEP_FREED_MEMORY=0 makes keep_freed_memory() do nothing.
    Linux/glibc only; returns whether it was applied.
    """
    if not sys.platform.startswith("linux") or on and os.environ.get("TENSORGRAD_KEEP_FREED_MEMORY") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    threshold = 1 << 30 if on else 128 * 1024     # glibc's starting value, 128 KiB, for off
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, threshold))


_BLAS_THREAD_CALLS = [                 # (get, set) as OpenBLAS builds name them: plain, 64-bit ints, NumPy's wheels
    (prefix + "get_num_threads" + suffix, prefix + "set_num_threads" + suffix)
    for prefix in ("openblas_", "scipy_openblas_") for suffix in ("", "64_", "_64_")]


def blas_threads(n=None):
    """The number of threads NumPy's BLAS (OpenBLAS) multiplies with; with n, set it first.
    None when this NumPy's BLAS can't be told (not OpenBLAS, or not found).

    One process that runs products on several Python threads at once (nn/threads.py)
    wants one BLAS thread each: OpenBLAS's own threads would otherwise fight them for
    the cores. Found the way threadpoolctl finds it: the loaded library whose path names
    openblas, and its get/set functions.
    """
    calls = _find_blas_thread_calls()
    if calls is None:
        return None
    get, set_ = calls
    if n is not None:
        set_(int(n))
    return int(get())


@functools.lru_cache(maxsize=None)
def _find_blas_thread_calls():
    """(get, set) of the loaded OpenBLAS, or None; looked up once."""
    np.dot(np.ones((2, 2)), np.ones((2, 2)))     # the library is loaded by now, whatever NumPy's build
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:                               # not Linux
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get, set_ in _BLAS_THREAD_CALLS:
            if hasattr(lib, get) and hasattr(lib, set_):
                getter, setter = getattr(lib, get), getattr(lib, set_)
                getter.restype, setter.argtypes = ctypes.c_int, [ctypes.c_int]
                return getter, setter
    return None
