"""Every preset's numbers, in one place: Table 1's two networks and the
authors' eight released ones.

* :data:`ARCH_SETTINGS`: the layout of each preset, the ``arch`` names
  :class:`~mmtranscnn.models.TransCNN` takes (``TransCNN.arch_zoo`` is this
  dict): channels, depths, depthwise kernel sizes and IRB expansion ratios
  per stage; the released ones also their ``variant`` (a key of
  ``transcnn.VARIANTS``: which released code builds them), head dim,
  level-0 windows (``grid_sizes``) and pooling ratios.
* :data:`RELEASED`: what the authors published for each released preset
  (:class:`ReleasedModel`: name, file, download links in the order tried,
  Google Drive copy, input size, top-1, parameter count); :mod:`.released`
  maps the files' keys to ours. Configs, ``model-index.yml``, the README
  and docs name ``ReleasedModel.url`` (a test checks that they agree).

Data only: this module imports nothing from the package, so the model
(``transcnn.py``) and the converter (``released.py``) both read it without
importing each other.
"""
from typing import Dict, NamedTuple, Tuple

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
    """Facts about one released checkpoint (as published by the authors).

    ``urls`` are tried in order (:mod:`.pretrained`); a later one
    only when the ones before it answer 404. All of them end in ``file``,
    the name the file is cached under, so a copy from any of them is
    reused.
    """
    name: str          # the authors' model name
    version: str       # 'transcnn-v1' (TransCNN.py) or 'hatnet' (HAT_Net.py)
    file: str          # file name of the release asset
    urls: Tuple[str, ...]  # GitHub release links, last published first
    drive_url: str     # the authors' copy on Google Drive (their README)
    input_size: int    # training and evaluation crop
    top1: float        # ImageNet-1k top-1 (%) as published
    params_published: str  # "#Params" column of the authors' README

    @property
    def url(self) -> str:
        """The link configs, the model index and the docs name: the one
        the authors published last."""
        return self.urls[0]


_GITHUB = 'https://github.com/yun-liu/'


def _v1_urls(file: str) -> Tuple[str, ...]:
    """The first version's links, last published first.

    The authors' README linked the files under the tag ``v1`` at first and
    under ``v1.0`` later, both in the repository then named
    ``yun-liu/TransCNN``. The repository is now ``yun-liu/HAT-Net``
    (GitHub forwards the old name); the last link is the same ``v1.0`` file
    under the current name, for the day the old name stops forwarding.
    """
    return (_GITHUB + 'TransCNN/releases/download/v1.0/' + file,
            _GITHUB + 'TransCNN/releases/download/v1/' + file,
            _GITHUB + 'HAT-Net/releases/download/v1.0/' + file)


def _hatnet_urls(file: str) -> Tuple[str, ...]:
    """HAT-Net's link: the tag ``v2.0`` of ``yun-liu/HAT-Net``, the only
    one the authors published for these files."""
    return (_GITHUB + 'HAT-Net/releases/download/v2.0/' + file, )


def _drive(file_id: str) -> str:
    return f'https://drive.google.com/file/d/{file_id}/view?usp=sharing'


RELEASED: Dict[str, ReleasedModel] = {
    'transcnn-v1-tiny': ReleasedModel(
        'TransCNN-Tiny', 'transcnn-v1', 'TransCNN-Tiny.pth',
        _v1_urls('TransCNN-Tiny.pth'),
        _drive('1OwazUhr8awul-D07U-RQ-7Zl2o6Ki-zJ'), 256, 80.4, '13.3M'),
    'transcnn-v1-small': ReleasedModel(
        'TransCNN-Small', 'transcnn-v1', 'TransCNN-Small.pth',
        _v1_urls('TransCNN-Small.pth'),
        _drive('1XLzseiHvaZKiMJ6Ec4BdmLW-gmb5cuq5'), 256, 83.1, '26.5M'),
    'transcnn-v1-medium': ReleasedModel(
        'TransCNN-Medium', 'transcnn-v1', 'TransCNN-Medium.pth',
        _v1_urls('TransCNN-Medium.pth'),
        _drive('1OMuNIKDqISlxZcxvbuZerUc-ix_LYYUr'), 256, 83.8, '48.3M'),
    'transcnn-v1-large': ReleasedModel(
        'TransCNN-Large', 'transcnn-v1', 'TransCNN-Large.pth',
        _v1_urls('TransCNN-Large.pth'),
        _drive('12nRHmZqj3EVDuJA3Iq9E0vRP7ocaI7k3'), 256, 84.2, '80.0M'),
    'hatnet-tiny': ReleasedModel(
        'HAT-Net-Tiny', 'hatnet', 'HAT-Net_Tiny.pth',
        _hatnet_urls('HAT-Net_Tiny.pth'),
        _drive('1iuhOCEMhEqJlCJKk--Qk1w6TcxP_Plgf'), 224, 79.8, '12.7M'),
    'hatnet-small': ReleasedModel(
        'HAT-Net-Small', 'hatnet', 'HAT-Net_Small.pth',
        _hatnet_urls('HAT-Net_Small.pth'),
        _drive('1lfVT_nCndVAPikAivigl72Ne5XKjfkCp'), 224, 82.6, '25.7M'),
    'hatnet-medium': ReleasedModel(
        'HAT-Net-Medium', 'hatnet', 'HAT-Net_Medium.pth',
        _hatnet_urls('HAT-Net_Medium.pth'),
        _drive('1fWITg1Cfm0qDaYw7xhfF8pXdbhK5ctHY'), 224, 84.0, '42.9M'),
    'hatnet-large': ReleasedModel(
        'HAT-Net-Large', 'hatnet', 'HAT-Net_Large.pth',
        _hatnet_urls('HAT-Net_Large.pth'),
        _drive('1MPNd86S_BvtPDrH_h39vjjvN12opsMki'), 224, 84.2, '63.1M'),
}

__all__ = ['ARCH_SETTINGS', 'RELEASED', 'ReleasedModel']
