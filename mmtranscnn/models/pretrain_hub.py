"""The authors' released classifiers in mmpretrain's model hub.

After ``import mmtranscnn``, ``mmpretrain.list_models('*hatnet*')`` lists
them and ``get_model('hatnet-small_in1k-224px', pretrained=True)`` loads one.
Two public calls, made once on import:

* ``ModelHub.register_model_index`` reads
  ``configs/released/imagenet/metafile.yml`` (imported by
  ``model-index.yml``): each preset's config and, as weights, its link;
* ``CheckpointLoader.register_scheme`` gives exactly the released links
  the loader :func:`load_from_released`, which reads the file
  (:func:`.pretrained.read_checkpoint`: allow-list, fallback links) and
  renames the authors' keys into an mmpretrain classifier's. So the link
  loads converted wherever mmengine loads a checkpoint (``get_model``,
  ``load_from``, inferencers); no other path or URL changes hands.
"""
import importlib.util
import os.path as osp
import re
import warnings
from collections import OrderedDict

from mmengine.runner.checkpoint import CheckpointLoader

from ..config_path import configs_root
from .presets import RELEASED
from .pretrained import (_cache_path, read_checkpoint, released_preset,
                         state_dict_of)
from .released import convert_released, matching_presets


def load_from_released(filename: str, map_location=None) -> dict:
    """mmengine checkpoint loader for the authors' released links.

    Args:
        filename: one of ``ReleasedModel.urls``.
        map_location: as ``torch.load``'s; None loads onto the CPU.

    Returns:
        dict: ``{'state_dict': ..., 'meta': ...}`` with ``backbone.<our
        key>`` and ``head.fc.weight`` / ``head.fc.bias``.
    """
    preset = released_preset(filename)
    state_dict = state_dict_of(read_checkpoint(filename,
                                               map_location or 'cpu'))
    fits = matching_presets(state_dict)
    if preset not in fits:
        raise ValueError(f'{filename} should hold {RELEASED[preset].name} '
                         f'({preset}) but its layout fits {fits or "none"} '
                         'of the released presets; delete the cached copy '
                         f'{_cache_path(filename)} if it is another file.')
    backbone, head, _ = convert_released(state_dict)
    converted = OrderedDict(
        [('backbone.' + k, v) for k, v in backbone.items()] +
        [('head.' + k, v) for k, v in head.items()])
    return dict(state_dict=converted,
                meta=dict(released_as=RELEASED[preset].name, source=filename))


def register_released_loader() -> list:
    """Register :func:`load_from_released` for every released link (as
    regular expressions, which is how ``CheckpointLoader`` matches)."""
    links = [u for info in RELEASED.values() for u in info.urls]
    CheckpointLoader.register_scheme(
        [re.escape(u) + '$' for u in links], loader=load_from_released,
        force=True)
    return links


def register_in_pretrain_hub() -> list:
    """Add the released classifiers to mmpretrain's hub when mmpretrain is
    installed; returns the names added (or already there)."""
    if importlib.util.find_spec('mmpretrain') is None:
        return []
    try:
        from mmpretrain.apis import ModelHub
        root = osp.dirname(configs_root())
        metafile = osp.join(root, 'configs', 'released', 'imagenet',
                            'metafile.yml')
        if not osp.isfile(metafile):
            raise FileNotFoundError(metafile)
    except Exception as exc:  # a broken install must not break ours
        warnings.warn(f'mmtranscnn: the released classifiers are not in '
                      f'mmpretrain.list_models() ({exc!r})')
        return []
    names = [f'{p}_in1k-{info.input_size}px' for p, info in RELEASED.items()]
    if not all(ModelHub.has(name) for name in names):
        ModelHub.register_model_index(metafile, config_prefix=root)
    return names


def register_released_classifiers() -> list:
    """Both registrations (see the module's docstring)."""
    register_released_loader()
    return register_in_pretrain_hub()


__all__ = ['load_from_released', 'register_released_loader',
           'register_in_pretrain_hub', 'register_released_classifiers']
