"""Convolutional building blocks of TransCNN (§3.3, Fig. 1c/1d).

All blocks take ``norm_cfg`` / ``act_cfg`` dicts (mmcv conventions) so that a
config can swap BN for SyncBN or SiLU for another activation.

Choices made for speed, none of which changes what is computed:

* Every conv + BN pair is built with mmcv's ``efficient_conv_bn_eval``:
  while the BN is in eval mode (inference, or training with ``norm_eval``)
  its affine map is folded into the conv weights on the fly, so the BN never
  runs as a separate pass over the feature map; gradients still reach the
  conv and BN parameters through the folding. A BN in train mode (batch
  statistics) runs as usual. The folded weights are values of each call,
  never written to the modules (:class:`.fastpath.ConvNormAct`), so
  threads can share one eval model.
* The stem switches the image to channels-last memory. The convs, pools and
  norms that follow keep that format, which is what the CPU (oneDNN) and
  CUDA kernels prefer, and the (B, C, H, W) <-> (B, H, W, C) permutes around
  H-MHSA become free views. Values and shapes are unchanged; the backbone
  returns its maps NCHW-contiguous unless ``out_memory_format`` says
  otherwise (see :class:`TransCNN`).
* The CPU shortcuts (oneDNN's fused conv + BN + activation at inference,
  the depthwise-conv backward in training) live in :mod:`.fastpath`, whose
  layers the blocks are built from; they compute what the plain layers do.
"""
import contextlib
import warnings
from typing import Iterator, Optional, Union

import torch
from mmcv.cnn import build_activation_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmtranscnn.registry import MODELS

from .fastpath import ConvNormAct, DepthwiseConv2d, add_residual
from .hmhsa import HMHSA

IRB_NORM_LAYOUTS = ('conv-norm', 'pre-post')
TDB_POOLS = ('avg', 'max', None)


