"""Load mmengine checkpoints on torch >= 2.6 without unpickling arbitrary code.

Why this module exists
----------------------
torch 2.6 made ``torch.load(..., weights_only=True)`` the default. mmengine
0.10.7 calls ``torch.load`` without the argument, and its own checkpoints hold
more than tensors: the message hub stores ``HistoryBuffer`` objects (numpy
arrays inside, plus its statistics methods pickled as
``getattr(HistoryBuffer, 'mean')``) and the meta holds numpy scalars. So
``resume``, ``load_from`` and ``init_cfg=dict(type='Pretrained')`` all fail
with ``UnpicklingError``. Turning ``weights_only`` off would fix that and open
a code-execution hole (a pickle can call ``os.system`` on load), so instead we
keep ``weights_only=True`` and allow-list exactly the globals that mmengine and
numpy write into checkpoints (found by saving a real Runner checkpoint and
reading what the restricted unpickler rejects).

When it is active
-----------------
Importing ``mmtranscnn`` does not switch it on: a plugin import should not
change how every other model in the process loads checkpoints. It is on
where it is asked for: our tools (``tools/train.py``, ``tools/test.py``, the
demos and converters) call :func:`enable_safe_checkpoint_loading`, and any
other entry point opts in with ``import mmtranscnn.safe_checkpoints``
(``custom_imports``) or that call. :func:`safe_loading_enabled` tells
whether it is on. TransCNN's own ``init_cfg=dict(type='Pretrained')`` loads
through :func:`safe_torch_load` either way. ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``,
torch's documented opt-out, is honoured: with it set, files load as torch
would load them.

Design: a scoped allow-list inside mmengine's loaders
-----------------------------------------------------
Every checkpoint mmengine reads (Runner ``resume``/``load_from``,
``load_checkpoint``, ``PretrainedInit``, ``CheckpointHook``) goes through
``CheckpointLoader.load_checkpoint``, which dispatches on the path's scheme to
a loader registered with ``CheckpointLoader.register_scheme``. We register
our own local-file loader there and wrap the other schemes' loaders, and the
allow-list is active only while one of them runs (torch's scoped
``torch.serialization.safe_globals`` context; see :class:`SharedSafeGlobals`).
We do not call ``torch.serialization.add_safe_globals`` for the whole process
because:

* importing a backbone plugin should not widen what every other
  ``torch.load`` in the user's program accepts;
* the allow-list maps the name ``builtins.getattr`` to a restricted shim that
  only resolves HistoryBuffer's statistics methods; leaking that mapping into
  unrelated loads would give them confusing errors;
* only the loader knows the file path, which the clear error message and the
  per-file opt-in need.

The cost: torch keeps its allow-list in a process-wide set (its
``safe_globals`` context adds to and removes from that set; it is not
thread-local), so while one of our loads runs, a ``torch.load`` in another
thread also accepts these few data-only classes. A reference count keeps
concurrent and nested loads from removing the entries under each other's
feet, only entries that were not on the list are added, and the list is
never cleared: after the last load it is exactly as it was.

Opting in for one trusted legacy file
-------------------------------------
A file the allow-list refuses (e.g. an old checkpoint that pickled a config
object) can be loaded with full pickle only when the user names that exact
file, either with :func:`trust_checkpoint` or in the environment variable
``MMTRANSCNN_TRUSTED_CHECKPOINTS`` (file paths separated by ``os.pathsep``).
Directories, globs and empty entries are refused, so no setting can trust
more than the files it names.
"""
import contextlib
import functools
import os
import os.path as osp
import pickle
import re
import threading
from typing import (Any, Callable, ContextManager, Dict, Iterator, List,
                    Optional, Sequence, Set)

import numpy as np
import torch

TRUSTED_CHECKPOINTS_ENV = 'MMTRANSCNN_TRUSTED_CHECKPOINTS'

