"""How the backbone keeps its maps: layout, what backward keeps, and how
many passes inference makes. None of it changes what the model computes
(a folded BN up to rounding).

* **Layout** (:data:`MAP_LAYOUT`). H-MHSA works on (B, H, W, C) tokens, so
  maps and conv weights are channels-last from the stem on: the permutes
  around the attention are free views, and NHWC is what oneDNN and cuDNN
  convs prefer. Necks get NCHW maps (:func:`to_nchw`) and send their
  gradients back channels-last.
* **Memory** (:func:`conv_chain`). Autograd keeps three maps per
  conv-norm-activation: the conv's, the norm's and the activation's input.
  In training a chain keeps only each dense conv's output; the norms,
  activations and depthwise convs after it (k*k multiply-adds per output,
  against C for a dense 1x1 conv) run again from it in backward. Batch
  statistics are recomputed from the same maps; running statistics move
  once, in forward. An IRB keeps its input, its expansion's output and its
  projection's output, where autograd keeps six expanded maps.
* **Passes.** A BN normalising by running statistics (eval mode, or
  frozen by ``norm_eval``) is a per-channel affine map, so conv then BN
  runs as one conv with the BN folded into its weights on the fly (modules
  and state dict unchanged). In training the folded weights are
  differentiable, so gradients reach the conv's and the BN's parameters,
  and the BN keeps no map for backward.
"""
import contextlib
from functools import partial
from typing import Callable, List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm

from mmtranscnn.utils.tracing import is_traced

#: The memory format of the backbone's maps and conv weights.
MAP_LAYOUT = torch.channels_last

#: Activations that draw random numbers in training: recomputing them would
#: not give the same map, so a chain holding one runs as plain modules.
RANDOM_LAYERS = (nn.RReLU, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)


def to_map_layout(x: Tensor) -> Tensor:
    """``x`` (B, C, H, W) in :data:`MAP_LAYOUT` (a no-op when it is)."""
    return x.contiguous(memory_format=MAP_LAYOUT)


class _ToNCHW(torch.autograd.Function):
    """NCHW-contiguous copy whose gradient goes back in :data:`MAP_LAYOUT`:
    a neck's NCHW gradient would otherwise run through the backbone's
    backward in another layout than its maps, on mixed-layout kernels (a
    BN backward ran 3x slower so, 1536x50x84 on the CPU)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous(memory_format=MAP_LAYOUT)


def to_nchw(x: Tensor) -> Tensor:
    """A backbone map as necks and heads expect it: NCHW-contiguous; in
    training its gradient comes back channels-last."""
    if torch.is_grad_enabled() and x.requires_grad and not is_traced():
        return _ToNCHW.apply(x)
    return x.contiguous()


def use_map_layout(module: nn.Module) -> nn.Module:
    """Put the conv weights of ``module`` in :data:`MAP_LAYOUT`, so that
    convs keep maps in it. Loading a state dict later keeps the layout
    (parameters are copied into)."""
    return module.to(memory_format=MAP_LAYOUT)


# -- conv chains ----------------------------------------------------------
def _layers(module: ConvModule) -> Optional[List[nn.Module]]:
    """The conv, norm and activation of a ``ConvModule`` in the order it
    applies them, or None where it does more than that."""
    if type(module) is not ConvModule or module.with_explicit_padding:
        return None
    layers = []
    for name in module.order:
        if name == 'conv':
            layers.append(module.conv)
        elif name == 'norm' and module.with_norm:
            layers.append(module.norm)
        elif name == 'act' and module.with_activation:
            layers.append(module.activate)
    return layers


def _syncs_statistics(norm: nn.Module) -> bool:
    """Whether a SyncBN computes its statistics across processes now."""
    return (isinstance(norm, nn.SyncBatchNorm) and norm.training
            and torch.distributed.is_available()
            and torch.distributed.is_initialized())


def _recomputable(layer: nn.Module) -> bool:
    """Whether a norm or activation can be run again in backward and give
    the same map: BN (with statistics of this process), GroupNorm, and any
    activation that draws no random numbers and keeps no state."""
    if isinstance(layer, _BatchNorm):
        return not _syncs_statistics(layer)
    if isinstance(layer, nn.GroupNorm):
        return True
    return (not isinstance(layer, RANDOM_LAYERS)
            and next(layer.buffers(), None) is None)


class _Segment(NamedTuple):
    """Norms, activations and depthwise convs, then a conv (or none): one
    step of a chain whose input is the only map kept for backward."""
    pointwise: Sequence[nn.Module]
    conv: Optional[nn.Conv2d]
    params: Sequence[Tensor]


def _batch_statistics(norm: nn.Module) -> bool:
    """Whether a BN normalises by the batch's statistics (as its forward
    decides), rather than by its running ones."""
    return norm.training or (norm.running_mean is None
                             and norm.running_var is None)


def _norm_again(norm: nn.Module, x: Tensor, batch_stats: bool) -> Tensor:
    """What ``norm(x)`` computed in forward, as a differentiable function
    of ``x`` and the norm's weights that leaves the running statistics
    alone."""
    if isinstance(norm, _BatchNorm):
        mean, var = ((None, None) if batch_stats else
                     (norm.running_mean, norm.running_var))
        return F.batch_norm(x, mean, var, norm.weight, norm.bias,
                            batch_stats, 0., norm.eps)
    return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)


def _autocast_state(device_type: str):
    """(enabled, dtype) of autocast on ``device_type`` now."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return False, None
    except RuntimeError:  # a device autocast does not know ('meta')
        return False, None
    return True, torch.get_autocast_dtype(device_type)


