"""Backbone checkpoints named by URL: the download cache and its errors.

The detection and segmentation configs name the authors' released ImageNet
files by URL in ``model.backbone.init_cfg.checkpoint``, as mmdet's Swin
configs do. The file is downloaded once into the cache that torch.hub and
mmengine use (``$TORCH_HOME/hub/checkpoints/<file name>``, see
:func:`cache_path`), so a file that either of them fetched is reused, and a
file a user put there by hand is used without any download.

Only the download happens here. Reading goes through
:func:`mmtranscnn.utils.checkpoint_safety.safe_torch_load` (``weights_only``
with an allow-list), never through mmengine's ``load_from_http``, which
unpickles with ``torch.load``'s defaults. When the download fails or the
cached file is not the expected one, the error names the URL, the exact
path to put the file at by hand, and :data:`CONFIG_KEY`.
"""
import os
import os.path as osp
from urllib.parse import urlparse

import torch
from mmengine.dist import get_dist_info
from mmengine.logging import print_log
# Looked up through this module at call time, so tests can replace it.
from torch.hub import download_url_to_file

#: The config key that names the backbone's checkpoint.
CONFIG_KEY = 'model.backbone.init_cfg.checkpoint'

_URL_SCHEMES = ('http://', 'https://')


class CheckpointDownloadError(RuntimeError):
    """A checkpoint URL could not be downloaded into the cache.

    Attributes:
        url (str): the URL that was tried.
        path (str): where the file is expected (put it there by hand).
    """

    def __init__(self, message: str, url: str, path: str):
        super().__init__(message)
        self.url = url
        self.path = path


class CheckpointFileError(RuntimeError):
    """The cached file of a checkpoint URL is not the expected checkpoint
    (truncated, not a checkpoint, or another model's weights).

    Attributes:
        url (str): the URL the file stands for.
        path (str): the cached file.
    """

    def __init__(self, message: str, url: str, path: str):
        super().__init__(message)
        self.url = url
        self.path = path


def is_url(checkpoint: str) -> bool:
    """Whether ``checkpoint`` is an http(s) URL (downloaded and cached)."""
    return isinstance(checkpoint, str) and checkpoint.startswith(_URL_SCHEMES)


def cache_path(url: str) -> str:
    """Where the file of ``url`` is cached: ``torch.hub.get_dir()``'s
    ``checkpoints`` folder (``$TORCH_HOME/hub/checkpoints``, by default
    ``~/.cache/torch/hub/checkpoints``) and the URL's file name, the path
    ``torch.hub.load_state_dict_from_url`` and mmengine's ``load_from_http``
    use.

    Args:
        url: an http(s) URL.
    """
    name = osp.basename(urlparse(url).path)
    if not name:
        raise ValueError(f'{CONFIG_KEY}: the URL {url!r} names no file')
    return osp.join(torch.hub.get_dir(), 'checkpoints', name)


def _put_it_there(url: str, path: str) -> str:
    return (f'download it by hand from\n    {url}\nand put it at\n'
            f'    {path}\n(torch.hub\'s cache, $TORCH_HOME/hub/checkpoints: '
            'a file there is used without a download)')


def _or_change_the_key(path: str) -> str:
    return (f'set the config key {CONFIG_KEY} to a local copy (or to '
            'another URL), e.g.\n'
            f'    --cfg-options {CONFIG_KEY}=/path/to/{osp.basename(path)}')


def _download(url: str, path: str) -> None:
    """Download ``url`` to ``path``; raise :class:`CheckpointDownloadError`.

    torch.hub writes to a temporary name and renames it when complete, so
    an interrupted download never leaves a partial file at ``path``.
    """
    print_log(f'downloading {url} to {path}', logger='current')
    try:
        os.makedirs(osp.dirname(path), exist_ok=True)
        download_url_to_file(url, path, progress=True)
    except Exception as error:  # URLError, HTTPError, timeout, no space
        message = (f'could not download the backbone checkpoint\n    {url}\n'
                   f'({type(error).__name__}: {error}).\n'
                   f'Either {_put_it_there(url, path)},\n'
                   f'or {_or_change_the_key(path)}')
        raise CheckpointDownloadError(message, url, path) from error


def fetch_checkpoint(url: str) -> str:
    """The cached file of ``url``, downloaded first if it is not there.

    Under distributed training rank 0 downloads while the others wait at a
    barrier, then any rank that still lacks the file (another node without
    a shared file system) downloads its own copy, as mmengine's
    ``load_from_http`` does.

    Args:
        url: an http(s) URL.

    Returns:
        str: the local path of the file.

    Raises:
        CheckpointDownloadError: the download failed; the message says where
            to put the file by hand and which config key to change.
    """
    path = cache_path(url)
    rank, world_size = get_dist_info()
    error = None
    # Every rank reaches the barrier, whether or not its file is there.
    if rank == 0 and not osp.isfile(path):
        try:
            _download(url, path)
        except CheckpointDownloadError as failed:
            error = failed  # raise after the barrier: no rank waits forever
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0 and not osp.isfile(path):
            _download(url, path)
    if error is not None:
        raise error
    return path


def wrong_file_error(url: str, path: str,
                     error: Exception) -> CheckpointFileError:
    """The error for a cached file of ``url`` that does not load or does not
    fit the model.

    Args:
        url: the URL the file stands for.
        path: the cached file.
        error: why it does not load (kept as the cause).
    """
    # Its first line: torch's and the allow-list's messages go on for many
    # lines, which the traceback shows above this one anyway.
    text = str(error).strip()
    reason = text.split('\n', 1)[0]
    if reason != text:
        reason += ' ... (the full error is above)'
    message = (f'the backbone checkpoint\n    {path}\n(the cached download '
               f'of {url}) does not load into the model: '
               f'{type(error).__name__}: {reason}\n'
               'If the file is damaged (an interrupted copy) or another '
               'file, delete it to download it again, or '
               f'{_put_it_there(url, path)}.\n'
               'If the URL does not publish the weights of '
               f'model.backbone.arch, {_or_change_the_key(path)}')
    return CheckpointFileError(message, url, path)


__all__ = ['CONFIG_KEY', 'CheckpointDownloadError', 'CheckpointFileError',
           'cache_path', 'fetch_checkpoint', 'is_url', 'wrong_file_error']
