"""The authors' released classifiers in mmpretrain's model hub.

After ``import mmtranscnn``, with mmpretrain installed::

    >>> import mmpretrain
    >>> mmpretrain.list_models('*hatnet*')
    ['hatnet-large_in1k-224px', 'hatnet-medium_in1k-224px', ...]
    >>> model = mmpretrain.get_model('hatnet-small_in1k-224px',
    ...                              pretrained=True)
    >>> mmpretrain.ImageClassificationInferencer(
    ...     'hatnet-small_in1k-224px')('demo.jpg')

Two pieces of registry glue make that work, both made once on import:

* **Hub entries.** One per released preset (:data:`.presets.RELEASED`),
  named like its config in ``configs/released/imagenet/`` and its entry in
  ``model-index.yml`` (:func:`hub_name`): the config's path (mmpretrain
  reads it only when the model is built) and, as weights, the authors' link
  (``ReleasedModel.url``). mmpretrain's ``ModelHub`` has no call that takes
  an entry, only one that parses a model-index file; the entries go into
  its table (``ModelHub._models_dict``) directly, built from the presets,
  so that nothing is parsed on import and the presets stay the one source.
* **A checkpoint loader for the released links.** ``get_model(name,
  pretrained=True)`` hands the link to mmengine's ``load_checkpoint``. The
  authors' file does not load there as it is: it pickles the training
  script's ``argparse.Namespace`` (refused by ``torch.load`` with
  ``weights_only``) and holds the authors' key names. Each released link
  (every one of ``ReleasedModel.urls``, matched exactly) is registered with
  mmengine's ``CheckpointLoader`` as a scheme whose loader
  (:func:`load_from_released`) downloads the file into torch.hub's cache
  with the fallback links (:mod:`.checkpoint_cache`), reads it with the
  allow-list of :func:`.pretrained.read_state_dict` and renames its keys
  with :func:`.released.convert_released` into an mmpretrain classifier's
  checkpoint (``backbone.*``, ``head.fc.*``). So the same link loads
  converted wherever mmengine loads a checkpoint: ``get_model``, the
  inferencers, ``load_from`` of a Runner, mmengine's ``Pretrained``
  initialiser. No other path or URL changes hands: those links could not be
  loaded by mmengine before.
"""
import importlib.util
import os.path as osp
import re
import warnings
from collections import OrderedDict
from typing import List, Optional

from mmengine.runner.checkpoint import CheckpointLoader

from ..config_path import configs_root
from .checkpoint_cache import (fetch_checkpoint, released_preset,
                               wrong_file_error)
from .presets import RELEASED
from .pretrained import read_state_dict
from .released import convert_released, detect_version, matching_presets

#: The task the hub entries name (mmpretrain's inferencers filter by it).
TASK = 'Image Classification'


def hub_name(preset: str) -> str:
    """The hub's (and ``model-index.yml``'s) name of a released preset:
    its ImageNet config's name, e.g. ``'hatnet-small_in1k-224px'``."""
    return f'{preset}_in1k-{RELEASED[preset].input_size}px'


def hub_config(preset: str, root: Optional[str] = None) -> str:
    """The path of the ImageNet config of a released preset.

    Args:
        preset: a key of :data:`.presets.RELEASED`.
        root: the configs folder; None takes the installed one
            (:func:`mmtranscnn.config_path.configs_root`).
    """
    root = configs_root() if root is None else root
    return osp.join(root, 'released', 'imagenet', hub_name(preset) + '.py')


