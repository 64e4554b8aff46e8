"""A depthwise conv whose CPU backward is fast for kernels above 3x3.

oneDNN computes the weight gradient of a 5x5 depthwise conv ten times
slower than the forward (343 ms against 30 ms for 256 x 200 x 336 on a
Zen 4 CPU, where a 3x3 one costs about what its forward does). The IRBs of
stages 1 and 3 have such convs, and their backward took a third of a
TransCNN-Base training step at 800x1344. :class:`DepthwiseConv2d` is an
``nn.Conv2d`` (same parameters, state dict and forward); on the CPU, when a
gradient is wanted from a stride-1 'same' depthwise conv with a kernel above
3, its backward is built from oneDNN's fast kernels instead. Everywhere
else (GPUs, inference, tracing, export, ``torch.compile``, other convs) it
is the plain ``nn.Conv2d``.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmtranscnn.utils.tracing import is_traced


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
            # of grad_out with the kernel flipped (oneDNN's forward kernel).
            grad_x = F.conv2d(grad_out, weight.flip((2, 3)),
                              padding=ctx.padding, groups=c)
        if ctx.needs_input_grad[1]:
            grad_w = depthwise_weight_grad(x, grad_out, k)
        if ctx.needs_input_grad[2]:  # False for bias=None
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose CPU backward runs :class:`_DepthwiseConvFn` when
    it is a stride-1 'same' depthwise conv with an odd kernel above 3 (same
    parameters, state dict and forward; the plain conv otherwise).

    The arguments are ``nn.Conv2d``'s; mmcv's ``ConvModule`` builds it from
    ``conv_cfg=dict(type=DepthwiseConv2d)``.
    """

    def fast_backward(self) -> bool:
        """Whether this conv's settings are those the backward is for."""
        k = self.kernel_size
        return (self.groups == self.in_channels == self.out_channels
                and k[0] == k[1] and k[0] > 3 and k[0] % 2 == 1
                and self.stride == (1, 1) and self.dilation == (1, 1)
                and self.padding == (k[0] // 2, k[0] // 2)
                and self.padding_mode == 'zeros')

    def _conv_forward(self, x: Tensor, weight: Tensor,
                      bias: Optional[Tensor]) -> Tensor:
        return self.conv2d(x, weight, bias)

    def conv2d(self, x: Tensor, weight: Tensor,
               bias: Optional[Tensor]) -> Tensor:
        """This conv of ``x`` with other ``weight`` and ``bias`` (a BN
        folded into them), through the same kernels as ``forward``."""
        if (x.device.type != 'cpu' or not torch.is_grad_enabled()
                or not (x.requires_grad or weight.requires_grad)
                or is_traced() or not self.fast_backward()):
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


__all__ = ['DepthwiseConv2d', 'depthwise_weight_grad']