@contextlib.contextmanager
def _bias_before_norm_allowed() -> Iterator[None]:
    """Silence mmcv's warning about a conv bias before a norm: the released
    networks have one (``bias=True``), and their weights need it."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', 'Unnecessary conv bias')
        yield


class ConvStem(BaseModule):
    """Stage 1: two 3x3 stride-2 convs (stride 4 in total).

    Args:
        in_channels (int): input image channels. Default: 3.
        mid_channels (int): channels of the first conv. Default: 16.
        out_channels (int): channels of the second conv. Default: 64.
        norm_cfg (dict): norm config. Default: BN.
        act_cfg (dict): activation config. Default: SiLU.
        bias (bool | str): conv biases, ConvModule's convention ('auto':
            none before a norm). The released networks keep a bias before
            the norm too (True). Default: 'auto'.
        last_norm_act (bool): norm and activation after the second conv
            too (our reading of §3.3: two alike "3x3 conv" layers). The
            released networks end the stem with the bare conv (False).
            Default: True.
    """

    def __init__(self,
                 in_channels: int = 3,
                 mid_channels: int = 16,
                 out_channels: int = 64,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='SiLU'),
                 bias: Union[bool, str] = 'auto',
                 last_norm_act: bool = True,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        common = dict(kernel_size=3, stride=2, padding=1, bias=bias,
                      efficient_conv_bn_eval=True)
        with _bias_before_norm_allowed():
            self.conv1 = ConvNormAct(in_channels, mid_channels,
                                     norm_cfg=norm_cfg, act_cfg=act_cfg,
                                     **common)
        self.conv2 = ConvNormAct(
            mid_channels, out_channels,
            norm_cfg=norm_cfg if last_norm_act else None,
            act_cfg=act_cfg if last_norm_act else None, **common)

    def forward(self, x: Tensor) -> Tensor:
        # Channels-last from here on (see the module docstring); copying the
        # 3-channel image is the cheapest place to switch.
        x = x.contiguous(memory_format=torch.channels_last)
        return self.conv2(self.conv1(x))


@MODELS.register_module()
class InvertedResidual(BaseModule):
    """Inverted residual bottleneck (IRB, Fig. 1c).

    1x1 conv expanding C to E*C channels, KxK depthwise conv, 1x1 conv back
    to C; activations after the first two; an identity shortcut around the
    whole. Where the norms sit is ``norm_layout``:

    * ``'conv-norm'``: a norm after each of the three convs (Fig. 1c; also
      the first released version, ``TransCNN.py``);
    * ``'pre-post'``: a norm on the block input before the expansion, none
      after the depthwise conv, one after the projection (the journal
      version, ``HAT_Net.py``).

    Args:
        channels (int): input and output channels C.
        expand_ratio (float): expansion E. Default: 4.
        kernel_size (int): depthwise kernel K (odd). Default: 3.
        norm_cfg (dict): norm config. Default: BN.
        act_cfg (dict): activation config. Default: SiLU.
        drop_path_rate (float): stochastic depth on the residual branch.
        norm_layout (str): ``'conv-norm'`` or ``'pre-post'``.
            Default: 'conv-norm'.
    """

    def __init__(self,
                 channels: int,
                 expand_ratio: float = 4,
                 kernel_size: int = 3,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='SiLU'),
                 drop_path_rate: float = 0.,
                 norm_layout: str = 'conv-norm',
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if kernel_size % 2 != 1:
            raise ValueError(f'kernel_size must be odd, got {kernel_size}')
        if norm_layout not in IRB_NORM_LAYOUTS:
            raise ValueError(f'norm_layout must be one of {IRB_NORM_LAYOUTS}'
                             f', got {norm_layout!r}')
        hidden = int(round(channels * expand_ratio))
        self.norm_layout = norm_layout
        fold = dict(efficient_conv_bn_eval=True)
        depthwise = dict(padding=kernel_size // 2, groups=hidden,
                         conv_cfg=dict(type=DepthwiseConv2d))
        if norm_layout == 'conv-norm':
            self.expand = ConvNormAct(channels, hidden, 1, norm_cfg=norm_cfg,
                                      act_cfg=act_cfg, **fold)
            self.depthwise = ConvNormAct(hidden, hidden, kernel_size,
                                         norm_cfg=norm_cfg, act_cfg=act_cfg,
                                         **depthwise, **fold)
        else:
            # The norm runs on the input, before the conv (nothing to fold;
            # ConvNormAct then runs its plain path).
            self.expand = ConvNormAct(channels, hidden, 1, norm_cfg=norm_cfg,
                                      act_cfg=act_cfg,
                                      order=('norm', 'conv', 'act'))
            self.depthwise = ConvNormAct(hidden, hidden, kernel_size,
                                         bias=False, norm_cfg=None,
                                         act_cfg=act_cfg, **depthwise)
        self.project = ConvNormAct(hidden, channels, 1, norm_cfg=norm_cfg,
                                   act_cfg=None, **fold)
        self.drop_path = (DropPath(drop_path_rate)
                          if drop_path_rate > 0 else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return add_residual(x, self.drop_path(y))


@MODELS.register_module()
class TwoBranchDownsample(BaseModule):
    """Two-branch downsampling block (TDB, Fig. 1d).

    A 3x3 stride-2 conv, plus a 2x2 pool followed by a 1x1 conv, each
    followed by a norm, summed. Odd sizes round up in both branches
    (``ceil_mode``: an overhanging window pools its real positions only), so
    the output is ceil(H/2) x ceil(W/2) like the strided conv's.

    The released networks differ: ``TransCNN.py`` pools with a max and
    applies an activation to the sum (``pool='max'``,
    ``act_cfg=dict(type='SiLU')``); ``HAT_Net.py`` has the conv branch only
    (``pool=None``, the "direct downsampling" of §4.2). Both keep the conv
    biases before the norms (``bias=True``).

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        norm_cfg (dict): norm config (after each branch's conv). Default: BN.
        pool (str | None): the second branch's pool, ``'avg'`` or ``'max'``,
            or None for no second branch. Default: 'avg'.
        act_cfg (dict, optional): activation after the sum. Default: None.
        bias (bool | str): conv biases, ConvModule's convention.
            Default: 'auto' (none before a norm).
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 norm_cfg: dict = dict(type='BN'),
                 pool: Optional[str] = 'avg',
                 act_cfg: Optional[dict] = None,
                 bias: Union[bool, str] = 'auto',
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if pool not in TDB_POOLS:
            raise ValueError(f'pool must be one of {TDB_POOLS}, got {pool!r}')
        common = dict(norm_cfg=norm_cfg, act_cfg=None, bias=bias,
                      efficient_conv_bn_eval=True)
        with _bias_before_norm_allowed():
            self.conv_branch = ConvNormAct(in_channels, out_channels, 3,
                                           stride=2, padding=1, **common)
        self.pool = self.pool_branch = None
        if pool is not None:
            pool_layer = nn.AvgPool2d if pool == 'avg' else nn.MaxPool2d
            self.pool = pool_layer(2, stride=2, ceil_mode=True)
            with _bias_before_norm_allowed():
                self.pool_branch = ConvNormAct(in_channels, out_channels, 1,
                                               **common)
        self.act = build_activation_layer(act_cfg) if act_cfg else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_branch(x)
        if self.pool is not None:
            out = out + self.pool_branch(self.pool(x))
        return out if self.act is None else self.act(out)


class TransCNNBlock(BaseModule):
    """One H-MHSA followed by one IRB (a repeat of Table 1's bracket).

    Args:
        channels (int): channels C.
        grid_sizes: per-level grid sizes of the H-MHSA (see :class:`HMHSA`).
        kernel_size (int): IRB depthwise kernel K.
        expand_ratio (float): IRB expansion E.
        head_dim (int): channels per attention head.
        query_from (str): H-MHSA query form ('full' or 'merged').
        norm_cfg (dict): norm config (H-MHSA pre-norm and IRB norms).
        act_cfg (dict): activation config of the IRB.
        drop_path_rate (float): stochastic depth of both residual branches.
        with_cp (bool): recompute the block in backward to save memory.
        attn_options (dict, optional): further :class:`HMHSA` arguments
            (``pool_ratios``, ``pool_mode``, ``level0_shortcut``,
            ``grid_norm_cfg``, ``ds_norm_cfg``, ``output_sum``,
            ``unused_proj_norm_cfg``). Default: None (HMHSA's defaults).
        irb_norm_layout (str): the IRB's ``norm_layout``.
            Default: 'conv-norm'.
    """

    def __init__(self,
                 channels: int,
                 grid_sizes,
                 kernel_size: int,
                 expand_ratio: float,
                 head_dim: int = 64,
                 query_from: str = 'full',
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='SiLU'),
                 drop_path_rate: float = 0.,
                 with_cp: bool = False,
                 attn_options: Optional[dict] = None,
                 irb_norm_layout: str = 'conv-norm',
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        self.attn = HMHSA(channels, grid_sizes=grid_sizes, head_dim=head_dim,
                          query_from=query_from, norm_cfg=norm_cfg,
                          drop_path_rate=drop_path_rate,
                          **(attn_options or {}))
        self.irb = InvertedResidual(channels, expand_ratio, kernel_size,
                                    norm_cfg=norm_cfg, act_cfg=act_cfg,
                                    drop_path_rate=drop_path_rate,
                                    norm_layout=irb_norm_layout)

    def _inner_forward(self, x: Tensor) -> Tensor:
        return self.irb(self.attn(x))

    def forward(self, x: Tensor) -> Tensor:
        if self.with_cp and x.requires_grad:
            from torch.utils.checkpoint import checkpoint
            return checkpoint(self._inner_forward, x, use_reentrant=False)
        return self._inner_forward(x)
