"""Checkpoints that ``torch.load(weights_only=True)`` reads as they are.

mmengine 0.10's Runner writes two kinds of objects into every checkpoint
that torch >= 2.6 refuses to load by default: the message hub's
``HistoryBuffer`` objects (the logged losses and learning rates that
``--resume`` continues) and numpy arrays and scalars. A file with them
fails in every tool that loads it with torch's defaults: mmdet's own
``tools/test.py``, ``DetInferencer``, mmdeploy's export, a plain
``torch.load``.

:class:`WeightsOnlyCheckpointHook` removes the cause where the file is
written. Just before the Runner saves, it rewrites those objects into plain
data (dicts, lists, numbers, strings and tensors), each tagged with what it
was; just after the Runner loads a checkpoint (``--resume``, ``load_from``)
and before it reads the message hub, it turns the tagged data back into the
objects. So the file loads anywhere with ``weights_only=True`` and no
allow-list, and a resumed run gets back exactly what it saved.

The shipped configs name the hook among their ``default_hooks``, as
``type='mmtranscnn.WeightsOnlyCheckpointHook'`` (the scope makes mmengine
import it on demand): ``default_hooks`` is a dict, so a config that
inherits one and sets ``default_hooks`` of its own keeps the hook, where a
``custom_hooks`` list of its own would replace it.

Anything else that is not plain data (an object some other hook put into
the checkpoint or the message hub) stops the save with a ``TypeError``
naming where it is, instead of writing a file that no tool can open.
"""
from collections import Counter, OrderedDict
from typing import Any

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer

from mmtranscnn.registry import HOOKS

#: The key of a dict that stands for an object turned into plain data; its
#: value names the object's kind.
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
    """``value`` with ``convert`` applied to its items; ``value`` itself
    when no item changed (so nothing is copied for nothing), else a new
    container of its type with its attributes (a state dict's
    ``_metadata``)."""
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
    """``value`` made only of what ``weights_only`` loads.

    ``HistoryBuffer`` objects and numeric numpy arrays and scalars become
    tagged dicts (see :func:`from_weights_only`); in dicts, lists and
    tuples the items are converted (a container is copied only when one
    of its items changes); tensors, strings, numbers and None are kept.

    Args:
        value: a checkpoint or any part of one.
        where: how the error message names ``value``. Default:
            'checkpoint'.

    Returns:
        The converted value (tensors are shared, never copied).

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
        array = np.ascontiguousarray(_numeric(value, where))
        return {TAG: 'ndarray', 'data': torch.from_numpy(array.copy())}
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
    """Undo :func:`to_weights_only`: tagged dicts become the objects again.

    Args:
        value: a loaded checkpoint or any part of one.

    Returns:
        ``value`` with every tagged dict replaced by its ``HistoryBuffer``,
        numpy array or numpy scalar; anything else is returned as it is.
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
    return _map_container(value,
                          lambda key, item: from_weights_only(item))


def _replace_items(checkpoint: dict, convert) -> None:
    """Convert every entry of ``checkpoint`` in place: the Runner saves,
    and reads after the hooks, the dict it passed to them."""
    for key in list(checkpoint):
        checkpoint[key] = convert(key, checkpoint[key])


@HOOKS.register_module()
class WeightsOnlyCheckpointHook(Hook):
    """Write checkpoints that ``torch.load(weights_only=True)`` reads.

    Converts the message hub's ``HistoryBuffer`` objects and numpy arrays
    and scalars anywhere in a checkpoint into tagged plain data before the
    Runner saves it, and back after the Runner loads one, so that
    ``--resume`` continues as if nothing had been converted. Files written
    without the hook load as before.

    It runs after every other hook's ``before_save_checkpoint`` (priority
    'LOWEST'), so it also converts what they add.

    Args:
        priority (int | str): the hook's priority. Default: 'LOWEST'.
    """

    def __init__(self, priority='LOWEST'):
        self.priority = priority

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Turn the checkpoint's objects into tagged plain data.

        Args:
            runner (Runner): the runner that saves.
            checkpoint (dict): the checkpoint, converted in place.
        """
        _replace_items(checkpoint, lambda key, value: to_weights_only(
            value, f'checkpoint[{key!r}]'))

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Turn tagged plain data back into the objects.

        Args:
            runner (Runner): the runner that loaded.
            checkpoint (dict): the loaded checkpoint, restored in place.
        """
        _replace_items(checkpoint,
                       lambda key, value: from_weights_only(value))
