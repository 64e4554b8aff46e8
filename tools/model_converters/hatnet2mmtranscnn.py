"""Convert an authors' released TransCNN / HAT-Net ImageNet checkpoint.

Reads ``TransCNN-{Tiny,Small,Medium,Large}.pth`` (first version) or
``HAT-Net_{Tiny,Small,Medium,Large}.pth`` (journal version) as downloaded:
a raw state dict or ``{'model': ...}`` (optionally with the training
script's ``args``), ``module.`` prefixes allowed. The file is read with
``torch.load(weights_only=True)`` and a small allow-list, so no arbitrary
pickle runs. Writes our classifier layout::

    {'state_dict': {'backbone.<our key>': ..., 'head.fc.weight': ...,
                    'head.fc.bias': ...},
     'meta': {'released_version': ..., 'arch': ..., 'source': ...}}

which ``tools/test.py configs/released/imagenet/<preset>_in1k.py OUT``
evaluates, and which detection / segmentation configs load with
``init_cfg=dict(type='Pretrained', checkpoint=OUT, prefix='backbone.')``.
``--backbone-only`` leaves the classifier out. Every key must map; any that
does not is named and nothing is written. The written file is checked by
loading it strictly into the matching preset (``--arch``, or the preset whose
macro layout, read off the tensor shapes, the file has).

Example::

    python tools/model_converters/hatnet2mmtranscnn.py \\
        HAT-Net_Small.pth hatnet-small_in1k.pth
"""
import argparse
import os
import os.path as osp
import sys

import torch

import mmtranscnn  # noqa: F401  (registers the models)
from mmtranscnn.models import TransCNN
from mmtranscnn.models.pretrained import read_checkpoint, state_dict_of
from mmtranscnn.models.released import (RELEASED, convert_released,
                                        matching_presets)


def convert(src: str, dst: str, backbone_only: bool = False,
            arch: str = None) -> dict:
    """Convert ``src`` to ``dst``; returns the written checkpoint."""
    state_dict = state_dict_of(read_checkpoint(src))
    backbone, head, version = convert_released(state_dict)
    fits = matching_presets(state_dict)
    if arch is None and len(fits) == 1:
        arch = fits[0]
    if arch not in fits:
        raise ValueError(
            f'{src} is a released {version} file whose layout fits '
            f'{fits or "no released preset"}' +
            (f'; --arch {arch!r} is not one of them' if arch else
             '; pass --arch with the one it is'))
    # Strict check before anything is written.
    model = TransCNN(arch)
    model.load_state_dict(backbone, strict=True)
    out = {'backbone.' + k: v.contiguous() for k, v in backbone.items()}
    if not backbone_only:
        if set(head) != {'fc.weight', 'fc.bias'}:
            raise KeyError(f'{src}: the classifier (classifier.1.weight/bias)'
                           f' is missing; use --backbone-only')
        out.update({'head.' + k: v for k, v in head.items()})
    checkpoint = dict(
        state_dict=out,
        meta=dict(released_version=version, arch=arch,
                  source=osp.basename(src),
                  released_name=RELEASED[arch].name))
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    torch.save(checkpoint, dst)
    return checkpoint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert a released TransCNN / HAT-Net checkpoint to '
        'the mmtranscnn classifier layout (backbone + mmpretrain head).')
    parser.add_argument('src', help='the downloaded .pth file')
    parser.add_argument('dst', help='where to write the converted file')
    parser.add_argument('--backbone-only', action='store_true',
                        help='leave out the 1000-class head')
    parser.add_argument('--arch', default=None,
                        help='the preset to check against (default: the one '
                        'whose layout the file has)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    checkpoint = convert(args.src, args.dst, args.backbone_only, args.arch)
    meta = checkpoint['meta']
    print(f'{args.src}: {meta["released_name"]} ({meta["released_version"]})'
          f' -> {args.dst}: {len(checkpoint["state_dict"])} tensors, '
          f'arch={meta["arch"]!r}')


if __name__ == '__main__':
    sys.exit(main())
