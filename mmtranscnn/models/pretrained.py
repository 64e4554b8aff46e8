"""Loading ImageNet weights into the backbone, loudly.

mmengine's ``Pretrained`` initialiser loads with ``strict=False`` and only
logs what it skipped, so a wrong file can leave a detector with a
half-random backbone. :func:`load_backbone_checkpoint` (TransCNN's
``init_cfg=dict(type='Pretrained', ...)``) reads a checkpoint of ours (a
whole mmpretrain/mmdet checkpoint, ``backbone.``/``module.`` prefixes, or a
backbone-only file) or an authors' released file, renames a released file's
keys at load time (as mmdet's Swin converts foreign keys), and refuses a
file that does not fit, naming the keys or the preset that it fits.

Files are read with ``weights_only`` and the allow-list of
:mod:`mmtranscnn.utils.safe_loading`. An http(s) URL is downloaded once into
torch.hub's cache (``$TORCH_HOME/hub/checkpoints``); a released file's other
links are tried, in order, while the ones before answer 404.
"""
import os.path as osp
from typing import List, NamedTuple, Optional
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse

import torch
from mmengine.dist import get_dist_info
from mmengine.runner.checkpoint import CheckpointLoader
from torch import nn

from mmtranscnn.utils.safe_loading import (checkpoint_globals_allowed,
                                           safe_load)

from .presets import ARCH_SETTINGS, RELEASED
from .released import convert_released, detect_version, matching_presets

#: The config key that names the backbone's checkpoint.
CONFIG_KEY = 'model.backbone.init_cfg.checkpoint'


class CheckpointDownloadError(RuntimeError):
    """No link of a checkpoint URL delivered the file.

    Attributes:
        url (str): the URL asked for; tried (list[str]): every link tried.
    """

    def __init__(self, message: str, url: str, tried: List[str]):
        super().__init__(message)
        self.url = url
        self.tried = tried


class LoadReport(NamedTuple):
    """What a checkpoint load did. All lists hold parameter/buffer names."""
    loaded: List[str]
    missing: List[str]
    unexpected: List[str]
    mismatched: List[str]


def released_preset(url: str) -> Optional[str]:
    """The released preset one of whose links ``url`` is, or None."""
    return next((p for p, info in RELEASED.items() if url in info.urls), None)


def _links(url: str) -> List[str]:
    preset = released_preset(url)
    others = [] if preset is None else RELEASED[preset].urls
    return [url] + [u for u in others if u != url]


def _cache_path(url: str) -> str:
    """Where torch.hub keeps the download of ``url`` (all links of a file
    share its name, so one copy serves them all)."""
    return osp.join(torch.hub.get_dir(), 'checkpoints',
                    osp.basename(urlparse(url).path))


def _download_failed(url: str, failures: list) -> CheckpointDownloadError:
    """The error naming every link tried and why, the authors' Google Drive
    copy of a released file, and how to use a local copy instead."""
    lines = [f'    {link}\n        ({type(e).__name__}: {e})'
             for link, e in failures]
    path = _cache_path(url)
    name = osp.basename(path)
    message = ('could not download the backbone checkpoint; links tried in '
               'order:\n' + '\n'.join(lines) + '\n')
    preset = released_preset(url)
    if preset is not None:
        info = RELEASED[preset]
        message += (f'The authors also publish {info.name} ({info.file}) on '
                    f'Google Drive:\n    {info.drive_url}\n')
    message += ('Put a copy at\n    ' + path +
                f'\n(used without a download), or set {CONFIG_KEY} to a '
                f'local file: --cfg-options {CONFIG_KEY}=/path/to/{name}')
    return CheckpointDownloadError(message, url,
                                   [link for link, _ in failures])


