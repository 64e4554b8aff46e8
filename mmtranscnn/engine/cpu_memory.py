"""Freed memory kept for reuse in CPU runs (glibc's malloc).

PyTorch's CPU tensors come straight from ``malloc``. glibc serves every
block above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and
returns it to the kernel on ``free``, so the next tensor of that size is
new memory again, and its first write takes one page fault per 4 KB.
Training at detection size allocates and frees such maps all the time
(a stage-1 map of 200x336x256 floats is 69 MB). Measured on a 2-core
Intel Xeon VM (TransCNN-Base backbone train step at 800x1344, fp32): about
0.4-1.0 million page faults and 1.8-4.1 s of kernel time per 8-10 s step;
with freed memory kept, 20-60 thousand faults, 0.2-0.4 s and a 6.5-6.8 s
step. The PyTorch CPU tuning guide gives the same advice (an allocator
that keeps memory: jemalloc, tcmalloc); this does it with glibc's own
``mallopt``, with nothing to install or preload.

:func:`keep_freed_memory` (in :mod:`mmtranscnn.models.fastpath`, with the
other CPU speed paths, behind the same switch) switches glibc to serve every block from its heap
(``M_MMAP_MAX = 0``) and to keep freed heap memory (``M_TRIM_THRESHOLD``
at its maximum). What a process holds then stays at its peak instead of
shrinking between steps; the peak itself is what the run needs anyway.
``tools/train.py`` and the benchmark tools call it for CPU training (not
with CUDA); the fast-path switch (``MMTRANSCNN_FAST_PATHS=0``) turns it
off with every other CPU speed path.

Inference is left alone: TransCNN-Base at 800x1344 allocates few fresh
maps per step and gained nothing beyond noise (0.51 vs 0.52 img/s),
while its peak memory grew from 279 to 481 MB (heap blocks of other sizes
are not reused exactly).
"""
from typing import Optional

from mmtranscnn.models.fastpath import keep_freed_memory

__all__ = ['keep_freed_memory', 'keep_freed_memory_for_cpu_run']


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