def _applies_inplace(layer: nn.Module) -> bool:
    return bool(getattr(layer, 'inplace', False))


#: Activations that mmcv builds in place, as functions that write a new
#: tensor (``inplace=False``), with their settings.
_OUT_OF_PLACE = {
    nn.SiLU: lambda m: F.silu,
    nn.ReLU: lambda m: F.relu,
    nn.ReLU6: lambda m: F.relu6,
    nn.Hardswish: lambda m: F.hardswish,
    nn.Hardsigmoid: lambda m: F.hardsigmoid,
    nn.Mish: lambda m: F.mish,
    nn.LeakyReLU: lambda m: partial(F.leaky_relu,
                                    negative_slope=m.negative_slope),
    nn.ELU: lambda m: partial(F.elu, alpha=m.alpha),
}


def _new_tensor_fn(layer: nn.Module) -> Callable[[Tensor], Tensor]:
    """``layer`` as a function that never writes into its input: in
    backward, autograd would copy the input of an in-place activation to
    keep it; in forward, the segment's input must stay as it is. An
    in-place layer of another kind gets a copy of its input."""
    if not _applies_inplace(layer):
        return layer
    make = _OUT_OF_PLACE.get(type(layer))
    if make is not None:
        return make(layer)
    return lambda t: layer(t.clone())


class _RecomputedSegment(torch.autograd.Function):
    """A :class:`_Segment` that saves its input alone for backward.

    Forward runs the modules themselves (so a BN updates its running
    statistics once, as it would). Backward runs the norms, activations
    and depthwise convs again on the saved input, under the autocast state
    of the forward, and takes the last conv's gradients from its weights
    and that recomputed input, without running it again.
    """

    @staticmethod
    def forward(ctx, segment: _Segment, x: Tensor, *params: Tensor):
        ctx.segment = segment
        ctx.batch_stats = [
            _batch_statistics(m) if isinstance(m, _BatchNorm) else None
            for m in segment.pointwise
        ]
        ctx.autocast = _autocast_state(x.device.type)
        t = x
        for i, layer in enumerate(segment.pointwise):
            # (the input is kept: the first layer may not write into it)
            t = _new_tensor_fn(layer)(t) if i == 0 else layer(t)
        out = t if segment.conv is None else segment.conv(t)
        ctx.save_for_backward(x)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        segment = ctx.segment
        (x, ) = ctx.saved_tensors
        wanted = [p for p, need in zip(segment.params,
                                       ctx.needs_input_grad[2:]) if need]
        enabled, dtype = ctx.autocast
        # Backward runs outside the forward's autocast region: replay it.
        replay = (torch.autocast(x.device.type, dtype=dtype)
                  if enabled else contextlib.nullcontext())
        with torch.enable_grad(), replay:
            x_in = x.detach().requires_grad_(ctx.needs_input_grad[1])
            t = x_in
            for layer, batch_stats in zip(segment.pointwise, ctx.batch_stats):
                if isinstance(layer, (_BatchNorm, nn.GroupNorm)):
                    t = _norm_again(layer, t, batch_stats)
                else:
                    t = _new_tensor_fn(layer)(t)
            outputs, grads = _conv_backward(segment.conv, t, grad_out)
        inputs = ([x_in] if ctx.needs_input_grad[1] else []) + wanted
        if not inputs:
            return (None, ) * len(ctx.needs_input_grad)
        found = iter(torch.autograd.grad(outputs, inputs, grads,
                                         allow_unused=True))
        grad_x = next(found) if ctx.needs_input_grad[1] else None
        grad_params = [next(found) if need else None
                       for need in ctx.needs_input_grad[2:]]
        return (None, grad_x, *grad_params)


