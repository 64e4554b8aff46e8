"""Loading our checkpoints into a backbone, loudly.

mmengine's ``Pretrained`` initialiser loads with ``strict=False`` and only
logs the keys it skipped, so a wrong file can leave a detector with a
half-random backbone. :func:`load_backbone_checkpoint` accepts the layouts our
tools produce (a full mmpretrain/mmdet checkpoint, its ``state_dict`` with a
``backbone.`` prefix, a DDP ``module.`` prefix, or a backbone-only file) and
the authors' released ImageNet files as downloaded (a raw state dict or
``{'model': ...}``, possibly with the training script's
``argparse.Namespace`` beside it; see :mod:`.released`), and fails, naming
the keys, when the file does not fit the model. An http(s) URL is downloaded
once into torch.hub's cache and read from there (:mod:`.checkpoint_cache`).
"""
import argparse
import os.path as osp
from typing import ContextManager, List, NamedTuple, Optional

from mmengine.runner.checkpoint import CheckpointLoader
from torch import nn

from mmtranscnn.utils.checkpoint_safety import (SharedSafeGlobals,
                                                mmengine_safe_globals,
                                                safe_torch_load)

from .checkpoint_cache import (CONFIG_KEY, fetch_checkpoint, is_url,
                               wrong_file_error)
from .released import RELEASED, convert_released, detect_version

GET_A_CHECKPOINT = (
    'Produce one with our ImageNet configs (configs/imagenet/, then '
    'tools/train.py), use a released preset with the URL of the authors\' '
    'file (mmtranscnn.models.RELEASED; downloaded and cached on first use), '
    'or set the backbone\'s init_cfg=None to train from scratch on purpose.')


class LoadReport(NamedTuple):
    """What a checkpoint load did. All lists hold parameter/buffer names."""
    loaded: List[str]
    missing: List[str]
    unexpected: List[str]
    mismatched: List[str]


def _read(checkpoint: str, map_location: str):
    """The file's content, read safely whether or not mmengine's loaders
    were switched to safe loading (see mmtranscnn.utils.checkpoint_safety).
    An http(s) URL is read from its cached download, not through mmengine's
    ``load_from_http`` (which unpickles with torch.load's defaults)."""
    if is_url(checkpoint):
        checkpoint = fetch_checkpoint(checkpoint)
    if '://' not in checkpoint:
        return safe_torch_load(checkpoint, map_location)
    with mmengine_safe_globals():
        return CheckpointLoader.load_checkpoint(checkpoint,
                                                map_location=map_location)


def _unwrap(checkpoint) -> dict:
    if not isinstance(checkpoint, dict):
        raise TypeError(f'a checkpoint must hold a dict, got '
                        f'{type(checkpoint).__name__}')
    for key in ('state_dict', 'model', 'module'):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            return checkpoint[key]
    return checkpoint


def _strip_module(state_dict: dict) -> dict:
    """Drop the ``module.`` prefix DDP/DataParallel put on every key."""
    return {(k[7:] if k.startswith('module.') else k): v
            for k, v in state_dict.items()}


def _training_script_globals() -> tuple:
    return (argparse.Namespace, )


_TRAINING_SCRIPT_ARGS = SharedSafeGlobals(_training_script_globals)


def training_script_args_allowed() -> ContextManager[None]:
    """Let ``torch.load(weights_only=True)`` rebuild an ``argparse.Namespace``.

    Training scripts of the DeiT/PVT family (the authors' TransCNN/HAT-Net
    among them) save their command-line arguments beside the weights.
    Rebuilding a Namespace creates the object and fills its ``__dict__``;
    nothing of it runs, and the values inside pass the same allow-list as
    everything else. Only the loads of :func:`read_state_dict` (backbone
    ``init_cfg`` and the converters) accept it; other mmengine loads keep the
    allow-list of :mod:`mmtranscnn.utils.checkpoint_safety` as it is. It is
    torch's scoped ``safe_globals`` context, shared by nested and concurrent
    loads (:class:`~mmtranscnn.utils.checkpoint_safety.SharedSafeGlobals`):
    afterwards torch's allow-list is exactly as before, an entry the user
    added included.
    """
    return _TRAINING_SCRIPT_ARGS.scope()


def read_state_dict(checkpoint: str, map_location: str = 'cpu') -> dict:
    """The state dict inside a checkpoint file, whatever its wrapping.

    Accepts a raw state dict, ``{'state_dict': ...}`` (mmengine),
    ``{'model': ...}`` (DeiT/PVT-style training scripts, which also store
    their ``argparse.Namespace`` under ``'args'``) and ``module.``
    prefixes. The file is read with ``torch.load(weights_only=True)`` and
    the allow-list of :mod:`mmtranscnn.utils.checkpoint_safety`, plus
    ``argparse.Namespace`` (:func:`training_script_args_allowed`): no
    arbitrary pickle runs.

    Args:
        checkpoint: a local path, an http(s) URL (downloaded once into
            torch.hub's cache, see :mod:`.checkpoint_cache`) or any other
            URI mmengine's CheckpointLoader understands.
        map_location: where tensors are loaded.
    """
    with training_script_args_allowed():
        loaded = _read(checkpoint, map_location)
    return _strip_module(_unwrap(loaded))


