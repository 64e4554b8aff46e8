"""Building blocks of TransCNN (§3.3, Fig. 1c/1d), as the paper has them.

Every conv comes with its norm and activation as one mmcv ``ConvModule``;
``norm_cfg`` / ``act_cfg`` follow mmcv's conventions, so a config can swap
BN for SyncBN or SiLU for another activation. Chains of them run through
:func:`~.memory.conv_chain`, which keeps only each conv's output for
backward. The authors' released networks build some of these differently
(:mod:`.released_blocks`, overriding ``_convs``).
"""
from typing import Optional

from mmcv.cnn import ConvModule
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mmtranscnn.ops import DepthwiseConv2d
from mmtranscnn.registry import MODELS

from .memory import conv_chain

#: The IRBs' depthwise conv: ``nn.Conv2d`` whose CPU backward is fast for
#: 5x5 kernels (:mod:`mmtranscnn.ops.depthwise_conv`; same parameters and
#: results).
DEPTHWISE_CONV = dict(type=DepthwiseConv2d)


class ConvStem(BaseModule):
    """Stage 1: two 3x3 stride-2 convs, each with norm and activation
    (stride 4 in all).

    Args:
        in_channels (int): input image channels. Default: 3.
        mid_channels (int): channels of the first conv. Default: 16.
        out_channels (int): channels of the second conv. Default: 64.
        norm_cfg (dict): norm config. Default: BN.
        act_cfg (dict): activation config. Default: SiLU.
    """

    def __init__(self,
                 in_channels: int = 3,
                 mid_channels: int = 16,
                 out_channels: int = 64,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='SiLU'),
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        self.conv1, self.conv2 = self._convs(in_channels, mid_channels,
                                             out_channels, norm_cfg, act_cfg)

    @staticmethod
    def _convs(in_channels, mid_channels, out_channels, norm_cfg, act_cfg):
        return (ConvModule(in_channels, mid_channels, 3, stride=2, padding=1,
                           norm_cfg=norm_cfg, act_cfg=act_cfg),
                ConvModule(mid_channels, out_channels, 3, stride=2, padding=1,
                           norm_cfg=norm_cfg, act_cfg=act_cfg))

    def forward(self, x: Tensor) -> Tensor:
        return conv_chain(x, self.conv1, self.conv2)


@MODELS.register_module()
class InvertedResidual(BaseModule):
    """Inverted residual bottleneck (IRB, Fig. 1c).

    1x1 conv expanding C to E*C channels, KxK depthwise conv, 1x1 conv back
    to C, each followed by a norm; activations after the first two; an
    identity shortcut around the whole.

    Args:
        channels (int): input and output channels C.
        expand_ratio (float): expansion E. Default: 4.
        kernel_size (int): depthwise kernel K (odd). Default: 3.
        norm_cfg (dict): norm config. Default: BN.
        act_cfg (dict): activation config. Default: SiLU.
        drop_path_rate (float): stochastic depth on the residual branch.
            Default: 0.
    """

    def __init__(self,
                 channels: int,
                 expand_ratio: float = 4,
                 kernel_size: int = 3,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='SiLU'),
                 drop_path_rate: float = 0.,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if kernel_size % 2 != 1:
            raise ValueError(f'kernel_size must be odd, got {kernel_size}')
        hidden = int(round(channels * expand_ratio))
        self.expand, self.depthwise, self.project = self._convs(
            channels, hidden, kernel_size, norm_cfg, act_cfg)
        self.drop_path = (DropPath(drop_path_rate)
                          if drop_path_rate > 0 else nn.Identity())

    @staticmethod
    def _convs(channels, hidden, kernel_size, norm_cfg, act_cfg):
        return (ConvModule(channels, hidden, 1, norm_cfg=norm_cfg,
                           act_cfg=act_cfg),
                ConvModule(hidden, hidden, kernel_size,
                           padding=kernel_size // 2, groups=hidden,
                           conv_cfg=DEPTHWISE_CONV, norm_cfg=norm_cfg,
                           act_cfg=act_cfg),
                ConvModule(hidden, channels, 1, norm_cfg=norm_cfg,
                           act_cfg=None))

    def forward(self, x: Tensor) -> Tensor:
        y = conv_chain(x, self.expand, self.depthwise, self.project)
        return x + self.drop_path(y)


@MODELS.register_module()
class TwoBranchDownsample(BaseModule):
    """Two-branch downsampling block (TDB, Fig. 1d).

    A 3x3 stride-2 conv, plus a 2x2 average pool followed by a 1x1 conv,
    each followed by a norm, summed. Odd sizes round up in both branches
    (the pool's ``ceil_mode`` averages an overhanging window's real
    positions), so the output is ceil(H/2) x ceil(W/2).

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        norm_cfg (dict): norm config (after each branch's conv). Default: BN.
        act_cfg (dict, optional): unused here (the blocks of every variant
            take it). Default: None.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        self.conv_branch = ConvModule(in_channels, out_channels, 3, stride=2,
                                      padding=1, norm_cfg=norm_cfg,
                                      act_cfg=None)
        self.pool = nn.AvgPool2d(2, stride=2, ceil_mode=True,
                                 count_include_pad=False)
        self.pool_branch = ConvModule(in_channels, out_channels, 1,
                                      norm_cfg=norm_cfg, act_cfg=None)

    def forward(self, x: Tensor) -> Tensor:
        return (conv_chain(x, self.conv_branch) +
                conv_chain(self.pool(x), self.pool_branch))


class TransCNNBlock(BaseModule):
    """One H-MHSA followed by one IRB (a repeat of Table 1's bracket).

    Args:
        attn_cfg (dict): the attention, built from the registry (``type``:
            ``HMHSA`` or a variant of it).
        irb_cfg (dict): the inverted residual, likewise.
        with_cp (bool): recompute the block in backward to save memory.
            Default: False.
    """

    def __init__(self,
                 attn_cfg: dict,
                 irb_cfg: dict,
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        self.attn = MODELS.build(attn_cfg)
        self.irb = MODELS.build(irb_cfg)

    def _inner_forward(self, x: Tensor) -> Tensor:
        return self.irb(self.attn(x))

    def forward(self, x: Tensor) -> Tensor:
        if self.with_cp and x.requires_grad:
            return checkpoint(self._inner_forward, x, use_reentrant=False)
        return self._inner_forward(x)