def load_from_released(filename: str, map_location=None) -> dict:
    """mmengine checkpoint loader for the authors' released links.

    Args:
        filename: one of ``ReleasedModel.urls``.
        map_location: as ``torch.load``'s; None loads onto the CPU (so
            that a file saved from a GPU loads on a CPU-only machine).

    Returns:
        dict: ``{'state_dict': ..., 'meta': ...}``, the file converted to an
        mmpretrain ``ImageClassifier`` with a ``LinearClsHead``:
        ``backbone.<our key>`` and ``head.fc.weight`` / ``head.fc.bias``.

    Raises:
        CheckpointDownloadError: no link delivered the file.
        CheckpointFileError: the cached file does not load, or is another
            preset's (the message says how to replace it).
    """
    preset = released_preset(filename)
    if preset is None:  # registered for the released links only
        raise ValueError(f'{filename!r} is none of the released links: '
                         f'{[u for i in RELEASED.values() for u in i.urls]}')
    info = RELEASED[preset]
    path = fetch_checkpoint(filename)
    try:
        state_dict = read_state_dict(path, map_location or 'cpu')
        version = detect_version(state_dict)
        if version != info.version or preset not in matching_presets(
                state_dict):
            found = matching_presets(state_dict) if version else []
            raise ValueError(
                f'the file is not {info.name} ({preset}): its layout is '
                f'{found or "no released one"}')
        backbone, head, _ = convert_released(state_dict, version)
    except Exception as error:  # unreadable, truncated or another model
        raise wrong_file_error(filename, path, error) from error
    converted = OrderedDict(
        [('backbone.' + k, v) for k, v in backbone.items()] +
        [('head.' + k, v) for k, v in head.items()])
    return dict(state_dict=converted,
                meta=dict(released_as=info.name, source=filename,
                          converted_by='mmtranscnn'))


def _scheme(url: str) -> str:
    # CheckpointLoader matches its prefixes as regular expressions.
    return re.escape(url) + '$'


def register_released_loader() -> List[str]:
    """Register :func:`load_from_released` for every released link.

    Returns:
        list[str]: the links registered.
    """
    links = [u for info in RELEASED.values() for u in info.urls]
    for url in links:
        scheme = _scheme(url)
        current = CheckpointLoader._schemes.get(scheme)
        # Ours already, maybe wrapped by the safe loading of
        # mmtranscnn.utils.checkpoint_safety (functools.wraps): keep it.
        if getattr(current, '__wrapped__', current) is not \
                load_from_released:
            CheckpointLoader.register_scheme(
                scheme, loader=load_from_released, force=True)
    return links


def _hub_entry(preset: str, config: str):
    from modelindex.models.Model import Model
    info = RELEASED[preset]
    return Model(
        name=hub_name(preset),
        metadata={'Training Data': 'ImageNet-1k',
                  'Released as': info.name},
        results=[{'Task': TASK, 'Dataset': 'ImageNet-1k',
                  'Metrics': {'Top 1 Accuracy': info.top1}}],
        weights=info.url,
        config=config,
        in_collection='TransCNN',
        _filepath=config)


def register_in_pretrain_hub() -> List[str]:
    """Add the released classifiers to mmpretrain's model hub, when
    mmpretrain is installed and imports.

    Returns:
        list[str]: the names added (empty without mmpretrain).
    """
    if importlib.util.find_spec('mmpretrain') is None:
        return []
    try:
        from mmpretrain.apis.model import ModelHub
    except Exception as exc:  # a broken install must not break ours
        warnings.warn(f'mmtranscnn: mmpretrain is installed but its model '
                      f'hub failed to import ({exc!r}); the released '
                      'classifiers are not in mmpretrain.list_models().')
        return []
    try:
        root = configs_root()
    except FileNotFoundError as exc:
        warnings.warn(f'mmtranscnn: {exc}; the released classifiers are '
                      'not in mmpretrain.list_models().')
        return []
    names = []
    for preset in RELEASED:
        name = hub_name(preset)
        entry = ModelHub._models_dict.get(name)
        if entry is None or entry.weights != RELEASED[preset].url:
            ModelHub._models_dict[name] = _hub_entry(
                preset, hub_config(preset, root))
        names.append(name)
    return names


def register_released_classifiers() -> List[str]:
    """Both pieces of glue (see the module's docstring).

    Returns:
        list[str]: the hub names added (empty without mmpretrain).
    """
    register_released_loader()
    return register_in_pretrain_hub()


__all__ = ['TASK', 'hub_name', 'hub_config',
           'load_from_released', 'register_released_loader',
           'register_in_pretrain_hub', 'register_released_classifiers']