def _fetch_url(url: str, map_location) -> dict:
    """Read ``url`` through torch.hub's cache, trying a released file's
    other links after a 404 (any other failure would repeat on the same
    host). All links of a file share its name, so one cached copy serves."""
    failures = []
    path = _cache_path(url)
    for link in _links(url):
        try:
            with checkpoint_globals_allowed():
                return torch.hub.load_state_dict_from_url(
                    link, map_location=map_location, weights_only=True,
                    file_name=osp.basename(path), progress=False)
        except URLError as error:  # HTTPError too: nothing was cached
            failures.append((link, error))
            if not (isinstance(error, HTTPError) and error.code == 404):
                break
        except Exception as error:  # the cached file does not load
            if not osp.exists(path):  # the download broke off (no URLError)
                failures.append((link, error))
                break
            raise RuntimeError(
                f'the cached download of {url}\n    {path}\ndoes not load '
                f'({type(error).__name__}: {str(error).splitlines()[0]}). '
                'If it is damaged or another file, delete it to download it '
                'again.') from error
    raise _download_failed(url, failures) from failures[-1][1]


def read_checkpoint(checkpoint: str, map_location='cpu') -> dict:
    """A checkpoint's content: a local file, an http(s) URL (cached, see
    above) or another URI mmengine's ``CheckpointLoader`` knows, always
    read with the allow-list of :mod:`mmtranscnn.utils.safe_loading`.

    Under distributed training rank 0 downloads first, the others then
    read the cached file (or download their own, without a shared disk).

    Args:
        checkpoint: path, URL or URI.
        map_location: as for :func:`torch.load`.
    """
    if '://' not in checkpoint:
        if not osp.isfile(checkpoint):
            raise FileNotFoundError(
                f'{CONFIG_KEY}: no file {checkpoint!r}. Train one with '
                'configs/imagenet/, name a released file\'s URL '
                '(mmtranscnn.models.RELEASED), or set init_cfg=None to '
                'train from scratch on purpose.')
        return safe_load(checkpoint, map_location)
    if not checkpoint.startswith(('http://', 'https://')):
        with checkpoint_globals_allowed():
            return CheckpointLoader.load_checkpoint(checkpoint, map_location)
    rank, world_size = get_dist_info()
    result = error = None
    if rank == 0:
        try:
            result = _fetch_url(checkpoint, map_location)
        except CheckpointDownloadError as failed:
            error = failed  # raised after the barrier: no rank waits forever
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            result = _fetch_url(checkpoint, map_location)
    if error is not None:
        raise error
    return result


def state_dict_of(checkpoint) -> dict:
    """The tensors inside a loaded checkpoint, whatever its wrapping:
    ``state_dict`` (mmengine), ``model`` (DeiT-style scripts) or raw, with
    DDP's ``module.`` prefix dropped."""
    if not isinstance(checkpoint, dict):
        raise TypeError(f'a checkpoint must hold a dict, got '
                        f'{type(checkpoint).__name__}')
    for key in ('state_dict', 'model', 'module'):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return {k[7:] if k.startswith('module.') else k: v
            for k, v in checkpoint.items()}


def _released_to_backbone(model: nn.Module, state_dict: dict,
                          source: str) -> dict:
    """Our backbone keys for a released file that fits ``model``; else an
    error naming the preset the file fits."""
    version = detect_version(state_dict)
    fits = matching_presets(state_dict)
    built = getattr(model, 'arch_name', None)
    # A custom arch dict of the file's released variant (another size of
    # the authors' networks) is checked key by key by the caller.
    custom_fit = built is None and \
        getattr(model, 'released_version', None) == version
    if built not in fits and not custom_fit:
        fit = (' or '.join(f"arch='{p}'" for p in fits) if fits else
               'no released preset (its layout is none of RELEASED)')
        link_of = released_preset(source)
        raise ValueError(
            f'{source} is a released {version} file that fits {fit}, but '
            f"the backbone is built with arch={built or 'a custom dict'!r}" +
            (f' (the link of {RELEASED[link_of].name})' if link_of else '') +
            '; set model.backbone.arch to the preset the file fits.' +
            _if_cached(source))
    return convert_released(state_dict)[0]


def _if_cached(checkpoint: str) -> str:
    """For a URL: where its cached download is, to delete a wrong file."""
    if not checkpoint.startswith(('http://', 'https://')):
        return ''
    return (f' The file was read from the cached download of the URL\n    '
            f'{_cache_path(checkpoint)}\nif that is another file, delete it '
            'to download the URL again.')


