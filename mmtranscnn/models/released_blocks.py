"""The authors' released networks: where they differ from the paper.

The eight published ImageNet checkpoints (:mod:`.released`) need exactly
the function of the code that defines them (``TransCNN.py`` and
``HAT_Net.py``), which reads §3 differently from :mod:`.hmhsa` and
:mod:`.blocks`. Everything that differs is in this module, as subclasses or
siblings of the paper's blocks (each docstring says what differs), gathered
in :data:`RELEASED_VARIANTS` (the released presets pick theirs by name);
``docs/released_weights.md`` lists every difference and the choice made.

The released code runs only on sizes that its windows and pooling ratios
divide; these blocks run on any size and equal it where it runs.
"""
import warnings
from typing import Optional, Sequence, Union

import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_activation_layer, build_norm_layer
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmtranscnn.registry import MODELS

from .blocks import DEPTHWISE_CONV, ConvStem, InvertedResidual
from .hmhsa import HMHSA, parse_grid_sizes
from .memory import conv_chain

#: HAT-Net's norm, in place of BN everywhere: GroupNorm with one group.
HATNET_NORM = dict(type='GN', num_groups=1, eps=1e-6)


def _conv(*args, **kwargs) -> ConvModule:
    """A ``ConvModule``; mmcv's warning about a conv bias before a BN is
    silenced: the released weights have those biases."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', 'Unnecessary conv bias')
        return ConvModule(*args, **kwargs)


def _norm_tokens(norm: nn.Module, t: Tensor) -> Tensor:
    """A (B, C, H, W) norm layer applied to a (B, H, W, C) map."""
    return norm(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


@MODELS.register_module()
class ReleasedHMHSA(HMHSA):
    """H-MHSA as the released code (both versions) computes it.

    Eq. 7 adds the block input before its pre-norm and normalises the sum
    (``grid_norm``); Eq. 8 is an average pool alone, by a ratio of its own
    (8/4/2 per stage, while the level-0 windows are 8/8/8 or 8/7/7); the
    merged tokens are normalised before the key/value projection
    (``ds_norm``); and Eq. 12 sums ``A0`` itself (residual and norm
    included) instead of ``attn_0``.

    Args:
        pool_ratios (int | Sequence[int], optional): one ratio per entry of
            ``grid_sizes``: level i > 0 average-pools the previous level's
            map by the i-th. None pools by the grids. Holds no weights.
            Default: None.
        norm_cfg (dict): the pre-norm, also used for ``grid_norm`` and
            ``ds_norm``. Default: BN.
        embed_dims, grid_sizes, **kwargs: as in :class:`~.hmhsa.HMHSA`.
    """

    def __init__(self,
                 embed_dims: int,
                 grid_sizes: Union[int, Sequence[int]] = 8,
                 pool_ratios: Union[int, Sequence[int], None] = None,
                 norm_cfg: dict = dict(type='BN'),
                 **kwargs):
        super().__init__(embed_dims, grid_sizes, norm_cfg=norm_cfg, **kwargs)
        self.pool_ratios = self.grid_sizes
        if pool_ratios is not None and self.hierarchical:
            self.pool_ratios = parse_grid_sizes(pool_ratios, 'pool_ratios')
            if len(self.pool_ratios) != len(self.grid_sizes):
                raise ValueError(
                    f'pool_ratios needs one ratio per entry of grid_sizes '
                    f'{self.grid_sizes} (level i > 0 pools by the i-th), '
                    f'got {pool_ratios!r}')
        if self.hierarchical:
            self.grid_norm = build_norm_layer(norm_cfg, embed_dims)[1]
            self.ds_norm = build_norm_layer(norm_cfg, embed_dims)[1]

    def extra_repr(self) -> str:
        return super().extra_repr() + f', pool_ratios={self.pool_ratios}'

    def level0_map(self, x: Tensor, tokens: Tensor, attn0: Tensor) -> Tensor:
        return _norm_tokens(self.grid_norm, x.permute(0, 2, 3, 1) + attn0)

    def level0_term(self, attn0: Tensor, a0: Tensor) -> Tensor:
        return a0

    def merge_ratio(self, level: int) -> int:
        return self.pool_ratios[level - 1]

    def merge(self, t: Tensor, ratio: int) -> Tensor:
        nchw = t.permute(0, 3, 1, 2)
        merged = F.avg_pool2d(nchw, ratio, ratio, ceil_mode=True,
                              count_include_pad=False)
        return merged.permute(0, 2, 3, 1)

    def key_tokens(self, merged: Tensor) -> Tensor:
        return _norm_tokens(self.ds_norm, merged)


class ReleasedStem(ConvStem):
    """The released stem: conv(bias) + norm + activation, then a bare
    conv(bias); both 3x3, stride 2. Args: as :class:`~.blocks.ConvStem`.
    """

    @staticmethod
    def _convs(in_channels, mid_channels, out_channels, norm_cfg, act_cfg):
        return (_conv(in_channels, mid_channels, 3, stride=2, padding=1,
                      bias=True, norm_cfg=norm_cfg, act_cfg=act_cfg),
                ConvModule(mid_channels, out_channels, 3, stride=2,
                           padding=1, bias=True, norm_cfg=None,
                           act_cfg=None))


class TransCNNv1Downsample(BaseModule):
    """``TransCNN.py``'s downsampling: conv(bias) + norm, plus 2x2 max pool
    then conv(bias) + norm; the activation on the sum.

    Args: as :class:`~.blocks.TwoBranchDownsample`, but ``act_cfg`` (the
    activation on the sum) defaults to SiLU.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='SiLU'),
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        self.conv_branch = _conv(in_channels, out_channels, 3, stride=2,
                                 padding=1, bias=True, norm_cfg=norm_cfg,
                                 act_cfg=None)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.pool_branch = _conv(in_channels, out_channels, 1, bias=True,
                                 norm_cfg=norm_cfg, act_cfg=None)
        self.act = build_activation_layer(act_cfg)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(
            conv_chain(x, self.conv_branch) +
            conv_chain(self.pool(x), self.pool_branch))


