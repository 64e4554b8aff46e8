"""CPU fast paths: the one place where device-specific speed code lives.

The model files (``hmhsa.py``, ``blocks.py``, ``transcnn.py``) are written
with plain layers and read like the paper; the layers they build from here
(:class:`Linear`, :class:`ConvNormAct`, :class:`DepthwiseConv2d`) are those
plain layers (same parameters, same state dict, same ``forward`` result),
each with one CPU shortcut that it takes only where it computes the same
function:

* :class:`ConvNormAct` (an mmcv ``ConvModule``): at CPU inference, conv +
  eval-mode BN + activation in one oneDNN call (BN folded into the conv
  weights, the activation applied as a post-op), so the map is written once
  instead of three times. torch.compile emits the same kernel; eager
  PyTorch does not call it by itself.
* :class:`Linear`: at CPU inference, oneDNN's linear, which adds the bias
  inside the GEMM (aten's ``addmm`` first fills the output with the bias,
  an extra pass over token maps of detection size).
* :class:`DepthwiseConv2d`: in CPU training, the backward of a stride-1
  depthwise conv with k > 3 through oneDNN's fast kernels only (the input
  gradient as a forward conv with the flipped kernel, the weight gradient
  from 3x3 pieces), where oneDNN's own k x k backward is slow; under CPU
  autocast too (bf16 mixed-precision training), in autocast's dtype.
* :func:`scaled_dot_product_attention`: at CPU inference and in CPU
  training, SDPA's fused kernel or a plain matmul + softmax + matmul,
  whichever is faster for the shape (the fused kernel has a high fixed
  cost per grid, which dominates for the small grids of the deeper
  stages).
* :func:`add_residual`: without autograd, the residual sum is written into
  the branch output (one map fewer per block).
* :class:`ConvNormAct` with autograd, on any device: an in-place SiLU runs
  out of place (autograd records ``silu_`` by first copying its input).

Where two ways compute the same function and neither is faster on every CPU
and shape, the choice is made by measurement, per shape, on the machine at
hand (:class:`ShapeTuner`, in the spirit of ``cudnn.benchmark``): the first
time a layer meets a shape class, each way runs a few times on those very
inputs and the fastest is kept for that shape class. Nothing is decided by
the CPU's name.

The switch
----------
All of them are on by default and off, everywhere at once, when

* the environment variable ``MMTRANSCNN_FAST_PATHS`` is ``0`` (read at
  import), or :func:`set_enabled` ``(False)`` was called, or inside
  ``with fastpath.enabled(False):``;
* oneDNN is switched off: ``torch.backends.mkldnn.flags(enabled=False)``
  (or torch was built without it).

They also stand aside, so that tools see the plain aten ops, while a tool
traces or intercepts the model: ``torch.jit`` tracing/scripting,
``torch.compile``/``torch.export`` (dynamo), any ``TorchDispatchMode`` or
``TorchFunctionMode`` (``FlopCounterMode``, fake tensors, ``make_fx``) and
tensor subclasses. The inference shortcuts also stand aside under autocast
and for tensors that are not CPU float32; the training ones (depthwise
backward, attention choice) run under CPU autocast in its dtype, as the
plain ops would (bf16 mixed-precision training). ``tests/test_fastpath.py``
proves each shortcut equal to its plain path (in bf16, as close to the
exact result as the plain path); CI runs those tests on its own CPU and
once more with ATen, oneDNN and MKL limited to AVX2.
"""
import contextlib
import functools
import math
import os
import time
from typing import Callable, Dict, Hashable, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from torch import Tensor, nn

from mmtranscnn.utils.torch_compat import (get_autocast_dtype,
                                          is_autocast_enabled)

ENV_VAR = 'MMTRANSCNN_FAST_PATHS'


def _env_enabled() -> bool:
    value = os.environ.get(ENV_VAR, '1').strip().lower()
    if value in ('1', 'true', 'on', 'yes', ''):
        return True
    if value in ('0', 'false', 'off', 'no'):
        return False
    raise ValueError(f'{ENV_VAR} must be 1/on or 0/off, got {value!r}')


_enabled = _env_enabled()


def set_enabled(flag: bool) -> None:
    """Switch every fast path on or off for the whole process.

    Args:
        flag: True to allow the fast paths (where they apply), False for the
            plain layers everywhere.
    """
    global _enabled
    if not isinstance(flag, bool):
        raise TypeError(f'set_enabled takes a bool, got {flag!r}')
    _enabled = flag


def is_enabled() -> bool:
    """Whether the switch allows fast paths (oneDNN's own flag included)."""
    return (_enabled and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled)


