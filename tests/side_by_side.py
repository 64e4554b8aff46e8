"""Independent runs started together, as many at a time as there are cores.

For subprocess runs that each use one thread (training and evaluation
through the tools with ``OMP_NUM_THREADS=1``, fresh interpreters): on a
2-core machine two of them take about the time of one. A run that needs
another's output starts as soon as that one has finished.
"""
import os
import threading
from concurrent.futures import (FIRST_COMPLETED, Future, ThreadPoolExecutor,
                                wait)
from typing import Callable, Dict, Hashable, Optional


def cores() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def side_by_side(calls: Dict[Hashable, Callable[[], object]],
                 after: Optional[Dict[Hashable, Hashable]] = None
                 ) -> Dict[Hashable, Future]:
    """Run every call (one per core at a time) and wait for all of them.

    Args:
        calls: name -> a callable without arguments (``functools.partial``).
        after: name -> the name of the call it needs: it starts once that
            one has returned, and is not run (its future holds a
            ``RuntimeError`` naming it) if that one raised.

    Returns:
        name -> its finished ``Future``: ``.result()`` gives the call's
        value or raises what the call raised, so that each test fails on its
        own run only.
    """
    after = dict(after or {})
    unknown = (set(after) | set(after.values())) - set(calls)
    if unknown:
        raise KeyError(f'after names calls that do not exist: {unknown}')
    for name in after:  # every chain must end at a call that needs nothing
        seen = {name}
        while name in after:
            name = after[name]
            if name in seen:
                raise ValueError(f'after has a cycle through {name!r}')
            seen.add(name)
    dependents = {name: [n for n, first in after.items() if first == name]
                  for name in calls}
    futures: Dict[Hashable, Future] = {}
    lock = threading.Lock()
    pool = ThreadPoolExecutor(max_workers=max(1, min(cores(), len(calls))))

    def not_run(name, missing):
        future = Future()
        future.set_exception(RuntimeError(
            f'{name!r} was not run: {missing!r}, which it needs, failed'))
        with lock:
            futures[name] = future
        for dependent in dependents[name]:
            not_run(dependent, missing)

    def start(name):
        with lock:
            futures[name] = pool.submit(job, name)

    def job(name):
        try:
            value = calls[name]()
        except BaseException:
            for dependent in dependents[name]:
                not_run(dependent, name)
            raise
        for dependent in dependents[name]:
            start(dependent)  # registered before this future completes
        return value

    try:
        for name in calls:
            if name not in after:
                start(name)
        while True:
            with lock:
                pending = [f for f in futures.values() if not f.done()]
                complete = len(futures) == len(calls)
            if not pending and complete:
                return dict(futures)
            wait(pending, return_when=FIRST_COMPLETED)
    finally:
        pool.shutdown(wait=True)
