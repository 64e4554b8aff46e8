"""Independent runs started together, as many at a time as there are cores.

For subprocess runs that each use one thread (training and evaluation
through the tools with ``OMP_NUM_THREADS=1``, fresh interpreters): on a
2-core machine two of them take about the time of one.
"""
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Dict, Hashable


def cores() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def side_by_side(calls: Dict[Hashable, Callable[[], object]]
                 ) -> Dict[Hashable, Future]:
    """Run every call (one per core at a time) and wait for all of them.

    Args:
        calls: name -> a callable without arguments (``functools.partial``).

    Returns:
        name -> its finished ``Future``: ``.result()`` gives the call's
        value or raises what the call raised, so that each test fails on its
        own run only.
    """
    with ThreadPoolExecutor(max_workers=max(1, min(cores(),
                                                   len(calls)))) as pool:
        return {name: pool.submit(call) for name, call in calls.items()}