@contextlib.contextmanager
def enabled(flag: bool) -> Iterator[None]:
    """``with fastpath.enabled(False): ...`` runs the plain layers only.

    Args:
        flag: the switch's value inside the block.
    """
    previous = _enabled
    set_enabled(flag)
    try:
        yield
    finally:
        set_enabled(previous)


def _probe(name: str, fn: Callable) -> None:
    """Call ``fn`` once on tiny inputs the way the fast paths call it;
    raises where this torch's kernel does not take those arguments (torch
    2.0's linear refuses the 'none' post-op: "Fusion behavior undefined")."""
    x = torch.ones(1, 2, 3, 3).contiguous(memory_format=torch.channels_last)
    if name == '_linear_pointwise':
        fn(torch.ones(1, 2), torch.ones(2, 2), torch.zeros(2), 'none', [], '')
    elif name == '_convolution_pointwise':
        fn(x, torch.ones(2, 2, 1, 1).contiguous(
            memory_format=torch.channels_last), torch.zeros(2), [0, 0],
           [1, 1], [1, 1], 1, 'swish', [], '')


@functools.lru_cache(maxsize=None)
def _lookup(name: str) -> Optional[Callable]:
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        fn = getattr(torch.ops.mkldnn, name)
        with torch.no_grad():
            _probe(name, fn)
        return fn
    except (AttributeError, RuntimeError):
        return None


def kernel(name: str) -> Optional[Callable]:
    """``torch.ops.mkldnn.<name>``, or None where this torch lacks it or
    its kernel does not take the arguments the fast paths pass.

    Args:
        name: the operator, e.g. ``'_convolution_pointwise'``.
    """
    return _lookup(name)


def _compiling_check() -> Callable[[], bool]:
    compiler = getattr(torch, 'compiler', None)
    if compiler is not None and hasattr(compiler, 'is_compiling'):
        return compiler.is_compiling
    try:  # torch < 2.3
        from torch._dynamo import is_compiling
        return is_compiling
    except ImportError:  # no dynamo: nothing compiles
        return lambda: False


_is_compiling = _compiling_check()


