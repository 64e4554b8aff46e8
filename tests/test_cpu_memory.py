"""Freed memory kept for reuse in CPU runs (mmtranscnn.engine.cpu_memory).

The setting is process-wide, so each check reads a fresh interpreter: one
that keeps freed memory and one with glibc's own settings, run side by
side. Each allocates a 64 MB tensor (above glibc's largest mmap threshold,
32 MB), writes it and frees it, and reports what glibc's ``mallinfo`` and
the kernel's page-fault counter saw.
"""
import functools
import json
import os
import subprocess
import sys

import pytest

from side_by_side import side_by_side

glibc = pytest.mark.skipif(not sys.platform.startswith('linux'),
                           reason='glibc mallopt: Linux only')

PROBE = r'''
import ctypes, ctypes.util, json, os, resource, sys
import torch
from mmtranscnn.engine.cpu_memory import keep_freed_memory, trim_freed_memory

libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
# Fresh anonymous memory backed by transparent huge pages faults once per
# 2 MB instead of once per page: counts would depend on the machine's THP
# setting. PR_SET_THP_DISABLE (41) turns THP off for this process only.
libc.prctl(41, 1, 0, 0, 0)
wide = hasattr(libc, 'mallinfo2')  # glibc >= 2.33; before, int fields
field = ctypes.c_size_t if wide else ctypes.c_int


class Mallinfo(ctypes.Structure):
    _fields_ = [(name, field) for name in (
        'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',
        'fsmblks', 'uordblks', 'fordblks', 'keepcost')]


mallinfo = libc.mallinfo2 if wide else libc.mallinfo
mallinfo.restype = Mallinfo
NUMEL = 16 * 2**20  # float32: 64 MB


def heap():
    m = mallinfo()
    # hblks / hblkhd: blocks and bytes served by mmap; uordblks: bytes in
    # use from the heap
    return dict(mmap_blocks=m.hblks, mmap_bytes=m.hblkhd,
                heap_bytes=m.uordblks)


def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


reason = keep_freed_memory() if sys.argv[1] == 'keep' else 'not asked'
before = heap()
t = torch.empty(NUMEL)
alive = heap()
del t
rounds = []
for _ in range(10):
    start = faults()
    t = torch.empty(NUMEL); t.fill_(1.); del t
    rounds.append(faults() - start)
kept = rss()
trim_freed_memory()
print(json.dumps(dict(
    reason=reason, rounds=rounds,
    pages=NUMEL * 4 // os.sysconf('SC_PAGE_SIZE'),
    grown={k: alive[k] - before[k] for k in before},
    trimmed_mb=(kept - rss()) / 2**20)))
'''


def _probe(mode):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('MALLOC_', 'GLIBC_TUNABLES', 'LD_PRELOAD'))}
    env['OMP_NUM_THREADS'] = '1'
    out = subprocess.run([sys.executable, '-c', PROBE, mode],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def probes():
    """mode ('keep' or 'system') -> what its fresh interpreter reported."""
    futures = side_by_side({mode: functools.partial(_probe, mode)
                            for mode in ('keep', 'system')})
    return {mode: f.result() for mode, f in futures.items()}


@glibc
def test_kept_memory_serves_big_tensors_from_the_heap(probes):
    """With kept memory a 64 MB tensor comes from malloc's heap: no mmap'd
    block exists for it while it is alive. With the system's settings it is
    a fresh mmap (the premise; it is also what the release of memory on
    ``free`` and the page faults of the next tensor come from)."""
    keep, system = probes['keep'], probes['system']
    assert keep['reason'] is None, keep['reason']
    assert keep['grown']['mmap_blocks'] == 0, keep
    assert keep['grown']['mmap_bytes'] == 0, keep
    assert keep['grown']['heap_bytes'] >= 64 * 2**20, keep
    assert system['grown']['mmap_blocks'] >= 1, system
    assert system['grown']['mmap_bytes'] >= 64 * 2**20, system


@glibc
@pytest.mark.perf
def test_recycled_tensors_take_no_page_faults(probes):
    """A 64 MB tensor allocated, written and freed 10 times: with kept
    memory the best round writes pages that are already mapped (< 10% of
    its pages fault); with the system's settings even the best round
    faults on > 80% of them.

    The best round, not the total: a round that must grow the heap (a
    small block freed above the big one can keep its place from being
    reused) faults in full, and how many rounds do depends on the machine.
    """
    keep, system = probes['keep'], probes['system']
    assert min(keep['rounds']) < 0.1 * keep['pages'], keep['rounds']
    assert min(system['rounds']) > 0.8 * system['pages'], system['rounds']


@glibc
@pytest.mark.perf
def test_trim_hands_kept_memory_back(probes):
    """What glibc keeps for reuse goes back to the system on request (the
    benchmark's memory reading starts from live data only)."""
    assert probes['keep']['trimmed_mb'] > 48, probes['keep']


def test_cpu_run_helper_says_what_it_did(monkeypatch):
    import torch

    from mmtranscnn.engine import cpu_memory
    lines = []
    monkeypatch.setattr(cpu_memory, 'keep_freed_memory', lambda: 'a reason')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert cpu_memory.keep_freed_memory_for_cpu_run(lines.append) == \
        'a reason'
    assert lines == ['[mmtranscnn] CPU run: freed memory is not kept: '
                     'a reason']
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    called = []
    monkeypatch.setattr(cpu_memory, 'keep_freed_memory',
                        lambda: called.append(1))
    assert 'CUDA' in cpu_memory.keep_freed_memory_for_cpu_run(lines.append)
    assert not called
