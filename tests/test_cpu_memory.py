"""Freed memory kept for reuse in CPU runs (mmtranscnn.engine.cpu_memory).

Each check runs in a fresh interpreter: the setting is process-wide."""
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(not sys.platform.startswith('linux'),
                           reason='glibc mallopt: Linux only')

# Faults while a 64 MB tensor is allocated, written and freed 10 times after
# two first times (16384 pages each time with the system's malloc, which
# maps such blocks afresh and unmaps them on free).
PROBE = r'''
import resource, sys, torch
from mmtranscnn.engine.cpu_memory import keep_freed_memory
reason = keep_freed_memory() if sys.argv[1] == 'keep' else 'not asked'
for _ in range(2):
    t = torch.empty(16 * 2**20); t.fill_(1.); del t
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    t = torch.empty(16 * 2**20); t.fill_(1.); del t
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(reason, faults)
'''

PAGES_WRITTEN = 10 * 16384  # 4 KB pages written in the 10 rounds


def _probe(mode, env=None):
    import os
    out = subprocess.run([sys.executable, '-c', PROBE, mode], check=True,
                         capture_output=True, text=True,
                         env=dict(os.environ, **(env or {})))
    reason, faults = out.stdout.strip().rsplit(' ', 1)
    return reason, int(faults)


@glibc
def test_recycled_tensors_take_no_page_faults():
    reason, faults = _probe('keep')
    assert reason == 'None', reason
    # (now and then one round still faults: a small block freed above the
    # big one keeps the heap's top from being reused in place)
    assert faults < 0.3 * PAGES_WRITTEN, faults
    # the premise: with the system's settings every round faults anew
    _, system_faults = _probe('system')
    assert system_faults > 0.8 * PAGES_WRITTEN, system_faults


@glibc
def test_fast_path_switch_turns_it_off():
    reason, faults = _probe('keep', {'MMTRANSCNN_FAST_PATHS': '0'})
    assert 'MMTRANSCNN_FAST_PATHS' in reason
    assert faults > 0.8 * PAGES_WRITTEN


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


TRIM_PROBE = r'''
import os, torch
from mmtranscnn.engine.cpu_memory import keep_freed_memory, trim_freed_memory

def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')

assert keep_freed_memory() is None
t = torch.empty(16 * 2**20); t.fill_(1.); del t  # 64 MB, kept by glibc
kept = rss()
trim_freed_memory()
print((kept - rss()) // 2**20)
'''


@glibc
def test_trim_hands_kept_memory_back():
    """What glibc keeps for reuse goes back to the system on request (the
    benchmark's memory reading starts from live data only)."""
    out = subprocess.run([sys.executable, '-c', TRIM_PROBE], check=True,
                         capture_output=True, text=True)
    assert int(out.stdout.strip().splitlines()[-1]) > 48, out.stdout
