"""Every preset's numbers, in one place: Table 1's two networks and the
authors' eight released ones.

* :data:`ARCH_SETTINGS`: the layout of each preset, the ``arch`` names
  :class:`~mmtranscnn.models.TransCNN` takes (``TransCNN.arch_zoo`` is this
  dict): channels, depths, depthwise kernel sizes and IRB expansion ratios
  per stage; the released ones also their ``variant`` (a key of
  ``transcnn.VARIANTS``: which released code builds them), head dim,
  level-0 windows (``grid_sizes``) and pooling ratios.
* :data:`RELEASED`: what the authors published for each released preset
  (:class:`ReleasedModel`); :mod:`.released` maps the files' keys to ours.
  Configs, ``model-index.yml``, the README and docs name
  ``ReleasedModel.url`` (a test checks that they agree).

Data only: this module imports nothing from the package, so the model
(``transcnn.py``) and the converter (``released.py``) both read it without
importing each other.
"""
from typing import Dict, NamedTuple, Tuple

# TransCNN.py: level-0 windows 8/8/8, pooling ratios 8/4/2, 256x256.
_V1 = dict(variant='transcnn-v1', head_dim=64, grid_sizes=(8, 8, 8, 0),
           pool_ratios=(8, 4, 2, 0))
# HAT_Net.py: windows 8/7/7, pooling ratios 8/4/2, 224x224.
_HATNET = dict(variant='hatnet', head_dim=64, grid_sizes=(8, 7, 7, 0),
               pool_ratios=(8, 4, 2, 0))

ARCH_SETTINGS: Dict[str, dict] = {
    # Table 1 (our reading of the paper; no released weights).
    'small': dict(channels=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                  kernel_sizes=[5, 3, 5, 3], expand_ratios=[4, 4, 6, 5]),
    'base': dict(channels=[64, 128, 256, 512], depths=[3, 4, 8, 3],
                 kernel_sizes=[5, 3, 5, 3], expand_ratios=[4, 4, 6, 6]),
    # The authors' released networks (weights: RELEASED below).
    'transcnn-v1-tiny': dict(
        _V1, channels=[64, 128, 256, 512], depths=[2, 2, 4, 2],
        kernel_sizes=[5, 3, 5, 3], expand_ratios=[4, 4, 4, 4]),
    # Table 1's "Base" layout, released under the name TransCNN-Small.
    'transcnn-v1-small': dict(
        _V1, channels=[64, 128, 256, 512], depths=[3, 4, 8, 3],
        kernel_sizes=[5, 3, 5, 3], expand_ratios=[4, 4, 6, 6]),
    'transcnn-v1-medium': dict(
        _V1, channels=[64, 128, 320, 640], depths=[3, 4, 12, 3],
        kernel_sizes=[5, 3, 5, 3], expand_ratios=[4, 4, 6, 6]),
    'transcnn-v1-large': dict(
        _V1, channels=[64, 128, 384, 768], depths=[3, 4, 16, 3],
        kernel_sizes=[5, 3, 5, 3], expand_ratios=[4, 4, 6, 6]),
    'hatnet-tiny': dict(
        _HATNET, channels=[48, 96, 240, 384], depths=[2, 2, 6, 3],
        kernel_sizes=[3, 3, 3, 3], expand_ratios=[8, 8, 4, 4], head_dim=48),
    'hatnet-small': dict(
        _HATNET, channels=[64, 128, 320, 512], depths=[2, 3, 8, 3],
        kernel_sizes=[3, 3, 3, 3], expand_ratios=[8, 8, 4, 4]),
    'hatnet-medium': dict(
        _HATNET, channels=[64, 128, 320, 512], depths=[3, 6, 18, 3],
        kernel_sizes=[5, 3, 5, 3], expand_ratios=[8, 8, 4, 4]),
    'hatnet-large': dict(
        _HATNET, channels=[64, 128, 320, 640], depths=[3, 8, 27, 3],
        kernel_sizes=[3, 3, 3, 3], expand_ratios=[8, 8, 4, 4]),
}


class ReleasedModel(NamedTuple):
    """Facts about one released checkpoint (as published by the authors).

    ``urls`` are tried in order (:mod:`.pretrained`), a later one only when
    the ones before it answer 404. All end in ``file``, the name the file
    is cached under, so a copy from any of them is reused.
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


def _drive(file_id: str) -> str:
    return f'https://drive.google.com/file/d/{file_id}/view?usp=sharing'


def _v1(size: str, drive_id: str, top1: float, params: str) -> ReleasedModel:
    """``TransCNN-<size>.pth`` of the first version, at 256x256. The
    authors' README linked it under the tag ``v1`` at first, ``v1.0`` later,
    in the repository then named ``yun-liu/TransCNN``, now
    ``yun-liu/HAT-Net`` (GitHub forwards the old name); the last link, the
    ``v1.0`` file under the current name, is for the day it stops."""
    file = f'TransCNN-{size}.pth'
    urls = (_GITHUB + 'TransCNN/releases/download/v1.0/' + file,
            _GITHUB + 'TransCNN/releases/download/v1/' + file,
            _GITHUB + 'HAT-Net/releases/download/v1.0/' + file)
    return ReleasedModel(f'TransCNN-{size}', 'transcnn-v1', file, urls,
                         _drive(drive_id), 256, top1, params)


def _hatnet(size: str, drive_id: str, top1: float,
            params: str) -> ReleasedModel:
    """``HAT-Net_<size>.pth`` of the journal version, at 224x224; its link:
    the tag ``v2.0`` of ``yun-liu/HAT-Net``, the only one the authors
    published for these files."""
    file = f'HAT-Net_{size}.pth'
    urls = (_GITHUB + 'HAT-Net/releases/download/v2.0/' + file, )
    return ReleasedModel(f'HAT-Net-{size}', 'hatnet', file, urls,
                         _drive(drive_id), 224, top1, params)


RELEASED: Dict[str, ReleasedModel] = {
    'transcnn-v1-tiny': _v1('Tiny', '1OwazUhr8awul-D07U-RQ-7Zl2o6Ki-zJ',
                            80.4, '13.3M'),
    'transcnn-v1-small': _v1('Small', '1XLzseiHvaZKiMJ6Ec4BdmLW-gmb5cuq5',
                             83.1, '26.5M'),
    'transcnn-v1-medium': _v1('Medium', '1OMuNIKDqISlxZcxvbuZerUc-ix_LYYUr',
                              83.8, '48.3M'),
    'transcnn-v1-large': _v1('Large', '12nRHmZqj3EVDuJA3Iq9E0vRP7ocaI7k3',
                             84.2, '80.0M'),
    'hatnet-tiny': _hatnet('Tiny', '1iuhOCEMhEqJlCJKk--Qk1w6TcxP_Plgf',
                           79.8, '12.7M'),
    'hatnet-small': _hatnet('Small', '1lfVT_nCndVAPikAivigl72Ne5XKjfkCp',
                            82.6, '25.7M'),
    'hatnet-medium': _hatnet('Medium', '1fWITg1Cfm0qDaYw7xhfF8pXdbhK5ctHY',
                             84.0, '42.9M'),
    'hatnet-large': _hatnet('Large', '1MPNd86S_BvtPDrH_h39vjjvN12opsMki',
                            84.2, '63.1M'),
}

__all__ = ['ARCH_SETTINGS', 'RELEASED', 'ReleasedModel']
