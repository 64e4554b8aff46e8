"""Freed memory kept for reuse in CPU training (glibc's malloc).

PyTorch's CPU tensors come straight from ``malloc``. glibc serves every
block above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and
returns it to the kernel on ``free``, so the next tensor of that size is
new memory again, and its first write takes one page fault per 4 KB.
Training at detection size allocates and frees such maps at every step.

:func:`keep_freed_memory` switches glibc to serve every block from its
heap (``M_MMAP_MAX = 0``) and to keep freed heap memory
(``M_TRIM_THRESHOLD`` at its maximum). What a process holds then stays
at its peak instead of shrinking between steps. It changes the whole
process, so the model never calls it: the training entry point does
(``tools/train.py`` through :func:`keep_freed_memory_for_cpu_run`, not
with CUDA), and so do the benchmark tools for CPU train steps
(``--system-malloc`` leaves malloc alone). docs/cpu_performance.md gives
what it saves.
"""
import ctypes
import ctypes.util
import functools
import gc
from typing import Optional


__all__ = ['keep_freed_memory', 'keep_freed_memory_for_cpu_run',
           'trim_freed_memory']

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_TRIM_MAX = 2**31 - 1  # mallopt takes an int

_memory_kept = False


@functools.lru_cache(maxsize=None)
def glibc() -> Optional[ctypes.CDLL]:
    """The process's C library if it is glibc (opened once), else None."""
    name = ctypes.util.find_library('c') or 'libc.so.6'
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    # gnu_get_libc_version exists in glibc only (not musl, not macOS).
    if not all(hasattr(libc, fn) for fn in
               ('gnu_get_libc_version', 'mallopt', 'malloc_trim')):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


def keep_freed_memory() -> Optional[str]:
    """Make glibc's malloc keep freed memory for the next allocations.

    Process-wide and idempotent; call it before the large allocations.

    Returns:
        None once applied (now or before), else why not (not glibc, or
        ``mallopt`` refused).
    """
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
    """Collect garbage and hand glibc's free heap pages back to the system
    (``malloc_trim``), so that one measurement does not inherit the
    previous one's heap; a no-op beyond ``gc.collect`` without glibc."""
    gc.collect()
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


def keep_freed_memory_for_cpu_run(log=print) -> Optional[str]:
    """:func:`keep_freed_memory` where no CUDA device is in use (a GPU
    run's host allocations are small and few), with one line saying what
    was done.

    Args:
        log: where the line goes (``print``, mmengine's ``print_log``, or
            None for silence).
    """
    import torch
    if torch.cuda.is_available():
        return 'CUDA is available: GPU runs are left as they are'
    reason = keep_freed_memory()
    if log is not None:
        log('[mmtranscnn] CPU run: freed memory is kept for reuse (glibc '
            'mallopt; no page faults for recycled tensors)' if reason is None
            else f'[mmtranscnn] CPU run: freed memory is not kept: {reason}')
    return reason
