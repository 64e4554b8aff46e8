"""Checkpoints that ``torch.load(weights_only=True)`` reads as they are.

mmengine 0.10's Runner writes the message hub's ``HistoryBuffer`` objects
and numpy arrays and scalars into every checkpoint, which torch's default
loader (mmdet's own tools, mmdeploy, a plain ``torch.load``) refuses.
:class:`WeightsOnlyCheckpointHook` turns them into tagged plain data just
before the Runner saves, and back just after it loads (before it reads the
message hub), so the file loads anywhere and ``--resume`` gets back exactly
what was saved. The shipped configs name it in ``default_hooks`` (a dict:
a config that sets its own keeps it, unlike a ``custom_hooks`` list).
"""
from collections import Counter, OrderedDict
from typing import Any

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer

from mmtranscnn.registry import HOOKS

#: The key of a dict that stands for an object, naming the object's kind.
TAG = '__mmtranscnn_weights_only__'

# What torch's weights-only unpickler reads without an allow-list.
_PLAIN_LEAVES = (str, bytes, bytearray, int, float, complex, bool,
                 type(None), torch.Tensor, torch.Size, torch.dtype,
                 torch.device)
# Containers it reads (a MultiStepLR's milestones are a Counter); a state
# dict is an OrderedDict with a ``_metadata`` attribute, which is kept.
_CONTAINERS = (dict, OrderedDict, Counter, list, tuple, set)


def _numeric(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype.kind not in 'biufc':
        raise TypeError(
            f'{where} is a numpy array of dtype {array.dtype}; only numeric '
            'arrays (bool, int, uint, float, complex) can be written into a '
            'checkpoint that torch.load(weights_only=True) reads.')
    return array


def _map_container(value, convert):
    """``value`` itself if ``convert`` changes none of its items, else a new
    container of its type, with its attributes (a state dict's metadata)."""
    if isinstance(value, dict):
        items = [(key, convert(key, item)) for key, item in value.items()]
        if all(new is value[key] for key, new in items):
            return value
        if type(value) is Counter:
            out = Counter()
            dict.update(out, items)  # Counter(items) would count the pairs
        else:
            out = type(value)(items)
        if hasattr(value, '__dict__'):  # an OrderedDict's attributes
            out.__dict__.update(value.__dict__)
        return out
    items = [convert(i, item) for i, item in enumerate(value)]
    if all(new is old for new, old in zip(items, value)):
        return value
    return type(value)(items)


def to_weights_only(value: Any, where: str = 'checkpoint') -> Any:
    """``value`` made only of what ``weights_only`` loads: ``HistoryBuffer``
    objects and numeric numpy arrays and scalars become tagged dicts (a
    container is copied only when one of its items changes).

    Args:
        value: a checkpoint or any part of one.
        where: how the error message names ``value``.

    Raises:
        TypeError: ``value`` holds an object of another type; the message
            names its place, e.g. ``checkpoint['meta']['foo']``.
    """
    # numpy first: np.float64 is also a Python float.
    if isinstance(value, np.generic):
        _numeric(np.asarray(value), where)
        return {TAG: 'numpy_scalar', 'dtype': value.dtype.str,
                'value': value.item()}
    if isinstance(value, np.ndarray):
        data = torch.from_numpy(_numeric(value, where).copy())  # C order
        return {TAG: 'ndarray', 'data': data}
    if isinstance(value, HistoryBuffer):
        log, count = value.data
        return {TAG: 'HistoryBuffer',
                'log_history': to_weights_only(log, f'{where}.log_history'),
                'count_history': to_weights_only(
                    count, f'{where}.count_history'),
                'max_length': int(value.max_length)}
    if isinstance(value, _PLAIN_LEAVES):
        return value
    if type(value) is set:
        for item in value:
            if to_weights_only(item, f'{where} item') is not item:
                raise TypeError(f'{where} is a set holding {item!r}; a set '
                                'may hold only plain values')
        return value
    if type(value) in _CONTAINERS:
        if isinstance(value, dict) and TAG in value:
            raise TypeError(f'{where} holds the reserved key {TAG!r}')
        return _map_container(value, lambda key, item: to_weights_only(
            item, f'{where}[{key!r}]'))
    raise TypeError(
        f'{where} is a {type(value).__module__}.{type(value).__qualname__}, '
        'which torch.load(weights_only=True) refuses. A checkpoint may '
        'hold tensors, dicts (OrderedDict, Counter), lists, tuples, sets, '
        'strings, bytes, numbers, None, numeric numpy arrays and scalars, '
        'and mmengine HistoryBuffers (WeightsOnlyCheckpointHook converts '
        'the last three).')


def from_weights_only(value: Any) -> Any:
    """Undo :func:`to_weights_only`: tagged dicts become the
    ``HistoryBuffer``, numpy array or numpy scalar again.

    Args:
        value: a loaded checkpoint or any part of one.
    """
    if type(value) not in _CONTAINERS:
        return value
    kind = value.get(TAG) if isinstance(value, dict) else None
    if kind == 'HistoryBuffer':
        return HistoryBuffer(from_weights_only(value['log_history']),
                             from_weights_only(value['count_history']),
                             value['max_length'])
    if kind == 'ndarray':
        return value['data'].numpy().copy()
    if kind == 'numpy_scalar':
        return np.dtype(value['dtype']).type(value['value'])
    if kind is not None:
        raise ValueError(f'unknown {TAG} tag {kind!r}: the file was '
                         'written by another version of mmtranscnn')
    return _map_container(value, lambda _, item: from_weights_only(item))


@HOOKS.register_module()
class WeightsOnlyCheckpointHook(Hook):
    """Convert what ``torch.load(weights_only=True)`` refuses into tagged
    plain data before the Runner saves a checkpoint, and back after it
    loads one. Priority 'LOWEST': it also converts what other hooks add.

    Args:
        priority (int | str): the hook's priority. Default: 'LOWEST'.
    """

    def __init__(self, priority='LOWEST'):
        self.priority = priority

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # In place: the Runner saves the dict it passed to the hooks.
        for key in list(checkpoint):
            checkpoint[key] = to_weights_only(checkpoint[key],
                                              f'checkpoint[{key!r}]')

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # In place: the Runner reads the dict after the hooks.
        for key in list(checkpoint):
            checkpoint[key] = from_weights_only(checkpoint[key])
