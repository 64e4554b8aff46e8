"""Convolutional building blocks of TransCNN (§3.3, Fig. 1c/1d).

All blocks take ``norm_cfg`` / ``act_cfg`` dicts (mmcv conventions) so that a
config can swap BN for SyncBN or SiLU for another activation.

Two choices made for speed, neither of which changes what is computed:

* Every conv + BN pair is built with mmcv's ``efficient_conv_bn_eval``:
  while the BN is in eval mode (inference, or training with ``norm_eval``)
  its affine map is folded into the conv weights on the fly, so the BN never
  runs as a separate pass over the feature map; gradients still reach the
  conv and BN parameters through the folding. A BN in train mode (batch
  statistics) runs as usual.
* The stem switches the image to channels-last memory. The convs, pools and
  norms that follow keep that format, which is what the CPU (oneDNN) and
  CUDA kernels prefer, and the (B, C, H, W) <-> (B, H, W, C) permutes around
  H-MHSA become free views. Values and shapes are unchanged; the feature
  maps the backbone returns are channels-last tensors.
* On the CPU, the backward of a depthwise conv with a kernel larger than
  3x3 avoids oneDNN's slow paths (:class:`DepthwiseConv2d`): the input
  gradient is a forward conv with the flipped kernel and the weight
  gradient is assembled from 3x3 pieces (oneDNN has a fast 3x3 kernel
  only). Its 5x5 backward was the slowest part of a training step.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmtranscnn.registry import MODELS

from . import onednn
from .hmhsa import HMHSA


def _tile_starts(k: int) -> Tuple[int, ...]:
    """Starts of the 3-wide tiles that cover kernel offsets 0 .. k-1."""
    return tuple(sorted(set(range(0, k - 2, 3)) | {k - 3}))


def depthwise_weight_grad(x: Tensor, grad_out: Tensor, k: int) -> Tensor:
    """Weight gradient of a stride-1, 'same'-padded k x k depthwise conv.

    ``dW[c, 0, a, b] = sum_{n,y,x} grad_out[n,c,y,x] * xp[n,c,y+a,x+b]``
    with ``xp`` = x zero-padded by k // 2. Each 3 x 3 block of offsets
    ``(s..s+2, t..t+2)`` is the weight gradient of a 3 x 3 depthwise conv
    (no padding) on the window of ``xp`` that starts at (s, t), which
    oneDNN computes with its fast 3 x 3 kernel; overlapping tiles (k=5:
    starts 0 and 2) write the same values twice.

    Args:
        x: (N, C, H, W) conv input.
        grad_out: (N, C, H, W) gradient of the conv output.
        k: odd kernel size >= 3.

    Returns:
        (C, 1, k, k) weight gradient.
    """
    n, c, h, w = x.shape
    p = k // 2
    xp = F.pad(x, (p, p, p, p))
    grad = x.new_empty((c, 1, k, k))
    starts = _tile_starts(k)
    for s in starts:
        for t in starts:
            grad[:, :, s:s + 3, t:t + 3] = torch.nn.grad.conv2d_weight(
                xp[:, :, s:s + h + 2, t:t + w + 2], (c, 1, 3, 3), grad_out,
                groups=c)
    return grad


class _DepthwiseConvFn(torch.autograd.Function):
    """Depthwise conv whose backward uses oneDNN's fast kernels only: the
    forward kernel for the input gradient, :func:`depthwise_weight_grad`
    for the weight gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=padding,
                        groups=weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        c, k = weight.shape[0], weight.shape[-1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # The input gradient of a stride-1 'same' conv is the same conv
            # of grad_out with the kernel flipped: oneDNN's forward kernel,
            # several times faster here than its backward-data path.
            grad_x = F.conv2d(grad_out, weight.flip((2, 3)),
                              padding=ctx.padding, groups=c)
        if ctx.needs_input_grad[1]:
            grad_w = depthwise_weight_grad(x, grad_out, k)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state dict) with a faster weight
    gradient for stride-1 depthwise convs with k > 3 on the CPU.

    The custom backward is used only where it applies and is needed: CPU
    tensors, gradients enabled, no autocast, not while tracing (so FLOP
    counters see a plain convolution); everything else is ``nn.Conv2d``.
    """

    def _fast_backward_applies(self, x: Tensor, weight: Tensor) -> bool:
        k = self.kernel_size
        return (x.device.type == 'cpu' and torch.is_grad_enabled()
                and (x.requires_grad or weight.requires_grad)
                and not torch.jit.is_tracing()
                and not torch.is_autocast_enabled('cpu')
                and self.groups == self.in_channels == self.out_channels
                and k[0] == k[1] and k[0] > 3 and k[0] % 2 == 1
                and self.stride == (1, 1) and self.dilation == (1, 1)
                and self.padding == (k[0] // 2, k[0] // 2)
                and self.padding_mode == 'zeros')

    def _conv_forward(self, x: Tensor, weight: Tensor,
                      bias: Optional[Tensor]) -> Tensor:
        # ConvModule's eval-time BN folding also calls this with folded
        # weights, so both paths get the fast backward.
        if self._fast_backward_applies(x, weight):
            return _DepthwiseConvFn.apply(x, weight, bias, self.padding)
        return super()._conv_forward(x, weight, bias)


def _mkldnn_pointwise_conv():
    """oneDNN's fused conv + post-op kernel, or None where torch lacks it."""
    return onednn.kernel('_convolution_pointwise')