def _direct_conv(conv: nn.Module) -> bool:
    """Whether the conv's gradients can be taken from its weights and input
    by the convolution backward: a plain zero-padded ``nn.Conv2d``.
    (Other convs, such as a subclass with a backward of its own, run their
    forward again in backward.)"""
    return type(conv) is nn.Conv2d and _zero_padded(conv)


def _zero_padded(conv: nn.Conv2d) -> bool:
    return conv.padding_mode == 'zeros' and not isinstance(conv.padding, str)


def _computes_conv2d(conv: nn.Module) -> bool:
    """Whether ``conv`` computes ``F.conv2d`` of its weights: a plain
    zero-padded ``nn.Conv2d``, or a subclass with a kernel of its own that
    runs other weights too (``conv.conv2d(x, weight, bias)``, as the
    layers of ``mmtranscnn.ops`` do)."""
    return (type(conv) is nn.Conv2d or callable(
        getattr(conv, 'conv2d', None))) and _zero_padded(conv)


def _conv_backward(conv: Optional[nn.Module], t: Tensor, grad_out: Tensor):
    """The tensors to differentiate and their gradients, given the conv's
    recomputed input ``t`` (inside an ``enable_grad`` region)."""
    if conv is None:
        return [t], [grad_out]
    if isinstance(conv, _FoldedConvBN) and _direct_conv(conv.conv):
        weight, bias = conv.weight_and_bias()
        conv = conv.conv
    elif _direct_conv(conv):
        weight, bias = conv.weight, conv.bias
    else:
        return [conv(t)], [grad_out]
    # The dtype the forward conv ran in (autocast's, where it was on).
    dtype = grad_out.dtype
    t_c, w_c = t.to(dtype), weight.to(dtype)
    has_bias = bias is not None
    mask = [t_c.requires_grad, w_c.requires_grad,
            has_bias and bias.requires_grad]
    args = (conv.stride, conv.padding, conv.dilation, conv.groups)
    outputs, grads = [], []
    if mask[0]:
        outputs.append(t_c)
        grads.append(torch.nn.grad.conv2d_input(t_c.shape, w_c.detach(),
                                                grad_out, *args))
    if mask[1]:
        outputs.append(w_c)
        grads.append(torch.nn.grad.conv2d_weight(t_c.detach(), w_c.shape,
                                                 grad_out, *args))
    if mask[2]:
        outputs.append(bias)
        grads.append(grad_out.sum((0, 2, 3)).to(bias.dtype))
    return outputs, grads


def _depthwise(conv: nn.Module) -> bool:
    """Whether ``conv`` is depthwise: cheap to run again (k*k multiply-adds
    per output, against C for a dense 1x1 conv)."""
    return conv.groups == conv.in_channels == conv.out_channels


def _segments(layers: List[nn.Module]) -> List[tuple]:
    """Cut a flat list of convs, norms and activations into runs that end
    with a conv: ('plain', layer) for a layer autograd runs as it is,
    ('segment', steps, conv) for a recomputed one. A depthwise conv after
    a norm or activation joins the run it is in (it is run again in
    backward rather than its output kept)."""
    cut, pending = [], []
    for layer in layers:
        is_conv = isinstance(layer, (nn.Conv2d, _FoldedConvBN))
        if is_conv and pending and _depthwise(getattr(layer, 'conv', layer)):
            pending.append(layer)
        elif is_conv:
            if pending:
                cut.append(('segment', pending, layer))
            else:
                cut.append(('plain', layer))
            pending = []
        else:
            pending.append(layer)
    if len(pending) == 1 and not _applies_inplace(pending[0]) and \
            isinstance(pending[0], (_BatchNorm, nn.GroupNorm)):
        # A lone norm keeps its input, which is all a segment would keep.
        cut.append(('plain', pending[0]))
    elif pending:
        cut.append(('segment', pending, None))
    return cut


