"""CPU training speed-ups, applied to a built model from outside the model
files (as mmcv's ``fuse_conv_bn`` is); they change how a layer is computed,
never what. ``tools/train.py`` applies :func:`speed_up_cpu_training` to CPU
runs (unless ``--no-cpu-speedups``): stride-1 depthwise convs with kernels
above 3 get a backward of oneDNN's fast kernels (:class:`DepthwiseConv2d`),
and H-MHSA attends over grids of at most :data:`MATMUL_MAX_KEYS` keys with
plain matmuls, cheaper there than SDPA's fused kernel (a fixed rule by
shape, the same in every process and rank). docs/cpu_performance.md says
what each saves.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from mmengine.runner import Runner
from torch import Tensor, nn

from mmtranscnn.models.hmhsa import HMHSA


#: Grids with at most this many keys (8 x 8) attend through plain matmuls.
MATMUL_MAX_KEYS = 64


def matmul_attention(q: Tensor, k: Tensor, v: Tensor,
                     attn_mask: Optional[Tensor] = None) -> Tensor:
    """``softmax(q k^T / sqrt(d) + mask) v`` with plain matmuls, the
    function SDPA computes (a boolean mask marks the keys that may be
    seen; the softmax runs in float32, as SDPA's CPU kernel's does)."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1]**-0.5
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float('-inf'))
    weights = scores.softmax(-1, dtype=torch.float32).to(v.dtype)
    return torch.matmul(weights, v)


def small_grid_attention(q: Tensor, k: Tensor, v: Tensor,
                         attn_mask: Optional[Tensor] = None,
                         dropout_p: float = 0.) -> Tensor:
    """SDPA's signature: :func:`matmul_attention` for at most
    :data:`MATMUL_MAX_KEYS` keys without dropout, else SDPA itself."""
    if dropout_p == 0. and k.shape[-2] <= MATMUL_MAX_KEYS:
        return matmul_attention(q, k, v, attn_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                          dropout_p=dropout_p)


def depthwise_weight_grad(x: Tensor, grad_out: Tensor, k: int) -> Tensor:
    """Weight gradient of a stride-1, 'same'-padded k x k depthwise conv.

    ``dW[c, 0, a, b] = sum_{n,y,x} grad_out[n,c,y,x] * xp[n,c,y+a,x+b]``
    with ``xp`` = x zero-padded by k // 2. Each 3 x 3 block of offsets
    from (s, t) is the weight gradient of a 3 x 3 depthwise conv (oneDNN's
    fast kernel) on the window of ``xp`` at (s, t); overlapping tiles
    (k=5: starts 0 and 2) write the same values twice. The windows are
    read in place: the padded images are stacked row after row in one
    channels-last buffer, each window read from its offset on as an image
    of full padded rows. What it reads beyond its own pixels (the columns
    that run on into the next row, the rows between images) meets zeros of
    ``grad_out`` widened to match, so it adds nothing.

    Args:
        x: (N, C, H, W) conv input.
        grad_out: (N, C, H, W) gradient of the conv output.
        k: odd kernel size >= 3.

    Returns:
        (C, 1, k, k) weight gradient.
    """
    n, c, h, w = x.shape
    p = k // 2
    rows, cols = h + 2 * p, w + 2 * p  # one padded image
    # The images stacked, (N * rows, cols, C), plus one zero row that the
    # last windows run into; only the borders are zero-filled.
    buf = x.new_empty((n * rows + 1, cols, c))
    images = buf[:n * rows].view(n, rows, cols, c)
    images[:, p:p + h, p:p + w] = x.permute(0, 2, 3, 1)
    for border in (images[:, :p], images[:, p + h:], images[:, p:p + h, :p],
                   images[:, p:p + h, p + w:], buf[n * rows:]):
        border.zero_()
    # grad_out on the same grid: output row i * rows + y is image i's row
    # y; the rows and columns beyond each image are zero.
    out_rows = (n - 1) * rows + h
    grad = x.new_empty((n * rows, cols - 2, c))
    grads = grad.view(n, rows, cols - 2, c)
    grads[:, :h, :w] = grad_out.permute(0, 2, 3, 1)
    grads[:, h:].zero_()
    grads[:, :h, w:].zero_()
    grad = grad[:out_rows].unsqueeze(0).permute(0, 3, 1, 2)
    result = x.new_empty((c, 1, k, k))
    starts = sorted(set(range(0, k - 2, 3)) | {k - 3})  # 3-wide tiles
    for s in starts:
        for t in starts:
            window = buf.as_strided(
                (1, c, out_rows + 2, cols), (buf.numel(), 1, cols * c, c),
                buf.storage_offset() + (s * cols + t) * c)
            result[:, :, s:s + 3, t:t + 3] = torch.nn.grad.conv2d_weight(
                window, (c, 1, 3, 3), grad, groups=c)
    return result


