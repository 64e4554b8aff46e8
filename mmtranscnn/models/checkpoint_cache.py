"""Backbone checkpoints named by URL: the download cache and its errors.

The detection and segmentation configs name the authors' released ImageNet
files by URL in ``model.backbone.init_cfg.checkpoint``, as mmdet's Swin
configs do. The file is downloaded once into the cache that torch.hub and
mmengine use (``$TORCH_HOME/hub/checkpoints/<file name>``, see
:func:`cache_path`), so a file that either of them fetched is reused, and a
file a user put there by hand is used without any download.

A released file has more than one link (:data:`.presets.RELEASED`,
``ReleasedModel.urls``): the one the config names is tried first, the
others only while the links tried so far answer 404 (a release tag that was
renamed or removed). Any other failure (no network, a timeout, a server
error) stops at once: the other links are on the same host.

Only the download happens here. Reading goes through
:func:`mmtranscnn.utils.checkpoint_safety.safe_torch_load` (``weights_only``
with an allow-list), never through mmengine's ``load_from_http``, which
unpickles with ``torch.load``'s defaults. When the download fails or the
cached file is not the expected one, the error names the URL, the exact
path to put the file at by hand, the authors' other published copies of a
released file, and :data:`CONFIG_KEY`.
"""
import os
import os.path as osp
from typing import List, Optional, Tuple
from urllib.error import HTTPError
from urllib.parse import urlparse

import torch
from mmengine.dist import get_dist_info
from mmengine.logging import print_log
# Looked up through this module at call time, so tests can replace it.
from torch.hub import download_url_to_file

from .presets import RELEASED, ReleasedModel

#: The config key that names the backbone's checkpoint.
CONFIG_KEY = 'model.backbone.init_cfg.checkpoint'

_URL_SCHEMES = ('http://', 'https://')


class CheckpointDownloadError(RuntimeError):
    """A checkpoint URL could not be downloaded into the cache.

    Attributes:
        url (str): the URL that was asked for (the config's).
        path (str): where the file is expected (put it there by hand).
        tried (list[str]): every URL tried, in order: ``url`` first, then
            the released file's other links that were tried after a 404.
    """

    def __init__(self, message: str, url: str, path: str,
                 tried: Optional[List[str]] = None):
        super().__init__(message)
        self.url = url
        self.path = path
        self.tried = list(tried) if tried else [url]


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


def released_preset(url: str) -> Optional[str]:
    """The released preset (a key of :data:`.presets.RELEASED`) whose file
    ``url`` is one of the links of, or None."""
    for preset, info in RELEASED.items():
        if url in info.urls:
            return preset
    return None


def _release_of(url: str) -> Optional[ReleasedModel]:
    preset = released_preset(url)
    return None if preset is None else RELEASED[preset]


def candidate_urls(url: str) -> Tuple[str, ...]:
    """The links tried for ``url``, in order: ``url`` itself, then, for a
    link of a released file, that file's other links in the order of
    ``ReleasedModel.urls``.

    Args:
        url: an http(s) URL.
    """
    info = _release_of(url)
    if info is None:
        return (url, )
    return (url, ) + tuple(u for u in info.urls if u != url)


def _put_it_there(url: str, path: str) -> str:
    return (f'download it by hand from\n    {url}\nand put it at\n'
            f'    {path}\n(torch.hub\'s cache, $TORCH_HOME/hub/checkpoints: '
            'a file there is used without a download)')


def _or_change_the_key(path: str) -> str:
    return (f'set the config key {CONFIG_KEY} to a local copy (or to '
            'another URL), e.g.\n'
            f'    --cfg-options {CONFIG_KEY}=/path/to/{osp.basename(path)}')


def _why(error: Exception) -> str:
    return f'{type(error).__name__}: {error}'


def _download_error(url: str, path: str,
                    failures: List[Tuple[str, Exception]]
                    ) -> CheckpointDownloadError:
    """The error after every link tried for ``url`` failed: the links and
    why each failed, the authors' other copy of a released file, where to
    put a copy by hand and which config key names a local one."""
    info = _release_of(url)
    if len(failures) == 1:
        tried, error = failures[0]
        message = (f'could not download the backbone checkpoint\n'
                   f'    {tried}\n({_why(error)}).\n')
    else:
        message = ('could not download the backbone checkpoint from any '
                   'of its links (tried in this order):\n' +
                   ''.join(f'    {tried}\n        ({_why(error)})\n'
                           for tried, error in failures))
    untried = [u for u in candidate_urls(url)
               if u not in [tried for tried, _ in failures]]
    if untried:
        message += ('Not tried (a link is tried only after a 404): ' +
                    ', '.join(untried) + '\n')
    if info is not None:
        message += (f'The authors also publish {info.name} '
                    f'({info.file}) on Google Drive:\n'
                    f'    {info.drive_url}\n')
    message += (f'Either download it by hand (from a link above) and put '
                f'it at\n    {path}\n(torch.hub\'s cache, '
                '$TORCH_HOME/hub/checkpoints: a file there is used without '
                f'a download),\nor {_or_change_the_key(path)}')
    return CheckpointDownloadError(
        message, url, path, [tried for tried, _ in failures])


def _download(url: str, path: str) -> None:
    """Download ``url`` (or, after a 404, the released file's other links)
    to ``path``; raise :class:`CheckpointDownloadError`.

    torch.hub writes to a temporary name and renames it when complete, so
    an interrupted download never leaves a partial file at ``path``.
    """
    try:
        os.makedirs(osp.dirname(path), exist_ok=True)
    except OSError as error:  # a cache folder that cannot be made
        raise _download_error(url, path, [(url, error)]) from error
    failures = []
    for candidate in candidate_urls(url):
        print_log(f'downloading {candidate} to {path}', logger='current')
        try:
            download_url_to_file(candidate, path, progress=True)
            return
        except Exception as error:  # URLError, HTTPError, timeout, no space
            failures.append((candidate, error))
            # Only a missing file sends us to the next link: any other
            # failure would repeat on the same host.
            if not (isinstance(error, HTTPError) and error.code == 404):
                break
    raise _download_error(url, path, failures) from failures[-1][1]


def fetch_checkpoint(url: str) -> str:
    """The cached file of ``url``, downloaded first if it is not there.

    For a link of a released file (:data:`.presets.RELEASED`) that answers
    404, the file's other links are tried in order; all of them share the
    file name, so the cached file is the same whichever link delivered it.

    Under distributed training rank 0 downloads while the others wait at a
    barrier, then any rank that still lacks the file (another node without
    a shared file system) downloads its own copy, as mmengine's
    ``load_from_http`` does.

    Args:
        url: an http(s) URL.

    Returns:
        str: the local path of the file.

    Raises:
        CheckpointDownloadError: every link failed; the message lists the
            links tried and why each failed, the authors' other copies,
            where to put the file by hand and which config key to change.
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
           'cache_path', 'candidate_urls', 'fetch_checkpoint', 'is_url',
           'released_preset', 'wrong_file_error']