# Marks loaders we installed, so enabling twice wraps nothing twice.
_SAFE_MARK = '_mmtranscnn_safe_loader'


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds pickle globals outside the safe-loading allow-list.

    Subclasses :class:`pickle.UnpicklingError` so code that already catches
    torch's own error keeps working.

    Attributes:
        filename (str): The checkpoint that was refused.
        globals (list[str]): The refused globals, ``module.name`` each.
    """

    def __init__(self, message: str, filename: str, globals: List[str]):
        super().__init__(message)
        self.filename = filename
        self.globals = globals


# ---------------------------------------------------------------------------
# The allow-list
# ---------------------------------------------------------------------------

# HistoryBuffer.__getstate__ stores its class-level ``_statistics_methods``
# dict; with torch.save's pickle protocol 2 each method is written as
# ``builtins.getattr(HistoryBuffer, '<name>')``. These are the names mmengine
# registers by default.
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')

# numpy dtypes whose arrays/scalars hold plain numbers. Object, string and
# structured dtypes are left out on purpose: mmengine does not write them and
# an object array would carry arbitrary pickled Python objects.
_NUMERIC_DTYPE_CODES = ('?', 'b', 'B', 'h', 'H', 'i', 'I', 'l', 'L', 'q', 'Q',
                        'e', 'f', 'd', 'g', 'F', 'D', 'G')


def _restricted_getattr(obj: Any, name: str) -> Any:
    """Stand-in for ``builtins.getattr`` while unpickling.

    Resolves only HistoryBuffer's default statistics methods; anything else
    (``getattr`` is a classic pickle gadget) is refused.
    """
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'getattr({obj!r}, {name!r}) is not allowed while loading a '
        'checkpoint: only getattr(HistoryBuffer, one of '
        f'{list(_HISTORY_BUFFER_METHODS)}) is on the allow-list.')


def _restricted_bytes(*args: Any) -> bytes:
    """Stand-in for ``builtins.bytes`` while unpickling.

    Pickle protocol 2 (torch.save's) writes an empty ``bytes`` object as a
    call ``bytes()``, e.g. the data of an empty numpy array. Only that and
    copies of bytes-like values are allowed; ``bytes(n)`` with a number would
    let a file allocate any amount of memory.
    """
    if not args or (len(args) == 1 and isinstance(
            args[0], (bytes, bytearray, memoryview))):
        return bytes(*args)
    raise pickle.UnpicklingError(
        f'bytes{args!r} is not allowed while loading a checkpoint: only '
        'bytes() and copies of bytes are on the allow-list.')


def _numpy_multiarray():
    """The module holding numpy's pickle helpers, without deprecation noise.

    numpy 2.x moved ``numpy.core`` to ``numpy._core`` (the old name is a
    deprecated alias); numpy 1.26 ships ``numpy._core`` as an alias too;
    older numpy has only ``numpy.core``.
    """
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 1.26
        from numpy.core import multiarray
    return multiarray


@functools.lru_cache(maxsize=1)
def checkpoint_safe_globals() -> tuple:
    """The globals mmengine and numpy put into checkpoints, allow-listed.

    Each entry is an object or an ``(object, 'module.name')`` pair as accepted
    by :func:`torch.serialization.safe_globals`; pairs pin the name written
    in the pickle, which for numpy depends on the numpy version that saved
    the file (``numpy.core.multiarray`` for 1.x, ``numpy._core.multiarray``
    for 2.x).

    Returns:
        tuple: The allow-list (cached; built on first use).
    """
    from mmengine.logging import HistoryBuffer

    multiarray = _numpy_multiarray()
    entries: list = [HistoryBuffer, (_restricted_getattr, 'builtins.getattr'),
                     (_restricted_bytes, 'builtins.bytes')]
    # Arrays: _reconstruct(ndarray, shape, dtype) then ndarray.__setstate__;
    # scalars: scalar(dtype, raw bytes). Both paths, for either numpy major.
    for helper in ('_reconstruct', 'scalar'):
        func = getattr(multiarray, helper)
        for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
            entries.append((func, f'{module}.{helper}'))
    entries += [np.ndarray, np.dtype]
    # A dtype is pickled as numpy.dtype(code) followed by BUILD with its
    # state; torch allows BUILD only on allow-listed types, and the type of a
    # dtype instance is its DType class (numpy.dtypes.Float64DType, ...).
    for code in _NUMERIC_DTYPE_CODES:
        entries.append(type(np.dtype(code)))
    return tuple(dict.fromkeys(entries))  # drop duplicates, keep order


def scoped_safe_globals_supported() -> bool:
    """Whether this torch can list its allow-list
    (``torch.serialization.get_safe_globals``), so entries can be added for a
    while and taken away exactly."""
    serialization = torch.serialization
    return (hasattr(serialization, 'get_safe_globals')
            and hasattr(serialization, 'add_safe_globals'))


class _RebuiltScope:
    """For a torch that lists its allow-list but has no scoped
    ``safe_globals`` context: add the entries, and on exit rebuild the list
    without them (the only way to remove entries there)."""

    def __init__(self, entries: list):
        self._entries = entries

    def __enter__(self) -> None:
        torch.serialization.add_safe_globals(self._entries)

    def __exit__(self, *exc_info) -> None:
        added = set(self._entries)
        keep = [g for g in torch.serialization.get_safe_globals()
                if g not in added]
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(keep)


class SharedSafeGlobals:
    """``torch.serialization.safe_globals`` shared by overlapping loads.

    torch's context is not thread-local: entering it adds its entries to the
    process-wide allow-list and leaving it removes them, including any that
    were on the list before. So this class enters it once for the first of
    nested or concurrent users, with only the entries not on the list
    already, and leaves it when the last user leaves: once no load runs,
    the list is exactly what it was. While a load runs, a ``torch.load`` in
    another thread also accepts these entries (torch keeps one list per
    process), and one of them that the user adds during a load leaves with
    them. A torch without the scoped context gets the same behaviour from
    add/clear; on one that cannot list its allow-list nothing is added.

    Args:
        entries: returns the globals to allow (objects or
            ``(object, 'module.name')`` pairs), called on first use.
    """

    def __init__(self, entries: Callable[[], Sequence]):
        self._entries = entries
        self._lock = threading.Lock()
        self._depth = 0
        self._scope = None

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Context in which the entries are on torch's allow-list."""
        if not scoped_safe_globals_supported():
            yield
            return
        with self._lock:
            if self._depth == 0:
                present = set(torch.serialization.get_safe_globals())
                added = [g for g in self._entries() if g not in present]
                scoped = getattr(torch.serialization, 'safe_globals', None)
                scope = (scoped(added) if scoped is not None else
                         _RebuiltScope(added))
                scope.__enter__()
                self._scope = scope
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    scope, self._scope = self._scope, None
                    scope.__exit__(None, None, None)


_MMENGINE_GLOBALS = SharedSafeGlobals(checkpoint_safe_globals)


def mmengine_safe_globals() -> ContextManager[None]:
    """Context in which ``torch.load(weights_only=True)`` reads mmengine files.

    :class:`torch.serialization.safe_globals` with
    :func:`checkpoint_safe_globals`, shared by nested and concurrent loads
    (:class:`SharedSafeGlobals`): leaving the last one restores torch's
    allow-list exactly, entries the user added before included. On a torch
    that cannot list its allow-list (< 2.5), nothing is added:
    ``weights_only=True`` still reads tensors, containers and numbers, and a
    file with mmengine objects is refused as untrusted.
    """
    return _MMENGINE_GLOBALS.scope()


# ---------------------------------------------------------------------------
# Per-file opt-in
# ---------------------------------------------------------------------------

_trusted_files: Set[str] = set()


def _canonical(path: str) -> str:
    return osp.realpath(osp.expanduser(path))


def _check_trust_entry(path: str, source: str) -> str:
    """Canonical path of one opt-in entry; refuses anything but one file."""
    if not path or not path.strip():
        raise ValueError(f'{source}: empty entry; name a checkpoint file.')
    if any(ch in path for ch in '*?['):
        raise ValueError(
            f'{source}: {path!r} looks like a pattern; trust is given per '
            'file, so name each checkpoint file exactly.')
    real = _canonical(path)
    if osp.isdir(real):
        raise ValueError(
            f'{source}: {path!r} is a directory; trust is given per file, '
            'so name each checkpoint file exactly.')
    return real


def trust_checkpoint(path: str) -> str:
    """Allow full (unsafe) unpickling of this one checkpoint file.

    Use it only for a file you produced or otherwise trust, e.g. a legacy
    checkpoint that pickled objects outside the allow-list. The file is still
    tried with the allow-list first; full pickle is used only if that fails.

    Args:
        path (str): Path of the checkpoint file (``~`` and symlinks are
            resolved; the file must exist).

    Returns:
        str: The canonical path that is now trusted.
    """
    real = _check_trust_entry(path, 'trust_checkpoint')
    if not osp.isfile(real):
        raise FileNotFoundError(
            f'trust_checkpoint: {path!r} is not an existing file.')
    _trusted_files.add(real)
    return real


def untrust_checkpoint(path: str) -> None:
    """Withdraw a :func:`trust_checkpoint` opt-in (no error if absent).

    Args:
        path (str): The path given to :func:`trust_checkpoint`.
    """
    _trusted_files.discard(_canonical(path))


def is_trusted_checkpoint(path: str) -> bool:
    """Whether the user opted in for full unpickling of this exact file.

    Args:
        path (str): A local checkpoint path.

    Returns:
        bool: True if :func:`trust_checkpoint` named it or it is listed in
        ``$MMTRANSCNN_TRUSTED_CHECKPOINTS``.
    """
    real = _canonical(path)
    if real in _trusted_files:
        return True
    value = os.environ.get(TRUSTED_CHECKPOINTS_ENV, '')
    if not value:
        return False
    return real in {
        _check_trust_entry(entry, TRUSTED_CHECKPOINTS_ENV)
        for entry in value.split(os.pathsep)
    }


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

_GLOBAL_IN_TORCH_ERROR = re.compile(r'GLOBAL (\S+)')


def _refused_globals(filename: Optional[str], error: Exception) -> List[str]:
    """Names of the globals that made the restricted unpickler give up."""
    names: List[str] = []
    if filename is not None:
        try:  # lists every offending global, not only the first one
            with mmengine_safe_globals():  # so ours are not listed as unsafe
                names = sorted(
                    torch.serialization.get_unsafe_globals_in_checkpoint(
                        filename))
        except Exception:  # legacy (non-zip) format or unreadable: use msg
            names = []
    if not names:
        # torch's message writes builtins without their module ('exec').
        names = [
            name if '.' in name else f'builtins.{name}'
            for name in _GLOBAL_IN_TORCH_ERROR.findall(str(error))
        ]
    return names


def _refusal(filename: str, error: Exception,
             local: bool) -> UntrustedCheckpointError:
    names = _refused_globals(filename if local else None, error)
    what = (f'it contains global(s) that are not on the allow-list: '
            f'{", ".join(names)}' if names else
            f'the restricted unpickler refused it ({error})')
    if local:
        real = _canonical(filename)
        how = (
            'If you trust this exact file (for example a legacy checkpoint '
            'you saved yourself), opt in for it alone, either with\n'
            f'    export {TRUSTED_CHECKPOINTS_ENV}={real}\n'
            'or in Python with\n'
            '    mmtranscnn.utils.trust_checkpoint('
            f'{real!r})\n'
            'Better still, load it once that way and re-save only its '
            'tensors (torch.save(model.state_dict(), ...)).')
    else:
        how = ('Remote checkpoints cannot be opted in: download the file, '
               'and if you trust it, opt in for the local copy with '
               f'${TRUSTED_CHECKPOINTS_ENV} or '
               'mmtranscnn.utils.trust_checkpoint().')
    message = (
        f'Refusing to load checkpoint {filename!r}: {what}. Unpickling '
        'unknown globals can run arbitrary code, so checkpoints are loaded '
        'with torch.load(weights_only=True) plus an allow-list of what '
        'mmengine and numpy write (tensors, containers, numeric numpy '
        'arrays/scalars, mmengine HistoryBuffer).\n' + how)
    return UntrustedCheckpointError(message, filename, names)


#: torch's documented opt-out of ``weights_only`` loading, with the values
#: torch itself reads as true.
TORCH_OPT_OUT_ENV = 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'
_TRUE_VALUES = ('1', 'y', 'yes', 'true')


def user_opted_out_of_weights_only() -> bool:
    """Whether the user set ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``: then
    checkpoints load as torch would load them (full pickle), as torch
    documents for that variable."""
    return os.environ.get(TORCH_OPT_OUT_ENV, '0').strip().lower() in \
        _TRUE_VALUES


def safe_torch_load(filename: str, map_location: Any = None) -> Any:
    """``torch.load`` a local checkpoint with ``weights_only=True`` kept.

    mmengine's own objects (message hub, numpy scalars/arrays) are accepted;
    anything else is refused with :class:`UntrustedCheckpointError`, unless
    the user opted in for this exact file (see :func:`trust_checkpoint`), in
    which case it is loaded with full pickle and a warning.

    Args:
        filename (str): Path of the checkpoint file.
        map_location (str | torch.device | Callable | dict, optional): Same
            as for :func:`torch.load`. Defaults to None.

    With ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` set (torch's documented
    opt-out), the file is loaded with torch's defaults, i.e. full pickle.

    Returns:
        Any: The loaded object (usually a dict).
    """
    if user_opted_out_of_weights_only():
        # torch's own default then applies (weights_only=False): the user
        # asked for it in the documented way.
        return torch.load(filename, map_location=map_location)
    try:
        with mmengine_safe_globals():
            return torch.load(
                filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if not is_trusted_checkpoint(filename):
            raise _refusal(filename, error, local=True) from error
    from mmengine.logging import print_log
    print_log(
        f'Loading {filename!r} with full pickle (weights_only=False): the '
        'file was explicitly trusted by the user and holds globals outside '
        'the safe-loading allow-list.',
        logger='current',
        level=30)  # logging.WARNING
    return torch.load(filename, map_location=map_location, weights_only=False)


def load_from_local_safely(filename: str, map_location: Any = None) -> Any:
    """mmengine scheme loader for local paths (replaces ``load_from_local``).

    Args:
        filename (str): Local checkpoint path (``~`` is expanded).
        map_location (optional): Same as for :func:`torch.load`.

    Returns:
        Any: The loaded checkpoint.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return safe_torch_load(filename, map_location)


setattr(load_from_local_safely, _SAFE_MARK, True)


def _wrap_remote_loader(loader: Callable) -> Callable:
    """Run another scheme's loader (http, s3, ...) inside the allow-list."""

    @functools.wraps(loader)  # keeps __name__, which mmengine logs
    def wrapped(filename, map_location=None, *args, **kwargs):
        try:
            with mmengine_safe_globals():
                return loader(filename, map_location, *args, **kwargs)
        except UntrustedCheckpointError:
            raise
        except pickle.UnpicklingError as error:
            raise _refusal(filename, error, local=False) from error

    setattr(wrapped, _SAFE_MARK, True)
    return wrapped


_enable_lock = threading.Lock()


def safe_loading_enabled() -> bool:
    """Whether mmengine's local-file loader is ours (see
    :func:`enable_safe_checkpoint_loading`)."""
    from mmengine.runner.checkpoint import CheckpointLoader
    return bool(getattr(CheckpointLoader._schemes.get(''), _SAFE_MARK,
                        False))


def enable_safe_checkpoint_loading() -> bool:
    """Make mmengine load its checkpoints with ``weights_only=True`` kept.

    Replaces the local-file loader of ``CheckpointLoader`` and wraps every
    other registered scheme. Idempotent: call it as often as you like; a
    later call also covers schemes registered since the last one.

    Returns:
        bool: True if safe loading is active; False on a torch without
        ``torch.serialization.get_safe_globals`` (< 2.5), whose allow-list
        cannot be scoped; those versions default to ``weights_only=False``,
        so mmengine's own loading works there as it is.
    """
    if not hasattr(torch.serialization, 'get_safe_globals'):
        return False
    from mmengine.runner.checkpoint import CheckpointLoader
    with _enable_lock:
        schemes: Dict[str, Callable] = dict(CheckpointLoader._schemes)
        for prefix, loader in schemes.items():
            if getattr(loader, _SAFE_MARK, False):
                continue
            new = (load_from_local_safely
                   if prefix == '' else _wrap_remote_loader(loader))
            CheckpointLoader.register_scheme(prefix, new, force=True)
    return True