def _released_to_backbone(model: nn.Module, state_dict: dict,
                          checkpoint: str) -> dict:
    """Our backbone keys for a released file, checking it fits ``model``."""
    version = detect_version(state_dict)
    wanted = getattr(model, 'released_version', None)
    if wanted != version:
        presets = sorted(k for k, v in RELEASED.items()
                         if v.version == version)
        built = (f"a {wanted} preset" if wanted else
                 "a preset without released weights")
        raise RuntimeError(
            f'checkpoint {checkpoint!r} is a released {version} file '
            f'({"TransCNN.py" if version == "transcnn-v1" else "HAT_Net.py"})'
            f', but the model is {built}; build it with arch set to one of '
            f'{presets}.')
    backbone, _head, _ = convert_released(state_dict, version)
    return backbone


def _select(state_dict: dict, prefix: Optional[str]) -> dict:
    """Keep the backbone's tensors and strip their prefix."""
    state_dict = _strip_module(state_dict)
    if prefix is None:
        prefix = 'backbone.' if any(
            k.startswith('backbone.') for k in state_dict) else ''
    if prefix and not prefix.endswith('.'):
        prefix += '.'
    if not prefix:
        return state_dict
    selected = {k[len(prefix):]: v for k, v in state_dict.items()
                if k.startswith(prefix)}
    if not selected:
        raise KeyError(f'no key of the checkpoint starts with prefix '
                       f'{prefix!r}; its first keys are '
                       f'{sorted(state_dict)[:5]}')
    return selected


def _preview(names: List[str], limit: int = 12) -> str:
    shown = ', '.join(names[:limit])
    return shown + (f', ... ({len(names)} in all)' if len(names) > limit
                    else '')


def load_backbone_checkpoint(model: nn.Module,
                             checkpoint: str,
                             prefix: Optional[str] = None,
                             strict: bool = True,
                             map_location: str = 'cpu',
                             logger=None) -> LoadReport:
    """Load a checkpoint of ours, or a released file of the authors, into
    ``model`` and report what happened.

    Args:
        model: the backbone to fill.
        checkpoint: a local path, an http(s) URL or any other URI mmengine's
            CheckpointLoader understands. A URL is downloaded once into
            torch.hub's cache (``$TORCH_HOME/hub/checkpoints/<file name>``)
            and read from there afterwards.
        prefix: the key prefix of the backbone inside the file, e.g.
            ``'backbone.'``; None picks ``'backbone.'`` when present and the
            keys as they are otherwise.
        strict: raise when a backbone tensor is missing, has another shape,
            or the file holds backbone tensors the model lacks.
        map_location: where tensors are loaded.
        logger: where the summary goes (an mmengine logger), or None.

    Returns:
        A :class:`LoadReport`.

    Raises:
        CheckpointDownloadError: a URL could not be downloaded.
        CheckpointFileError: a URL's cached file does not load or fit.
        FileNotFoundError: a local file does not exist.
    """
    if is_url(checkpoint):
        path = fetch_checkpoint(checkpoint)
        try:
            report = _load_file(model, path, prefix, strict, map_location)
        except Exception as error:  # unreadable, truncated or another model
            raise wrong_file_error(checkpoint, path, error) from error
        source = f'{path} ({checkpoint})'
    else:
        if '://' not in checkpoint and not osp.isfile(checkpoint):
            raise FileNotFoundError(
                f'pretrained checkpoint not found: {checkpoint!r} '
                f'({CONFIG_KEY}). {GET_A_CHECKPOINT}')
        report = _load_file(model, checkpoint, prefix, strict, map_location)
        source = checkpoint
    if logger is not None:
        logger.info(f'loaded {len(report.loaded)}/{len(model.state_dict())} '
                    f'backbone tensors from {source}')
        for label, names in (('missing', report.missing),
                             ('unexpected', report.unexpected),
                             ('shape mismatch', report.mismatched)):
            if names:
                logger.warning(f'{label} keys: {_preview(names)}')
    return report


def _load_file(model: nn.Module, checkpoint: str, prefix: Optional[str],
               strict: bool, map_location: str) -> LoadReport:
    """:func:`load_backbone_checkpoint` for a local file (or a URI other
    than http(s)); nothing is loaded when a strict check fails."""
    state_dict = read_state_dict(checkpoint, map_location)
    if detect_version(state_dict) is not None:
        # The authors' file as downloaded (its keys carry no prefix, so
        # ``prefix`` does not apply): rename to our layout; its classifier
        # is not part of the backbone.
        state_dict = _released_to_backbone(model, state_dict, checkpoint)
    else:
        state_dict = _select(state_dict, prefix)
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(
        k for k in set(own) & set(state_dict)
        if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if strict and (missing or unexpected or mismatched):
        problems = []
        if missing:
            problems.append(f'missing in the file: {_preview(missing)}')
        if unexpected:
            problems.append(f'not in the model: {_preview(unexpected)}')
        if mismatched:
            problems.append('shape differs: ' + _preview(
                [f'{k} {tuple(state_dict[k].shape)} vs '
                 f'{tuple(own[k].shape)}' for k in mismatched]))
        raise RuntimeError(
            f'checkpoint {checkpoint!r} (prefix {prefix!r}) does not fit '
            f'{type(model).__name__}: ' + '; '.join(problems) +
            '. Check arch/grid_sizes (a stage with grid size 0 has no '
            'higher-level weights), or pass strict=False in init_cfg to load '
            'the matching part on purpose.')
    loadable = {k: v for k, v in state_dict.items()
                if k in own and k not in mismatched}
    model.load_state_dict(loadable, strict=False)
    return LoadReport(sorted(loadable), missing, unexpected, mismatched)