def _folds_into_conv(module: nn.Module) -> bool:
    """Whether ``module`` is a conv computing ``F.conv2d`` followed directly
    by a BN that normalises by its running statistics."""
    if type(module) is not ConvModule or module.with_explicit_padding \
            or not module.with_norm or not _computes_conv2d(module.conv):
        return False
    order = module.order
    norm = module.norm
    return (order.index('norm') == order.index('conv') + 1
            and isinstance(norm, _BatchNorm)
            and not _batch_statistics(norm))


class _FoldedConvBN:
    """A conv (see :func:`_computes_conv2d`) and the BN after it that
    normalises by its running statistics (``norm_eval``, frozen BN, or an
    eval-mode model), as one conv step of a chain: one conv pass, and
    nothing of the BN kept for backward. Gradients reach the conv's and
    the BN's parameters through the folded weights."""

    def __init__(self, conv: nn.Conv2d, norm: _BatchNorm):
        self.conv, self.norm = conv, norm

    def weight_and_bias(self):
        """The folded conv's weight and bias (differentiable)."""
        conv, norm = self.conv, self.norm
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        shift = -norm.running_mean * scale
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        if norm.bias is not None:
            shift = shift + norm.bias
        return conv.weight * scale.reshape(-1, 1, 1, 1), shift

    def parameters(self):
        yield from self.conv.parameters()
        yield from self.norm.parameters()

    def __call__(self, x: Tensor) -> Tensor:
        weight, bias = self.weight_and_bias()
        conv = self.conv
        if type(conv) is not nn.Conv2d:  # its own kernel (see above)
            return conv.conv2d(x, weight, bias)
        return F.conv2d(x, weight, bias, conv.stride, conv.padding,
                        conv.dilation, conv.groups)


def _run_folded(module: ConvModule, x: Tensor) -> Tensor:
    """``module(x)`` with its BN folded into the conv (see the module
    docstring)."""
    conv = _FoldedConvBN(module.conv, module.norm)
    for name in module.order:
        if name == 'conv':
            x = conv(x)
        elif name == 'act' and module.with_activation:
            x = module.activate(x)
    return x


def _chain_layers(modules) -> Optional[List[nn.Module]]:
    """The convs, norms and activations of ``modules`` in order, a plain
    conv and the BN after it that normalises by its running statistics as
    one :class:`_FoldedConvBN`; or None where one of them cannot be
    recomputed exactly."""
    layers = []
    for module in modules:
        own = _layers(module)
        if own is None or not all(
                _recomputable(m) for m in own
                if not isinstance(m, nn.Conv2d)):
            return None
        if _folds_into_conv(module):
            at = own.index(module.conv)
            own[at:at + 2] = [_FoldedConvBN(module.conv, module.norm)]
        layers.extend(own)
    return layers


def conv_chain(x: Tensor, *modules: ConvModule) -> Tensor:
    """``modules[-1](... modules[0](x))`` for mmcv ``ConvModule`` s, keeping
    only each conv's output for backward, and running each conv and a BN
    after it that normalises by its running statistics as one conv (see
    the module docstring).

    Chains that hold something this cannot recompute exactly (a SyncBN
    that syncs across processes, a random activation, explicit padding)
    run as the modules are when gradients are wanted; so does every chain
    while the model is traced with gradients (FLOP counting) or compiled
    (torch.compile makes its own choice of what to recompute).

    Args:
        x (Tensor): (B, C, H, W) input of the first module.
        *modules (ConvModule): the chain, in order.

    Returns:
        Tensor: the last module's output.
    """
    wants_grad = torch.is_grad_enabled() and (x.requires_grad or any(
        p.requires_grad for m in modules for p in m.parameters()))
    if not wants_grad:
        for module in modules:
            x = _run_folded(module, x) if _folds_into_conv(module) \
                else module(x)
        return x
    layers = None if is_traced() else _chain_layers(modules)
    if layers is None:
        for module in modules:
            x = module(x)
        return x
    for step in _segments(layers):
        if step[0] == 'plain':
            x = step[1](x)
            continue
        pointwise, conv = step[1], step[2]
        params = [p for m in pointwise for p in m.parameters()]
        if conv is not None:
            params += list(conv.parameters())
        x = _RecomputedSegment.apply(_Segment(pointwise, conv, params), x,
                                     *params)
    return x


__all__ = ['MAP_LAYOUT', 'RANDOM_LAYERS', 'conv_chain',
           'to_map_layout',
           'to_nchw', 'use_map_layout']