_FUSED_ACTS = {nn.SiLU: 'swish', nn.ReLU: 'relu', nn.GELU: 'gelu'}


def _fused_act_name(module: ConvModule) -> Optional[str]:
    """oneDNN's name of ``module``'s activation, 'none' for no activation,
    None if it has one that oneDNN does not fuse."""
    if not module.with_activation:
        return 'none'
    act = module.activate
    if isinstance(act, nn.GELU) and act.approximate != 'none':
        return None
    return _FUSED_ACTS.get(type(act))


def conv_bn_act(module: ConvModule, x: Tensor) -> Tensor:
    """``module(x)`` for a conv-norm(-act) ConvModule, in one oneDNN call on
    the CPU at inference.

    At inference the eval-mode BN is an affine map that folds into the conv
    weights, and oneDNN applies the activation as a post-op while the
    output is still in cache: the map is written once instead of three
    times (conv, norm, activation). The fused kernel is what torch.compile
    emits for the same pattern; eager PyTorch does not call it by itself.
    It is used only where it computes the same function: CPU float32
    channels-last input, no autograd, no autocast, not while tracing (FLOP
    counters see the plain ops), a BatchNorm in eval mode, the module's
    eval-time folding switched on (``efficient_conv_bn_eval``, so switching
    it off gives the plain path) and an activation oneDNN fuses. Anything
    else runs ``module(x)``.

    Args:
        module: a ConvModule in ``('conv', 'norm', 'act')`` order.
        x: its input.
    """
    fused = _mkldnn_pointwise_conv()
    norm = module.norm if module.with_norm else None
    conv = module.conv
    act = _fused_act_name(module)
    if (fused is None or not onednn.applies(x)
            or not x.is_contiguous(memory_format=torch.channels_last)
            or act is None
            or module.order != ('conv', 'norm', 'act')
            or getattr(module, 'efficient_conv_bn_eval_forward', None) is None
            or not isinstance(norm, nn.modules.batchnorm._BatchNorm)
            or norm.training or not norm.track_running_stats
            or conv.padding_mode != 'zeros' or isinstance(conv.padding, str)):
        return module(x)
    scale = norm.running_var.add(norm.eps).rsqrt()
    if norm.affine:
        scale = scale * norm.weight
    weight = (conv.weight * scale.view(-1, 1, 1, 1)).contiguous(
        memory_format=torch.channels_last)
    bias = -norm.running_mean if conv.bias is None else \
        conv.bias - norm.running_mean
    bias = bias * scale
    if norm.affine:
        bias = bias + norm.bias
    return fused(x, weight, bias, list(conv.padding), list(conv.stride),
                 list(conv.dilation), conv.groups, act, [], '')


