"""Parameters and FLOPs of a model (or its backbone) from a config.

Works with mmdet, mmseg and mmpretrain configs: the registry scope comes
from the config's ``default_scope``, and ``custom_imports`` (ours:
``mmtranscnn``) are honoured. Counting goes through
:func:`mmtranscnn.analysis.count_flops`, which gives mmengine's counter a
handle for ``scaled_dot_product_attention`` (otherwise attention would count
as zero).

Convention (fvcore / mmengine): 1 FLOP = 1 multiply-add; convolutions,
linear layers, matmuls, attention (Q K^T and attn V), norms and upsampling
are counted; element-wise ops, activations, pooling and softmax are not.
A whole model is traced in ``mode='tensor'`` (the network, without
post-processing such as NMS); the input is zeros of the given shape.

The weights are initialised from ``--seed`` (default 0). A two-stage
detector's count depends on how many proposals its RPN keeps after NMS
(every one goes through the RoI heads), and on a random network that
number follows the initial weights: unseeded, Mask R-CNN-Base varied by
about 0.5% between runs. Seeded, repeated runs give the same count.

Usage:
    python tools/analysis_tools/get_flops.py CONFIG [--shape H W]
        [--batch 1] [--backbone] [--by-module DEPTH] [--seed 0]
        [--cfg-options KEY=VALUE ...]

Examples:
    python tools/analysis_tools/get_flops.py \\
        configs/imagenet/transcnn-base_8xb128_in1k.py --shape 224 224
    python tools/analysis_tools/get_flops.py \\
        configs/retinanet_transcnn_base.py --shape 800 1344 --backbone
"""
import argparse
import sys

import torch
from torch import nn

#: Default input side per codebase when --shape is not given.
DEFAULT_SHAPES = {'mmdet': (800, 1344), 'mmseg': (512, 512),
                  'mmpretrain': (224, 224)}


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description='Count parameters and FLOPs (multiply-adds) of a model '
        'or its backbone built from a config.')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--shape', type=int, nargs='+', default=None,
                        help='input H W (or one value for a square); '
                        'default by scope: mmdet 800x1344, mmseg 512x512, '
                        'mmpretrain 224x224')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--in-channels', type=int, default=3)
    parser.add_argument('--backbone', action='store_true',
                        help='count model.backbone only')
    parser.add_argument('--by-module', type=int, default=0, metavar='DEPTH',
                        help='also list FLOPs of modules up to this depth')
    parser.add_argument('--by-operator', action='store_true',
                        help='also print FLOPs per operator type')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the random initial weights; a '
                        'two-stage detector\'s count depends on them '
                        '(through the number of proposals)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args(argv)
    if args.shape is not None and len(args.shape) not in (1, 2):
        parser.error(f'--shape takes H W or one side, got {args.shape}')
    if args.shape is not None and min(args.shape) < 1:
        parser.error('--shape values must be positive')
    return args


class TensorMode(nn.Module):
    """Calls an OpenMMLab model in ``mode='tensor'`` with one tensor in.

    mmdet two-stage detectors need image metas even in tensor mode; they are
    given as data samples holding only the metas.
    """

    def __init__(self, model: nn.Module, data_samples=None):
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, x):
        return self.model(x, self.data_samples, mode='tensor')


def build_model(cfg):
    """Build ``cfg.model`` in the config's scope, without loading weights."""
    from mmengine.registry import MODELS, init_default_scope
    scope = cfg.get('default_scope', None)
    if scope is None:
        raise ValueError(f'config {cfg.filename} has no default_scope; set '
                         'one of mmdet / mmseg / mmpretrain (--cfg-options '
                         'default_scope=mmdet)')
    init_default_scope(scope)
    model_cfg = cfg.model
    # Counting needs no checkpoint: never read (or download) one.
    if model_cfg.get('backbone', {}).get('init_cfg') is not None:
        model_cfg.backbone.init_cfg = None
    model_cfg.pop('pretrained', None)
    return MODELS.build(model_cfg), scope


def metas_only_samples(scope: str, batch: int, h: int, w: int):
    if scope != 'mmdet':
        return None
    from mmdet.structures import DetDataSample
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                batch_input_shape=(h, w), scale_factor=(1., 1.))
    return [DetDataSample(metainfo=meta) for _ in range(batch)]


def main(argv=None):
    from mmengine.config import Config
    from mmengine.runner import set_random_seed

    from mmtranscnn.analysis import count_flops, count_params
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    # Before building: the initial weights decide how many proposals a
    # two-stage detector's RoI heads get, so the count follows the seed.
    set_random_seed(args.seed)
    model, scope = build_model(cfg)
    model.eval()
    if args.shape is None:
        h, w = DEFAULT_SHAPES.get(scope, (224, 224))
    else:
        h, w = (args.shape * 2)[:2]
    shape = (args.batch, args.in_channels, h, w)
    if args.backbone:
        if not hasattr(model, 'backbone'):
            raise ValueError(f'{type(model).__name__} has no backbone')
        target, what = model.backbone, f'{type(model.backbone).__name__} ' \
            '(backbone)'
    else:
        target = TensorMode(model, metas_only_samples(scope, args.batch, h,
                                                      w))
        what = f'{type(model).__name__} (whole model, tensor mode)'
    with torch.no_grad():
        flops = count_flops(target, shape,
                            by_module=bool(args.by_module))
    by_module = None
    if args.by_module:
        by_module, flops = flops, flops['']
    by_operator = None
    if args.by_operator:
        with torch.no_grad():
            by_operator = count_flops(target, shape, by_operator=True)
    params = count_params(target)
    sep = '=' * 60
    print(sep)
    print(f'Config: {args.config} (scope {scope})')
    print(f'Model: {what}')
    print(f'Input shape: {shape}')
    print(f'Seed: {args.seed}')
    print(f'Params: {params / 1e6:.3f} M')
    print(f'FLOPs: {flops / 1e9:.3f} G (multiply-adds; attention matmuls '
          'included; fvcore/mmengine convention: element-wise ops, pooling '
          'and softmax not counted)')
    if args.batch > 1:
        print(f'FLOPs per image: {flops / 1e9 / args.batch:.3f} G')
    if by_module:
        prefix = 'model.' if not args.backbone else ''
        for name, value in by_module.items():
            name = name[len(prefix):] if name.startswith(prefix) else name
            depth = 0 if name in ('', 'model') else name.count('.') + 1
            if 0 < depth <= args.by_module and value:
                print(f"{'  ' * depth}{name}: {value / 1e9:.3f} G")
    if by_operator:
        print('By operator:')
        for name, value in sorted(by_operator.items(), key=lambda kv: -kv[1]):
            print(f'  {name}: {value / 1e9:.3f} G')
    print(sep)


if __name__ == '__main__':
    sys.exit(main())