class _DepthwiseConvFn(torch.autograd.Function):
    """Depthwise conv whose backward uses oneDNN's fast kernels only."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
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
            # several times faster than its backward-data path here.
            grad_x = F.conv2d(grad_out, weight.flip((2, 3)),
                              padding=ctx.padding, groups=c)
        if ctx.needs_input_grad[1]:
            grad_w = depthwise_weight_grad(x, grad_out, k)
        if ctx.needs_input_grad[2]:  # False for bias=None
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


class DepthwiseConv2d(nn.Conv2d):
    """A stride-1 'same' depthwise ``nn.Conv2d`` whose CPU backward runs
    :class:`_DepthwiseConvFn` (same parameters, state dict and forward)."""

    @staticmethod
    def qualifies(module: nn.Module) -> bool:
        """Whether ``module`` is a conv this backward is written for."""
        if type(module) is not nn.Conv2d:
            return False
        k = module.kernel_size
        return (module.groups == module.in_channels == module.out_channels
                and k[0] == k[1] and k[0] > 3 and k[0] % 2 == 1
                and module.stride == (1, 1) and module.dilation == (1, 1)
                and module.padding == (k[0] // 2, k[0] // 2)
                and module.padding_mode == 'zeros')

    def _conv_forward(self, x: Tensor, weight: Tensor,
                      bias: Optional[Tensor]) -> Tensor:
        if x.device.type != 'cpu' or not torch.is_grad_enabled() or not (
                x.requires_grad or weight.requires_grad):
            return super()._conv_forward(x, weight, bias)
        if not torch.is_autocast_enabled('cpu'):
            return _DepthwiseConvFn.apply(x, weight, bias, self.padding)
        # Under autocast the plain conv runs in autocast's dtype; so does
        # this one. The casts stay on the tape, so float32 parameters get
        # their gradients through them, as from the plain op.
        low = torch.get_autocast_dtype('cpu')
        x, weight = x.to(low), weight.to(low)
        bias = None if bias is None else bias.to(low)
        with torch.autocast('cpu', enabled=False):
            return _DepthwiseConvFn.apply(x, weight, bias, self.padding)


def speed_up_cpu_training(model: nn.Module) -> Dict[str, int]:
    """Apply the training speed-ups to ``model`` in place (parameters,
    state dict and results stay as they are); returns how many depthwise
    convs and H-MHSA modules were changed.

    Args:
        model: a built model (a TransCNN backbone, or a model holding one).
    """
    counts = dict(depthwise_convs=0, attention=0)
    for module in model.modules():
        if DepthwiseConv2d.qualifies(module):
            module.__class__ = DepthwiseConv2d
            counts['depthwise_convs'] += 1
        elif isinstance(module, HMHSA):
            module.attention = small_grid_attention
            counts['attention'] += 1
    return counts


class CPUTrainingRunner(Runner):
    """A ``Runner`` that applies :func:`speed_up_cpu_training` to the model
    it builds, before wrapping it (``tools/train.py`` without CUDA)."""

    def build_model(self, model):
        model = super().build_model(model)
        speed_up_cpu_training(model)
        return model