class HATNetDownsample(BaseModule):
    """``HAT_Net.py``'s downsampling: one 3x3 stride-2 conv(bias) + norm.

    Args: as :class:`~.blocks.TwoBranchDownsample`; ``norm_cfg`` defaults
    to HAT-Net's GroupNorm.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 norm_cfg: dict = HATNET_NORM,
                 act_cfg: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        self.conv_branch = _conv(in_channels, out_channels, 3, stride=2,
                                 padding=1, bias=True, norm_cfg=norm_cfg,
                                 act_cfg=None)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_branch(x)


@MODELS.register_module()
class HATNetInvertedResidual(InvertedResidual):
    """``HAT_Net.py``'s IRB: norm -> 1x1 conv -> activation, KxK depthwise
    conv -> activation, 1x1 conv -> norm; an identity shortcut.

    Args: as :class:`~.blocks.InvertedResidual`; ``norm_cfg`` defaults to
    HAT-Net's GroupNorm.
    """

    def __init__(self,
                 channels: int,
                 expand_ratio: float = 4,
                 kernel_size: int = 3,
                 norm_cfg: dict = HATNET_NORM,
                 act_cfg: dict = dict(type='SiLU'),
                 drop_path_rate: float = 0.,
                 init_cfg: Optional[dict] = None):
        super().__init__(channels, expand_ratio, kernel_size, norm_cfg,
                         act_cfg, drop_path_rate, init_cfg)

    @staticmethod
    def _convs(channels, hidden, kernel_size, norm_cfg, act_cfg):
        return (ConvModule(channels, hidden, 1, norm_cfg=norm_cfg,
                           act_cfg=act_cfg, order=('norm', 'conv', 'act')),
                ConvModule(hidden, hidden, kernel_size,
                           padding=kernel_size // 2, groups=hidden,
                           bias=False, conv_cfg=DEPTHWISE_CONV,
                           norm_cfg=None, act_cfg=act_cfg),
                ConvModule(hidden, channels, 1, norm_cfg=norm_cfg,
                           act_cfg=None))


#: How each released version builds TransCNN: its norm, stem, downsampling
#: block, attention and IRB (``TransCNN`` reads the paper's from
#: ``transcnn.PAPER``).
RELEASED_VARIANTS = {
    'transcnn-v1': dict(norm_cfg=dict(type='BN'), stem=ReleasedStem,
                        downsample=TransCNNv1Downsample, attn=ReleasedHMHSA,
                        irb=InvertedResidual),
    'hatnet': dict(norm_cfg=HATNET_NORM, stem=ReleasedStem,
                   downsample=HATNetDownsample, attn=ReleasedHMHSA,
                   irb=HATNetInvertedResidual),
}

__all__ = ['RELEASED_VARIANTS', 'ReleasedHMHSA', 'ReleasedStem',
           'TransCNNv1Downsample', 'HATNetDownsample',
           'HATNetInvertedResidual', 'HATNET_NORM']
