"""Freed memory kept for reuse in CPU training (glibc's malloc).

glibc serves every block above its mmap threshold (at most 32 MB) with a
fresh ``mmap`` and unmaps it on ``free``, so the next tensor of that size
takes one page fault per 4 KB again; training at detection size does that
at every step. :func:`keep_freed_memory` makes glibc serve every block from
its heap and keep freed heap memory. That changes the whole process, so
only entry points call it (``tools/train.py``, the benchmark tools).
"""
import ctypes
import ctypes.util
import functools
import gc
from typing import Optional

import torch

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_TRIM_MAX = 2**31 - 1  # mallopt takes an int

_memory_kept = False


@functools.lru_cache(maxsize=None)
def glibc() -> Optional[ctypes.CDLL]:
    """The process's C library if it is glibc (opened once), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    except OSError:
        return None
    # gnu_get_libc_version exists in glibc only (not musl, not macOS).
    if not all(hasattr(libc, fn) for fn in
               ('gnu_get_libc_version', 'mallopt', 'malloc_trim')):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def keep_freed_memory() -> Optional[str]:
    """Make glibc's malloc keep freed memory for the next allocations
    (process-wide, idempotent; call it before the large allocations).
    Returns None once applied (now or before), else why not."""
    global _memory_kept
    if _memory_kept:
        return None
    libc = glibc()
    if libc is None:
        return 'the C library is not glibc'
    if libc.mallopt(M_MMAP_MAX, 0) != 1:
        return 'mallopt(M_MMAP_MAX, 0) was refused'
    if libc.mallopt(M_TRIM_THRESHOLD, _TRIM_MAX) != 1:
        return 'mallopt(M_TRIM_THRESHOLD) was refused'
    _memory_kept = True
    return None


def trim_freed_memory() -> None:
    """Collect garbage and hand glibc's free heap pages back to the system,
    so that one measurement does not inherit the previous one's heap."""
    gc.collect()
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


def keep_freed_memory_for_cpu_run(log=print) -> Optional[str]:
    """:func:`keep_freed_memory` unless CUDA is in use (a GPU run's host
    allocations are few), with one line saying what was done.

    Args:
        log: where the line goes (``print``, mmengine's ``print_log``, or
            None for silence).
    """
    if torch.cuda.is_available():
        return 'CUDA is available: GPU runs are left as they are'
    reason = keep_freed_memory()
    if log is not None:
        log('[mmtranscnn] CPU run: freed memory is kept for reuse (glibc '
            'mallopt; no page faults for recycled tensors)' if reason is None
            else f'[mmtranscnn] CPU run: freed memory is not kept: {reason}')
    return reason