class ConvStem(BaseModule):
    """Stage 1: two 3x3 stride-2 convs (stride 4 in total).

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
        common = dict(kernel_size=3, stride=2, padding=1, norm_cfg=norm_cfg,
                      act_cfg=act_cfg, efficient_conv_bn_eval=True)
        self.conv1 = ConvModule(in_channels, mid_channels, **common)
        self.conv2 = ConvModule(mid_channels, out_channels, **common)

    def forward(self, x: Tensor) -> Tensor:
        # Channels-last from here on (see the module docstring); copying the
        # 3-channel image is the cheapest place to switch.
        x = x.contiguous(memory_format=torch.channels_last)
        return conv_bn_act(self.conv2, conv_bn_act(self.conv1, x))


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
        fold = dict(efficient_conv_bn_eval=True)
        self.expand = ConvModule(channels, hidden, 1, norm_cfg=norm_cfg,
                                 act_cfg=act_cfg, **fold)
        self.depthwise = ConvModule(hidden, hidden, kernel_size,
                                    padding=kernel_size // 2, groups=hidden,
                                    conv_cfg=dict(type=DepthwiseConv2d),
                                    norm_cfg=norm_cfg, act_cfg=act_cfg,
                                    **fold)
        self.project = ConvModule(hidden, channels, 1, norm_cfg=norm_cfg,
                                  act_cfg=None, **fold)
        self.drop_path = (DropPath(drop_path_rate)
                          if drop_path_rate > 0 else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        y = conv_bn_act(self.depthwise, conv_bn_act(self.expand, x))
        return onednn.add_residual(
            x, self.drop_path(conv_bn_act(self.project, y)))


@MODELS.register_module()
class TwoBranchDownsample(BaseModule):
    """Two-branch downsampling block (TDB, Fig. 1d).

    A 3x3 stride-2 conv, plus a 2x2 average pool followed by a 1x1 conv,
    summed. Odd sizes round up in both branches (``ceil_mode``), so the
    output is ceil(H/2) x ceil(W/2) like the strided conv's.

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        norm_cfg (dict): norm config (after each branch's conv). Default: BN.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 norm_cfg: dict = dict(type='BN'),
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        fold = dict(efficient_conv_bn_eval=True)
        self.conv_branch = ConvModule(in_channels, out_channels, 3, stride=2,
                                      padding=1, norm_cfg=norm_cfg,
                                      act_cfg=None, **fold)
        self.pool = nn.AvgPool2d(2, stride=2, ceil_mode=True)
        self.pool_branch = ConvModule(in_channels, out_channels, 1,
                                      norm_cfg=norm_cfg, act_cfg=None, **fold)

    def forward(self, x: Tensor) -> Tensor:
        return (conv_bn_act(self.conv_branch, x) +
                conv_bn_act(self.pool_branch, self.pool(x)))


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
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        self.attn = HMHSA(channels, grid_sizes=grid_sizes, head_dim=head_dim,
                          query_from=query_from, norm_cfg=norm_cfg,
                          drop_path_rate=drop_path_rate)
        self.irb = InvertedResidual(channels, expand_ratio, kernel_size,
                                    norm_cfg=norm_cfg, act_cfg=act_cfg,
                                    drop_path_rate=drop_path_rate)

    def _inner_forward(self, x: Tensor) -> Tensor:
        return self.irb(self.attn(x))

    def forward(self, x: Tensor) -> Tensor:
        if self.with_cp and x.requires_grad:
            from torch.utils.checkpoint import checkpoint
            return checkpoint(self._inner_forward, x, use_reentrant=False)
        return self._inner_forward(x)
