"""Every preset's numbers, in one place: Table 1's two networks and the
authors' eight released ones.

* :data:`ARCH_SETTINGS`: the layout of each preset, the ``arch`` names
  :class:`~mmtranscnn.models.TransCNN` takes (``TransCNN.arch_zoo`` is this
  dict): channels, depths, depthwise kernel sizes and IRB expansion ratios
  per stage; the released ones also their ``variant`` (a key of
  ``transcnn.VARIANTS``: which released code builds them), head dim,
  level-0 windows (``grid_sizes``) and pooling ratios.
* :data:`RELEASED`: what the authors published for each released preset
  (:class:`ReleasedModel`: name, file, link, input size, top-1, parameter
  count); :mod:`.released` maps the files' keys to ours.

Data only: this module imports nothing from the package, so the model
(``transcnn.py``) and the converter (``released.py``) both read it without
importing each other.
"""
from typing import Dict, NamedTuple

ARCH_SETTINGS: Dict[str, dict] = {
    # Table 1 (our reading of the paper; no released weights).
    'small': dict(channels=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                  kernel_sizes=[5, 3, 5, 3], expand_ratios=[4, 4, 6, 5]),
    'base': dict(channels=[64, 128, 256, 512], depths=[3, 4, 8, 3],
                 kernel_sizes=[5, 3, 5, 3], expand_ratios=[4, 4, 6, 6]),
    # The authors' released networks (weights: RELEASED below).
    # TransCNN.py: level-0 windows 8/8/8, pooling ratios 8/4/2, 256x256.
    'transcnn-v1-tiny': dict(
        variant='transcnn-v1', channels=[64, 128, 256, 512],
        depths=[2, 2, 4, 2], kernel_sizes=[5, 3, 5, 3],
        expand_ratios=[4, 4, 4, 4], head_dim=64,
        grid_sizes=(8, 8, 8, 0), pool_ratios=(8, 4, 2, 0)),
    # Table 1's "Base" layout, released under the name TransCNN-Small.
    'transcnn-v1-small': dict(
        variant='transcnn-v1', channels=[64, 128, 256, 512],
        depths=[3, 4, 8, 3], kernel_sizes=[5, 3, 5, 3],
        expand_ratios=[4, 4, 6, 6], head_dim=64,
        grid_sizes=(8, 8, 8, 0), pool_ratios=(8, 4, 2, 0)),
    'transcnn-v1-medium': dict(
        variant='transcnn-v1', channels=[64, 128, 320, 640],
        depths=[3, 4, 12, 3], kernel_sizes=[5, 3, 5, 3],
        expand_ratios=[4, 4, 6, 6], head_dim=64,
        grid_sizes=(8, 8, 8, 0), pool_ratios=(8, 4, 2, 0)),
    'transcnn-v1-large': dict(
        variant='transcnn-v1', channels=[64, 128, 384, 768],
        depths=[3, 4, 16, 3], kernel_sizes=[5, 3, 5, 3],
        expand_ratios=[4, 4, 6, 6], head_dim=64,
        grid_sizes=(8, 8, 8, 0), pool_ratios=(8, 4, 2, 0)),
    # HAT_Net.py: windows 8/7/7, pooling ratios 8/4/2, 224x224.
    'hatnet-tiny': dict(
        variant='hatnet', channels=[48, 96, 240, 384], depths=[2, 2, 6, 3],
        kernel_sizes=[3, 3, 3, 3], expand_ratios=[8, 8, 4, 4],
        head_dim=48, grid_sizes=(8, 7, 7, 0), pool_ratios=(8, 4, 2, 0)),
    'hatnet-small': dict(
        variant='hatnet', channels=[64, 128, 320, 512], depths=[2, 3, 8, 3],
        kernel_sizes=[3, 3, 3, 3], expand_ratios=[8, 8, 4, 4],
        head_dim=64, grid_sizes=(8, 7, 7, 0), pool_ratios=(8, 4, 2, 0)),
    'hatnet-medium': dict(
        variant='hatnet', channels=[64, 128, 320, 512],
        depths=[3, 6, 18, 3], kernel_sizes=[5, 3, 5, 3],
        expand_ratios=[8, 8, 4, 4], head_dim=64,
        grid_sizes=(8, 7, 7, 0), pool_ratios=(8, 4, 2, 0)),
    'hatnet-large': dict(
        variant='hatnet', channels=[64, 128, 320, 640],
        depths=[3, 8, 27, 3], kernel_sizes=[3, 3, 3, 3],
        expand_ratios=[8, 8, 4, 4], head_dim=64,
        grid_sizes=(8, 7, 7, 0), pool_ratios=(8, 4, 2, 0)),
}


class ReleasedModel(NamedTuple):
    """Facts about one released checkpoint (as published by the authors)."""
    name: str          # the authors' model name
    version: str       # 'transcnn-v1' (TransCNN.py) or 'hatnet' (HAT_Net.py)
    file: str          # file name of the release asset
    url: str           # download link on the authors' GitHub release
    input_size: int    # training and evaluation crop
    top1: float        # ImageNet-1k top-1 (%) as published
    params_published: str  # "#Params" column of the authors' README


_V1_URL = 'https://github.com/yun-liu/TransCNN/releases/download/v1/'
_HAT_URL = 'https://github.com/yun-liu/HAT-Net/releases/download/v2.0/'

RELEASED: Dict[str, ReleasedModel] = {
    'transcnn-v1-tiny': ReleasedModel(
        'TransCNN-Tiny', 'transcnn-v1', 'TransCNN-Tiny.pth',
        _V1_URL + 'TransCNN-Tiny.pth', 256, 80.4, '13.3M'),
    'transcnn-v1-small': ReleasedModel(
        'TransCNN-Small', 'transcnn-v1', 'TransCNN-Small.pth',
        _V1_URL + 'TransCNN-Small.pth', 256, 83.1, '26.5M'),
    'transcnn-v1-medium': ReleasedModel(
        'TransCNN-Medium', 'transcnn-v1', 'TransCNN-Medium.pth',
        _V1_URL + 'TransCNN-Medium.pth', 256, 83.8, '48.3M'),
    'transcnn-v1-large': ReleasedModel(
        'TransCNN-Large', 'transcnn-v1', 'TransCNN-Large.pth',
        _V1_URL + 'TransCNN-Large.pth', 256, 84.2, '80.0M'),
    'hatnet-tiny': ReleasedModel(
        'HAT-Net-Tiny', 'hatnet', 'HAT-Net_Tiny.pth',
        _HAT_URL + 'HAT-Net_Tiny.pth', 224, 79.8, '12.7M'),
    'hatnet-small': ReleasedModel(
        'HAT-Net-Small', 'hatnet', 'HAT-Net_Small.pth',
        _HAT_URL + 'HAT-Net_Small.pth', 224, 82.6, '25.7M'),
    'hatnet-medium': ReleasedModel(
        'HAT-Net-Medium', 'hatnet', 'HAT-Net_Medium.pth',
        _HAT_URL + 'HAT-Net_Medium.pth', 224, 84.0, '42.9M'),
    'hatnet-large': ReleasedModel(
        'HAT-Net-Large', 'hatnet', 'HAT-Net_Large.pth',
        _HAT_URL + 'HAT-Net_Large.pth', 224, 84.2, '63.1M'),
}

__all__ = ['ARCH_SETTINGS', 'RELEASED', 'ReleasedModel']
