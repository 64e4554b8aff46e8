"""Make a training checkpoint ready to share.

Drops what only resuming needs (optimizer state, message hub, parameter
schedulers, the raw weights kept beside an EMA copy, data-preprocessor
buffers), optionally keeps only the backbone, and writes the file as
``OUT-<first 8 hex digits of its sha256>.pth`` so a download can be checked
against its name (``sha256sum FILE``).

Backbone-only files keep the ``backbone.`` prefix, so the same init_cfg loads
either kind of file::

    backbone=dict(type='TransCNN', ..., init_cfg=dict(
        type='Pretrained', checkpoint='transcnn-base_in1k-1a2b3c4d.pth',
        prefix='backbone.'))

Example::

    python tools/model_converters/publish_model.py \\
        work_dirs/transcnn-base_8xb128_in1k/epoch_300.pth \\
        transcnn-base_in1k.pth --backbone-only
"""
import argparse
import hashlib
import os
import os.path as osp
import tempfile
from collections import OrderedDict

import torch
from mmengine.runner.checkpoint import CheckpointLoader

# mmengine's loader reads mmengine checkpoints with
# torch.load(weights_only=True) and our allow-list (message hubs, numpy).
import mmtranscnn.safe_checkpoints  # noqa: F401

# Top-level entries a published file keeps; everything else (optimizer,
# message_hub, param_schedulers, ema_state_dict, ...) serves resuming only.
KEPT_ENTRIES = ('meta', 'state_dict')
DROPPED_KEY_PREFIXES = ('data_preprocessor.', )


def sha256_of(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()


def strip_checkpoint(checkpoint: dict,
                     backbone_only: bool = False,
                     prefix: str = 'backbone.') -> dict:
    """The part of ``checkpoint`` worth publishing.

    Args:
        checkpoint: a loaded mmengine checkpoint (a dict with ``state_dict``)
            or a bare state dict.
        backbone_only: keep only the keys starting with ``prefix``.
        prefix: the backbone's key prefix. Default: 'backbone.'.

    Returns:
        dict: ``{'meta': ..., 'state_dict': ...}`` with CPU tensors.
    """
    if not isinstance(checkpoint, dict):
        raise TypeError(f'a checkpoint must hold a dict, got '
                        f'{type(checkpoint).__name__}')
    if 'state_dict' in checkpoint:
        state_dict = checkpoint['state_dict']
        meta = dict(checkpoint.get('meta') or {})
    else:  # a bare state dict
        state_dict, meta = checkpoint, {}
    if not state_dict or not all(
            isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError('the checkpoint\'s state_dict is empty or holds '
                         'something other than tensors')
    kept = OrderedDict(
        (k[7:] if k.startswith('module.') else k, v.detach().cpu())
        for k, v in state_dict.items()
        if not k.startswith(DROPPED_KEY_PREFIXES))
    if backbone_only:
        kept = OrderedDict(
            (k, v) for k, v in kept.items() if k.startswith(prefix))
        if not kept:
            raise KeyError(f'--backbone-only: no key starts with {prefix!r}; '
                           f'the first keys are {list(state_dict)[:5]}')
    meta['published'] = dict(backbone_only=backbone_only)
    return {key: value for key, value in
            (('meta', meta), ('state_dict', kept)) if key in KEPT_ENTRIES}


def publish(in_file: str,
            out_file: str,
            backbone_only: bool = False,
            prefix: str = 'backbone.') -> str:
    """Write the published copy of ``in_file`` and return its final path.

    Args:
        in_file: the training checkpoint (local path or a URI mmengine reads).
        out_file: the output name; ``.pth`` is replaced by
            ``-<sha256[:8]>.pth``.
        backbone_only: keep only the backbone's tensors.
        prefix: the backbone's key prefix. Default: 'backbone.'.
    """
    if osp.abspath(in_file) == osp.abspath(out_file):
        raise ValueError('out_file must differ from in_file')
    checkpoint = CheckpointLoader.load_checkpoint(in_file, map_location='cpu')
    published = strip_checkpoint(checkpoint, backbone_only, prefix)
    stem = out_file[:-len('.pth')] if out_file.endswith('.pth') else out_file
    out_dir = osp.dirname(osp.abspath(stem))
    os.makedirs(out_dir, exist_ok=True)
    # Write next to the target, then rename: the hash is known only after
    # the file exists, and a crash must not leave a misnamed file behind.
    fd, tmp_path = tempfile.mkstemp(suffix='.pth', dir=out_dir)
    os.close(fd)
    try:
        torch.save(published, tmp_path)
        final = f'{stem}-{sha256_of(tmp_path)[:8]}.pth'
        # mkstemp makes the file private (0600); a published file gets the
        # permissions of any new file (0666 less the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, final)
    finally:
        if osp.exists(tmp_path):
            os.remove(tmp_path)
    return final


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Strip a checkpoint for publishing and add its hash '
        'to the file name.')
    parser.add_argument('in_file', help='training checkpoint')
    parser.add_argument('out_file', help='output name, e.g. NAME.pth')
    parser.add_argument(
        '--backbone-only',
        action='store_true',
        help='keep only the backbone (keys starting with --prefix)')
    parser.add_argument(
        '--prefix',
        default='backbone.',
        help='key prefix of the backbone (default: %(default)s)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    final = publish(args.in_file, args.out_file, args.backbone_only,
                    args.prefix)
    print(f'published {final}')


if __name__ == '__main__':
    main()