def _select(state_dict: dict, prefix: Optional[str]) -> dict:
    """Keep the keys under ``prefix`` (default: ``backbone.`` when there)."""
    if prefix is None:
        prefix = 'backbone.' if any(
            k.startswith('backbone.') for k in state_dict) else ''
    if prefix and not prefix.endswith('.'):
        prefix += '.'
    selected = {k[len(prefix):]: v for k, v in state_dict.items()
                if k.startswith(prefix)}
    if not selected:
        raise KeyError(f'no key of the checkpoint starts with prefix '
                       f'{prefix!r}; its first keys are '
                       f'{sorted(state_dict)[:5]}')
    return selected


def _preview(names: List[str], limit: int = 8) -> str:
    more = f', ... ({len(names)} in all)' if len(names) > limit else ''
    return ', '.join(names[:limit]) + more


def _fit_hint(model: nn.Module) -> str:
    preset = getattr(model, 'arch_name', None)
    if preset is None:
        return 'Check arch and grid_sizes'
    defaults = ARCH_SETTINGS[preset]
    return (f"The file may be of another preset or grids: arch='{preset}' "
            f"has grid_sizes={defaults.get('grid_sizes', (8, 4, 2, 0))} and "
            f"pool_ratios={defaults.get('pool_ratios')} by default, and a "
            'stage with grid size 0 has no higher-level weights')


def load_backbone_checkpoint(model: nn.Module,
                             checkpoint: str,
                             prefix: Optional[str] = None,
                             strict: bool = True,
                             map_location='cpu',
                             logger=None) -> LoadReport:
    """Load a checkpoint of ours or an authors' released file into
    ``model``; with ``strict`` nothing is loaded unless every tensor fits.

    Args:
        model: the backbone to fill.
        checkpoint: path, http(s) URL or mmengine URI (see
            :func:`read_checkpoint`).
        prefix: the backbone's key prefix in the file; None takes
            ``'backbone.'`` when present, else the keys as they are.
        strict: refuse missing, unexpected or misshapen backbone tensors.
        map_location: where tensors are loaded.
        logger: an mmengine logger for the summary, or None.
    """
    state_dict = state_dict_of(read_checkpoint(checkpoint, map_location))
    if detect_version(state_dict) is not None:
        # The authors' file as downloaded: renamed to our layout, head left.
        state_dict = _released_to_backbone(model, state_dict, checkpoint)
    else:
        state_dict = _select(state_dict, prefix)
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict)
                        if own[k].shape != state_dict[k].shape)
    if strict and (missing or unexpected or mismatched):
        problems = [f'{label}: {_preview(names)}' for label, names in (
            ('missing in the file', missing),
            ('not in the model', unexpected),
            ('shape differs', [f'{k} {tuple(state_dict[k].shape)} vs '
                               f'{tuple(own[k].shape)}' for k in mismatched]))
            if names]
        raise RuntimeError(
            f'{CONFIG_KEY} {checkpoint!r} (prefix {prefix!r}) does not fit '
            f'{type(model).__name__}: ' + '; '.join(problems) + '. ' +
            _fit_hint(model) + '; or set strict=False in init_cfg to load '
            'the matching part on purpose.' + _if_cached(checkpoint))
    loadable = {k: v for k, v in state_dict.items()
                if k in own and k not in mismatched}
    model.load_state_dict(loadable, strict=False)
    if logger is not None:
        logger.info(f'loaded {len(loadable)}/{len(own)} backbone tensors '
                    f'from {checkpoint}')
        for label, names in (('missing', missing), ('unexpected', unexpected),
                             ('shape mismatch', mismatched)):
            if names:
                logger.warning(f'{label} keys: {_preview(names)}')
    return LoadReport(sorted(loadable), missing, unexpected, mismatched)


__all__ = ['CONFIG_KEY', 'CheckpointDownloadError', 'LoadReport',
           'load_backbone_checkpoint', 'read_checkpoint', 'released_preset',
           'state_dict_of']