def _intercepted() -> bool:
    """Whether something traces or intercepts the ops being run."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or _is_compiling():
        return True
    dispatch_modes = getattr(torch._C, '_len_torch_dispatch_stack', None)
    if dispatch_modes is not None and dispatch_modes() > 0:
        return True
    return torch._C._is_torch_function_mode_enabled()


def autocast_dtype() -> Optional[torch.dtype]:
    """The dtype of CPU autocast when it is on, else None."""
    return (get_autocast_dtype('cpu') if is_autocast_enabled('cpu') else
            None)


def _common(x: Tensor, under_autocast: bool = False) -> bool:
    # _intercepted() first: while dynamo traces (torch.export on torch 2.1)
    # the checks after it, type() among them, must not be traced.
    return (_enabled and not _intercepted() and type(x) is Tensor
            and x.device.type == 'cpu' and torch.backends.mkldnn.enabled
            and (under_autocast or not is_autocast_enabled('cpu')))


def inference_applies(x: Tensor) -> bool:
    """Whether a oneDNN inference kernel may replace the plain ops on ``x``.

    Args:
        x: the layer's input.
    """
    return (not torch.is_grad_enabled() and x.dtype == torch.float32
            and _common(x))


def training_applies(x: Tensor, under_autocast: bool = False) -> bool:
    """Whether a CPU training shortcut may replace the plain backward.

    Args:
        x: the layer's input.
        under_autocast: the shortcut also applies while CPU autocast is on
            (it then runs in autocast's dtype, as the plain op would).
    """
    return torch.is_grad_enabled() and _common(x, under_autocast)


def autograd_applies() -> bool:
    """Whether a shortcut for recording ops for autograd may be taken (on
    any device: it changes what autograd keeps, not the kernels)."""
    return _enabled and torch.is_grad_enabled() and not _intercepted()


def add_residual(x: Tensor, branch: Tensor) -> Tensor:
    """``x + branch``; without autograd the sum goes into ``branch``, a map
    the caller just made, instead of a new allocation.

    Args:
        x: the residual input.
        branch: the freshly computed branch output (same shape).
    """
    if _enabled and not torch.is_grad_enabled() and not _intercepted():
        return branch.add_(x)
    return x + branch


# ---------------------------------------------------------------------------
# Choosing between equal implementations by measurement
# ---------------------------------------------------------------------------
def size_class(numel: int) -> int:
    """Shape classes by size: sizes within a factor of 2 share a class."""
    return max(int(numel), 1).bit_length()


class ShapeTuner:
    """Keeps, per shape class, the fastest of several implementations of
    one function, timed on the first inputs of that class.

    Args:
        name: what is tuned (for :func:`tuning_report`).
        candidates: implementation name -> callable; all compute the same
            function of the same arguments. The first is the plain one.
        repeats: timed runs per candidate (after one warm-up run); the
            fastest run counts.
        trial: ``trial(fn, args)`` runs one timed trial of a candidate;
            default ``fn(*args)``. A training tuner passes one that also
            runs the backward.
    """

    def __init__(self, name: str, candidates: Dict[str, Callable],
                 repeats: int = 2, trial: Optional[Callable] = None):
        self.name = name
        self.candidates = dict(candidates)
        self.repeats = repeats
        self.trial = trial or (lambda fn, args: fn(*args))
        self.choices: Dict[Hashable, str] = {}

    def _measure(self, args) -> str:
        best, best_time = None, math.inf
        for name, fn in self.candidates.items():
            self.trial(fn, args)  # warm-up: first-call costs
            for _ in range(self.repeats):
                start = time.perf_counter()
                self.trial(fn, args)
                elapsed = time.perf_counter() - start
                if elapsed < best_time:
                    best, best_time = name, elapsed
        return best

    def __call__(self, key: Hashable, *args):
        choice = self.choices.get(key)
        if choice is None:
            choice = self.choices[key] = self._measure(args)
        return self.candidates[choice](*args)


_TUNERS: Dict[str, ShapeTuner] = {}


def _tuner(name: str, candidates: Dict[str, Callable],
           trial: Optional[Callable] = None) -> ShapeTuner:
    if name not in _TUNERS:
        _TUNERS[name] = ShapeTuner(name, candidates, trial=trial)
    return _TUNERS[name]


def tuning_report() -> Dict[str, Dict[Hashable, str]]:
    """What each tuner chose so far: tuner -> shape class -> choice."""
    return {name: dict(t.choices) for name, t in _TUNERS.items()}


def reset_tuning() -> None:
    """Forget every choice (the next inputs are measured again)."""
    for t in _TUNERS.values():
        t.choices.clear()


# ---------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------
def matmul_attention(q: Tensor, k: Tensor, v: Tensor,
                     attn_mask: Optional[Tensor] = None) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v with plain matmuls; the same
    function as SDPA (a boolean mask marks the keys that may be seen)."""
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(q.shape[-1]**-0.5)
    if attn_mask is not None:
        scores.masked_fill_(~attn_mask, float('-inf'))
    # The softmax in float32 also when q is bf16 (autocast training), as
    # SDPA's CPU kernel computes it.
    weights = scores.softmax(-1, dtype=torch.float32).to(v.dtype)
    return torch.matmul(weights, v)


def _sdpa(q, k, v, attn_mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def _forward_backward(fn, args):
    """One training trial: forward and backward on detached copies, so the
    caller's graph is untouched. Identity saved-tensor hooks on top keep
    an enclosing activation checkpoint (``with_cp``) out of the trial."""
    q, k, v = (t.detach().requires_grad_() for t in args[:3])
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        out = fn(q, k, v, *args[3:])
        out.backward(torch.ones_like(out))


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor,
                                 attn_mask: Optional[Tensor] = None,
                                 dropout_p: float = 0.) -> Tensor:
    """``F.scaled_dot_product_attention`` (boolean masks only); on the CPU
    (float32, no dropout) SDPA's kernel or :func:`matmul_attention`,
    whichever is faster for the shape class: at inference timed forward
    only, in training timed forward + backward (SDPA's CPU backward costs
    about 2.6x its forward on the small grids).

    Args:
        q: (N, heads, Lq, d) queries.
        k, v: (N, heads, Lk, d) keys and values.
        attn_mask: boolean mask broadcastable to (N, heads, Lq, Lk), True
            where a key may be seen; or None.
        dropout_p: attention dropout (training only).
    """
    # The matmul form holds the (Lq, Lk) scores: it is a candidate only where
    # they are at most twice the size of the queries (small grids, few
    # keys), so choosing it never costs much memory.
    if dropout_p == 0 and k.shape[-2] <= 2 * q.shape[-1]:
        candidates = dict(sdpa=_sdpa, matmul=matmul_attention)
        key = (tuple(q.shape[1:]), k.shape[-2], attn_mask is not None,
               size_class(q.shape[0]), q.dtype)
        if inference_applies(q):
            return _tuner('attention', candidates)(key, q, k, v, attn_mask)
        # Training, also under autocast (bf16 mixed precision): both
        # candidates then run in autocast's dtype, and are timed so.
        if (q.dtype in (torch.float32, autocast_dtype())
                and training_applies(q, under_autocast=True) and
                (q.requires_grad or k.requires_grad or v.requires_grad)):
            return _tuner('attention-train', candidates,
                          _forward_backward)(key, q, k, v, attn_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                          dropout_p=dropout_p)


# ---------------------------------------------------------------------------
# Linear
# ---------------------------------------------------------------------------
def _aten_linear(layer, x):
    return F.linear(x, layer.weight, layer.bias)


def _onednn_linear(layer, x):
    return kernel('_linear_pointwise')(x, layer.weight, layer.bias, 'none',
                                       [], '')


class Linear(nn.Linear):
    """``nn.Linear``; at CPU float32 inference aten's or oneDNN's linear
    kernel (bias added inside the GEMM), whichever is faster for the shape
    class."""

    def forward(self, x: Tensor) -> Tensor:
        if not inference_applies(x) or kernel('_linear_pointwise') is None:
            return super().forward(x)
        key = (self.in_features, self.out_features, self.bias is not None,
               size_class(x.numel() // self.in_features))
        return _tuner('linear', dict(aten=_aten_linear,
                                     onednn=_onednn_linear))(key, self, x)


# ---------------------------------------------------------------------------
# Conv + BN + activation
# ---------------------------------------------------------------------------
def _fused_activation(module: ConvModule) -> Optional[Tuple[str, str]]:
    """oneDNN's (post-op, algorithm) for ``module``'s activation, or None
    if oneDNN does not fuse it."""
    if not module.with_activation:
        return 'none', ''
    act = module.activate
    if type(act) is nn.GELU:  # oneDNN needs GELU's approximation named
        return 'gelu', act.approximate
    name = {nn.SiLU: 'swish', nn.ReLU: 'relu'}.get(type(act))
    return None if name is None else (name, '')


def _folds(module: ConvModule, x: Tensor) -> bool:
    """Whether ``module`` is a conv + eval-mode BN (+ act) that oneDNN can
    run as one call on ``x``."""
    norm = module.norm if module.with_norm else None
    conv = module.conv
    return (module.order == ('conv', 'norm', 'act')
            # the module's own eval-time folding is on (switching it off
            # gives the plain path)
            and getattr(module, 'efficient_conv_bn_eval_forward',
                        None) is not None
            and isinstance(norm, nn.modules.batchnorm._BatchNorm)
            and not norm.training and norm.track_running_stats
            and type(conv) in (nn.Conv2d, DepthwiseConv2d)
            and conv.padding_mode == 'zeros'
            and not isinstance(conv.padding, str)
            and x.is_contiguous(memory_format=torch.channels_last))


def _module_conv(module, x, act):
    """The module as it is (mmcv's eval-time folding, then the act)."""
    return ConvModule.forward(module, x)


def _onednn_conv(module, x, act):
    """Conv + eval-mode BN + activation ``act`` in one oneDNN call."""
    conv, bn = module.conv, module.norm
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.affine:
        scale = scale * bn.weight
    weight = (conv.weight * scale.view(-1, 1, 1, 1)).contiguous(
        memory_format=torch.channels_last)
    bias = -bn.running_mean if conv.bias is None else \
        conv.bias - bn.running_mean
    bias = bias * scale
    if bn.affine:
        bias = bias + bn.bias
    return kernel('_convolution_pointwise')(
        x, weight, bias, list(conv.padding), list(conv.stride),
        list(conv.dilation), conv.groups, act[0], [], act[1])


# Activations whose in-place form autograd can only record by first copying
# the input (their backward needs it), mapped to the out-of-place function.
_COPYING_INPLACE_ACTS = {nn.SiLU: F.silu, nn.Hardswish: F.hardswish,
                         nn.Mish: F.mish}


def _out_of_place_activation(module: ConvModule) -> Optional[Callable]:
    """The out-of-place function of ``module``'s in-place activation where
    recording the in-place one for autograd would copy its input."""
    act = module.activate if module.with_activation else None
    # Only where the activation comes last: it is then applied after
    # ConvModule's own forward without it.
    if (act is None or not getattr(act, 'inplace', False)
            or module.order[-1] != 'act'):
        return None
    return _COPYING_INPLACE_ACTS.get(type(act))


class ConvNormAct(ConvModule):
    """mmcv's ``ConvModule``; at CPU float32 inference with an eval-mode BN,
    the module as it is (conv with folded BN, then the activation) or conv
    + BN + activation in one oneDNN call, whichever is faster for the shape
    class. With autograd, an in-place SiLU (mmcv's default) runs out of
    place: autograd would otherwise copy the map first to keep the input
    its backward needs, one more pass over the map for the same result."""

    def forward(self, x: Tensor, activate: bool = True,
                norm: bool = True) -> Tensor:
        if not (activate and norm and inference_applies(x)):
            act = _out_of_place_activation(self) if activate else None
            if act is None or not autograd_applies():
                return super().forward(x, activate, norm)
            y = super().forward(x, activate=False, norm=norm)
            return act(y) if y.requires_grad else self.activate(y)
        act = _fused_activation(self)
        if (act is None or not _folds(self, x)
                or kernel('_convolution_pointwise') is None):
            return super().forward(x, activate, norm)
        conv = self.conv
        key = (conv.in_channels, conv.out_channels, conv.kernel_size,
               conv.stride, conv.groups, act, size_class(x.numel()))
        return _tuner('conv', dict(module=_module_conv,
                                   onednn=_onednn_conv))(key, self, x, act)


# ---------------------------------------------------------------------------
# Depthwise conv backward
# ---------------------------------------------------------------------------
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

    The windows are read in place, without a copy each: the padded images
    are stacked row after row in one channels-last buffer, and the window
    at (s, t) is that buffer from offset (s, t) on, read as an image of
    full padded rows (a view that is channels-last contiguous). What the
    window reads besides its own pixels (the columns right of it, which
    run on into the next row, and the rows between stacked images) meets
    zeros of ``grad_out`` widened to match, so it adds nothing.

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
    # The images stacked: (N * rows, cols, C), plus one zero row that the
    # last windows run into.
    # Only the padding is zero-filled: the buffers are large (a stage-1 map
    # with 4x hidden channels), and filling them whole before the copy was
    # a full extra pass over each.
    buf = x.new_empty((n * rows + 1, cols, c))
    images = buf[:n * rows].view(n, rows, cols, c)
    images[:, p:p + h, p:p + w] = x.permute(0, 2, 3, 1)
    for border in (images[:, :p], images[:, p + h:], images[:, p:p + h, :p],
                   images[:, p:p + h, p + w:], buf[n * rows:]):
        border.zero_()
    # grad_out on the same grid: output row i * rows + y is image i's row y;
    # the rows and columns beyond each image are zero.
    out_rows = (n - 1) * rows + h
    grad = x.new_empty((n * rows, cols - 2, c))
    grads = grad.view(n, rows, cols - 2, c)
    grads[:, :h, :w] = grad_out.permute(0, 2, 3, 1)
    grads[:, h:].zero_()
    grads[:, :h, w:].zero_()
    grad = grad[:out_rows].unsqueeze(0).permute(0, 3, 1, 2)
    result = x.new_empty((c, 1, k, k))
    starts = _tile_starts(k)
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
    """``nn.Conv2d`` (same parameters and state dict); in CPU training, a
    stride-1 depthwise conv with k > 3 gets the backward of
    :class:`_DepthwiseConvFn`."""

    def _fast_backward_applies(self, x: Tensor, weight: Tensor) -> bool:
        k = self.kernel_size
        return (training_applies(x, under_autocast=True)
                and (x.requires_grad or weight.requires_grad)
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
            low = autocast_dtype()
            if low is None:
                return _DepthwiseConvFn.apply(x, weight, bias, self.padding)
            # Under autocast the plain conv runs in autocast's dtype; so does
            # this one (oneDNN's bf16 k x k backward is slower still than its
            # fp32 one). The casts stay on the tape: fp32 parameters get
            # their gradients through them, as from the plain op.
            x, weight = x.to(low), weight.to(low)
            bias = None if bias is None else bias.to(low)
            with torch.autocast('cpu', enabled=False):
                return _DepthwiseConvFn.apply(x, weight, bias, self.padding)
        return super()._conv_forward(x, weight, bias)


__all__ = ['ENV_VAR', 'set_enabled', 'is_enabled', 'enabled', 'kernel',
           'inference_applies', 'training_applies', 'autograd_applies',
           'autocast_dtype',
           'add_residual', 'Linear',
           'ConvNormAct', 'DepthwiseConv2d', 'depthwise_weight_grad',
           'ShapeTuner', 'tuning_report', 'reset_tuning', 'size_class',
           'matmul_attention', 'scaled_dot_product_attention']
