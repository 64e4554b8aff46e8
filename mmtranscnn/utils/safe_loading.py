"""Reading checkpoints without running their pickles: torch's allow-list.

torch >= 2.6 loads with ``weights_only=True``: only tensors, containers and
allow-listed globals are rebuilt, so a file cannot run code on load.
mmengine checkpoints hold a little more (the message hub's ``HistoryBuffer``
with numpy arrays, numpy scalars in the meta), the authors' released files
the training script's ``argparse.Namespace``. :func:`checkpoint_safe_globals`
lists exactly those. :func:`safe_load` reads one file with them in scope;
:func:`allow_checkpoint_globals` adds them for the whole process (our tools
at start-up, so mmengine's own ``resume``/``load_from`` read such files, and
``import mmtranscnn.safe_checkpoints`` for other entry points). Importing
``mmtranscnn`` alone changes nothing; ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
keeps torch's meaning.
"""
import argparse
import contextlib
import functools
import pickle
import threading
from typing import Any, Iterator

import numpy as np
import torch

# HistoryBuffer pickles its statistics methods as getattr(HistoryBuffer,
# name); mmengine's defaults are these.
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')
# Plain-number dtypes only: an object array would carry arbitrary objects.
_NUMERIC_DTYPES = '?bBhHiIlLqQefdgFDG'


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """``builtins.getattr`` while unpickling, for HistoryBuffer's methods
    only (``getattr`` is a classic pickle gadget)."""
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'getattr({obj!r}, {name!r}) is refused while loading a checkpoint;'
        f' only HistoryBuffer.{"/".join(_HISTORY_BUFFER_METHODS)} are allowed')


def _copying_bytes(*args: Any) -> bytes:
    """``builtins.bytes`` while unpickling: ``bytes()`` (an empty array's
    data) and copies only, not ``bytes(n)``, which allocates n bytes."""
    if not args or (len(args) == 1
                    and isinstance(args[0], (bytes, bytearray, memoryview))):
        return bytes(*args)
    raise pickle.UnpicklingError(
        f'bytes{args!r} is refused while loading a checkpoint')


@functools.lru_cache(maxsize=1)
def checkpoint_safe_globals() -> tuple:
    """What mmengine, numpy and DeiT-style training scripts pickle into
    checkpoints, as entries for ``torch.serialization.safe_globals``.

    ``(object, 'module.name')`` pairs pin the name written in the file;
    numpy's helpers have two, one per numpy major version.
    """
    from mmengine.logging import HistoryBuffer
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 1.26
        from numpy.core import multiarray
    entries = [HistoryBuffer, argparse.Namespace, np.ndarray, np.dtype,
               (_history_buffer_getattr, 'builtins.getattr'),
               (_copying_bytes, 'builtins.bytes')]
    for helper in ('_reconstruct', 'scalar'):
        for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
            entries.append((getattr(multiarray, helper), f'{module}.{helper}'))
    # A dtype is rebuilt with BUILD, which torch allows on listed types only.
    entries += [type(np.dtype(code)) for code in _NUMERIC_DTYPES]
    return tuple(dict.fromkeys(entries))


def allow_checkpoint_globals() -> None:
    """Add :func:`checkpoint_safe_globals` to torch's allow-list for the
    whole process (tool processes and the opt-in module only)."""
    torch.serialization.add_safe_globals(list(checkpoint_safe_globals()))


_scope_lock = threading.Lock()
_scope_users = 0
_scope_added: list = []


@contextlib.contextmanager
def checkpoint_globals_allowed() -> Iterator[None]:
    """:func:`checkpoint_safe_globals` on torch's allow-list while inside.

    Not torch's ``safe_globals`` context: on exit that removes its entries
    even when they were listed before (by :func:`allow_checkpoint_globals`
    or the user) or are in use by a load in another thread. Here the first
    user adds only what is missing and the last one removes only that.
    """
    global _scope_users, _scope_added
    serialization = torch.serialization
    with _scope_lock:
        if _scope_users == 0:
            listed = serialization.get_safe_globals()
            _scope_added = [e for e in checkpoint_safe_globals()
                            if e not in listed]
            serialization.add_safe_globals(_scope_added)
        _scope_users += 1
    try:
        yield
    finally:
        with _scope_lock:
            _scope_users -= 1
            if _scope_users == 0 and _scope_added:
                kept = [e for e in serialization.get_safe_globals()
                        if e not in _scope_added]
                serialization.clear_safe_globals()
                serialization.add_safe_globals(kept)


def safe_load(filename: str, map_location: Any = 'cpu') -> Any:
    """``torch.load`` a file with :func:`checkpoint_safe_globals` in scope.

    Args:
        filename: path of the checkpoint.
        map_location: as for :func:`torch.load`.

    Raises:
        pickle.UnpicklingError: the file holds globals off the list; the
            message names the file and them.
    """
    with checkpoint_globals_allowed():
        try:
            return torch.load(filename, map_location=map_location)
        except pickle.UnpicklingError as error:
            try:
                names = torch.serialization.get_unsafe_globals_in_checkpoint(
                    filename)
            except Exception:  # not a zip file: torch's message says it
                names = []
            raise pickle.UnpicklingError(
                f'refusing to load {filename!r}: it pickles '
                f'{", ".join(sorted(names)) or "objects"} beyond tensors and '
                'the allow-list of mmtranscnn.utils.safe_loading (running '
                'them could execute code). If you trust the file, load it '
                'with torch.load(weights_only=False) and save its tensors.' +
                ('' if names else f'\n{error}')) from error


__all__ = ['allow_checkpoint_globals', 'checkpoint_globals_allowed',
           'checkpoint_safe_globals', 'safe_load']
