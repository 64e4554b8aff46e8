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

:class:`ConvNormAct` also folds an eval-mode BN into its conv on every
device without changing the module during the call (mmcv's own folding sets
and deletes ``conv.forward`` on each call), so one eval model can serve
several threads at once. Nothing here writes to a module in ``forward``.

Where two ways compute the same function and neither is faster on every CPU
and shape, the choice is made by measurement, per shape, on the machine at
hand (:class:`ShapeTuner`, in the spirit of ``cudnn.benchmark``): the first
time a layer meets a shape class, each way runs a few times on those very
inputs and the fastest is kept for that shape class (measured once per
process, under a lock, however many threads meet it). Nothing is decided by
the CPU's name. The ways differ in the last bits of their results, so a
timed choice can differ between runs and between ranks; see "Kernel choice"
below for the rule that fixes it.

The switch
----------
All of them are on by default and off, all together, when

* the environment variable ``MMTRANSCNN_FAST_PATHS`` is ``0`` (read at
  import), or :func:`set_enabled` ``(False)`` was called, or inside
  ``with fastpath.enabled(False):``;
* oneDNN is switched off: ``torch.backends.mkldnn.flags(enabled=False)``
  (or torch was built without it).

:func:`set_enabled` is process-wide; ``fastpath.enabled(...)`` changes the
calling thread only (a server thread switching them off for its own calls
leaves the other threads as they are).

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

Kernel choice
-------------
``MMTRANSCNN_KERNEL_CHOICE`` (read at import) is ``measure`` (the default:
time the candidates, as above) or ``rule``: every tuner then takes its
fixed rule and times nothing, so every run and every rank computes with the
same kernels. The rule is the plain candidate (aten's linear, the conv with
the BN folded then the activation, SDPA) except for attention over at most
16 keys per grid (4x4 grids and smaller), where it is the matmul form:
SDPA's fixed cost per grid dominates there (the matmul form was ~20%
faster on an AMD EPYC, one thread; from 49 keys on the two were even).
:func:`set_kernel_choice` sets
the mode for the process, ``with fastpath.kernel_choice('rule'):`` for the
calling thread. The rule also applies, whatever the switch says, while

* ``torch.use_deterministic_algorithms(True)`` is on (as ``cudnn.benchmark``
  is ignored then);
* ``torch.distributed`` is initialised with more than one rank: each rank
  sees its own image sizes, so agreeing on a timed choice would need a
  collective inside ``forward``; a rule needs none.

:func:`tuning_report` lists each choice and whether it was measured or
ruled.
"""
import contextlib
import functools
import math
import os
import threading
import time
from typing import (Callable, ContextManager, Dict, Hashable, Iterator,
                    NamedTuple, Optional, Tuple)

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from torch import Tensor, nn

from mmtranscnn.utils.torch_compat import (get_autocast_dtype,
                                          is_autocast_enabled)

ENV_VAR = 'MMTRANSCNN_FAST_PATHS'
CHOICE_ENV_VAR = 'MMTRANSCNN_KERNEL_CHOICE'
KERNEL_CHOICES = ('measure', 'rule')


def _env_enabled() -> bool:
    value = os.environ.get(ENV_VAR, '1').strip().lower()
    if value in ('1', 'true', 'on', 'yes', ''):
        return True
    if value in ('0', 'false', 'off', 'no'):
        return False
    raise ValueError(f'{ENV_VAR} must be 1/on or 0/off, got {value!r}')


def _check_kernel_choice(mode, field: str) -> str:
    if mode not in KERNEL_CHOICES:
        raise ValueError(f'{field} must be one of {KERNEL_CHOICES}, got '
                         f'{mode!r}')
    return mode


def _env_kernel_choice() -> str:
    value = os.environ.get(CHOICE_ENV_VAR, '').strip().lower()
    return _check_kernel_choice(value or 'measure', CHOICE_ENV_VAR)


# The process-wide settings, and per-thread overrides of them (set by the
# context managers, so that a thread switching a setting for its own calls
# does not change what other threads run).
_enabled = _env_enabled()
_kernel_choice = _env_kernel_choice()
_thread = threading.local()


def _on() -> bool:
    """The fast-path switch as the calling thread sees it."""
    flag = getattr(_thread, 'enabled', None)
    return _enabled if flag is None else flag


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
    """Whether the switch allows fast paths in the calling thread (oneDNN's
    own flag included)."""
    return (_on() and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled)


@contextlib.contextmanager
def _thread_override(name: str, value) -> Iterator[None]:
    previous = getattr(_thread, name, None)
    setattr(_thread, name, value)
    try:
        yield
    finally:
        setattr(_thread, name, previous)


def enabled(flag: bool) -> ContextManager[None]:
    """``with fastpath.enabled(False): ...`` runs the plain layers only, in
    the calling thread (other threads keep the process-wide setting).

    Args:
        flag: the switch's value inside the block.
    """
    if not isinstance(flag, bool):
        raise TypeError(f'enabled takes a bool, got {flag!r}')
    return _thread_override('enabled', flag)


def set_kernel_choice(mode: str) -> None:
    """How :class:`ShapeTuner` chooses between equal kernels, for the whole
    process.

    Args:
        mode: ``'measure'`` (time them on the first inputs of each shape
            class; the default) or ``'rule'`` (each tuner's fixed rule, no
            timing: the same kernels in every run and on every rank).
    """
    global _kernel_choice
    _kernel_choice = _check_kernel_choice(mode, 'set_kernel_choice mode')


def kernel_choice(mode: str) -> ContextManager[None]:
    """``with fastpath.kernel_choice('rule'): ...`` chooses kernels by rule
    in the calling thread (other threads keep the process-wide setting).

    Args:
        mode: ``'measure'`` or ``'rule'`` (see :func:`set_kernel_choice`).
    """
    return _thread_override('kernel_choice',
                            _check_kernel_choice(mode, 'kernel_choice mode'))


def _distributed() -> bool:
    """Whether this process is one of several ranks of a process group."""
    dist = torch.distributed
    return (dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1)


def chooses_by_rule() -> bool:
    """Whether kernels are chosen by rule (not timed) in the calling thread:
    the switch says ``'rule'``, or torch's deterministic mode is on
    (``torch.use_deterministic_algorithms(True)``), or this process is one
    of several ranks of ``torch.distributed`` (every rank must run the same
    kernels, and a rule needs no communication inside ``forward``)."""
    mode = getattr(_thread, 'kernel_choice', None) or _kernel_choice
    return (mode == 'rule' or torch.are_deterministic_algorithms_enabled()
            or _distributed())


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
    return (_on() and not _intercepted() and type(x) is Tensor
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
    return _on() and torch.is_grad_enabled() and not _intercepted()


def add_residual(x: Tensor, branch: Tensor) -> Tensor:
    """``x + branch``; without autograd the sum goes into ``branch``, a map
    the caller just made, instead of a new allocation.

    Args:
        x: the residual input.
        branch: the freshly computed branch output (same shape).
    """
    if _on() and not torch.is_grad_enabled() and not _intercepted():
        return branch.add_(x)
    return x + branch


# ---------------------------------------------------------------------------
# Choosing between equal implementations: by measurement or by rule
# ---------------------------------------------------------------------------
def size_class(numel: int) -> int:
    """Shape classes by size: sizes within a factor of 2 share a class."""
    return max(int(numel), 1).bit_length()


class Choice(NamedTuple):
    """One tuner's choice for one shape class."""
    kernel: str  #: the candidate's name
    by: str  #: ``'measurement'`` or ``'rule'``


# Held while a choice is measured: one measurement per key however many
# threads meet it at once, and no two measurements timing each other.
_MEASURE_LOCK = threading.RLock()


class ShapeTuner:
    """Keeps, per shape class, one of several implementations of one
    function: the fastest, timed on the first inputs of that class, or,
    where :func:`chooses_by_rule`, the one its rule names (no timing).

    Safe to call from several threads: lookups take no lock; a missing
    choice is measured under a process-wide lock, once per key. Measured
    and ruled choices are kept apart, so a thread choosing by rule never
    replaces what another measured, nor the reverse.

    Args:
        name: what is tuned (for :func:`tuning_report`).
        candidates: implementation name -> callable; all compute the same
            function of the same arguments. The first is the plain one.
        repeats: timed runs per candidate (after one warm-up run); the
            fastest run counts.
        trial: ``trial(fn, args)`` runs one timed trial of a candidate;
            default ``fn(*args)``. A training tuner passes one that also
            runs the backward.
        rule: ``rule(key)`` names the candidate for a shape class when
            kernels are chosen by rule. Default: the first (plain) one.
    """

    def __init__(self, name: str, candidates: Dict[str, Callable],
                 repeats: int = 2, trial: Optional[Callable] = None,
                 rule: Optional[Callable[[Hashable], str]] = None):
        self.name = name
        self.candidates = dict(candidates)
        self.repeats = repeats
        self.trial = trial or (lambda fn, args: fn(*args))
        first = next(iter(self.candidates))
        self.rule = rule or (lambda key: first)
        # One table per way of choosing: threads (or phases of a run) that
        # choose differently never overwrite each other's choices.
        self.measured: Dict[Hashable, str] = {}
        self.ruled: Dict[Hashable, str] = {}

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

    def _by_rule(self, key: Hashable) -> str:
        kernel = self.rule(key)
        if kernel not in self.candidates:
            raise ValueError(f'the rule of tuner {self.name!r} chose '
                             f'{kernel!r}; candidates: '
                             f'{list(self.candidates)}')
        return kernel

    def _kernel(self, key: Hashable, args) -> str:
        if chooses_by_rule():
            kernel = self.ruled.get(key)
            if kernel is None:
                kernel = self.ruled[key] = self._by_rule(key)
            return kernel
        kernel = self.measured.get(key)
        if kernel is None:
            with _MEASURE_LOCK:
                kernel = self.measured.get(key)  # another thread's, maybe
                if kernel is None:
                    kernel = self.measured[key] = self._measure(args)
        return kernel

    def choose(self, key: Hashable, *args) -> Choice:
        """The choice for ``key`` the way the calling thread chooses now
        (made now if it is missing).

        Args:
            key: the shape class.
            args: the inputs to time the candidates on, if measured.
        """
        return Choice(self._kernel(key, args),
                      'rule' if chooses_by_rule() else 'measurement')

    @property
    def choices(self) -> Dict[Hashable, Choice]:
        """Every choice made so far; for a shape class chosen both ways,
        the one of the way the calling thread chooses now."""
        tables = [('measurement', self.measured), ('rule', self.ruled)]
        if chooses_by_rule():
            tables.reverse()
        merged = {}
        for by, table in tables:
            for key, kernel in list(table.items()):
                merged.setdefault(key, Choice(kernel, by))
        return merged

    def clear(self) -> None:
        """Forget every choice."""
        self.measured.clear()
        self.ruled.clear()

    def __call__(self, key: Hashable, *args):
        return self.candidates[self._kernel(key, args)](*args)


_TUNERS: Dict[str, ShapeTuner] = {}


def _tuner(name: str, candidates: Dict[str, Callable],
           trial: Optional[Callable] = None,
           rule: Optional[Callable[[Hashable], str]] = None) -> ShapeTuner:
    tuner = _TUNERS.get(name)
    if tuner is None:
        with _MEASURE_LOCK:  # one tuner per name, whichever thread is first
            tuner = _TUNERS.get(name)
            if tuner is None:
                tuner = _TUNERS[name] = ShapeTuner(name, candidates,
                                                   trial=trial, rule=rule)
    return tuner


def tuning_report() -> Dict[str, Dict[Hashable, Choice]]:
    """What each tuner chose so far: tuner -> shape class ->
    ``Choice(kernel, by)``, ``by`` being ``'measurement'`` or ``'rule'``
    (see :attr:`ShapeTuner.choices`)."""
    # list(): a snapshot, while other threads may add tuners.
    return {name: t.choices for name, t in list(_TUNERS.items())}


def reset_tuning() -> None:
    """Forget every choice (the next inputs are chosen again)."""
    with _MEASURE_LOCK:
        for t in _TUNERS.values():
            t.clear()


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


# The kernel-choice rule for attention (keys as built below): the matmul form
# where a grid has few keys, SDPA's kernel otherwise (see "Kernel choice").
RULE_MATMUL_MAX_KEYS = 16


def _attention_rule(key) -> str:
    return 'matmul' if key[1] <= RULE_MATMUL_MAX_KEYS else 'sdpa'


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
            return _tuner('attention', candidates,
                          rule=_attention_rule)(key, q, k, v, attn_mask)
        # Training, also under autocast (bf16 mixed precision): both
        # candidates then run in autocast's dtype, and are timed so.
        if (q.dtype in (torch.float32, autocast_dtype())
                and training_applies(q, under_autocast=True) and
                (q.requires_grad or k.requires_grad or v.requires_grad)):
            return _tuner('attention-train', candidates, _forward_backward,
                          _attention_rule)(key, q, k, v, attn_mask)
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
def fold_bn_into_conv(conv: nn.Module,
                      bn: nn.modules.batchnorm._BatchNorm
                      ) -> Tuple[Tensor, Tensor]:
    """The weight and bias of one conv that computes ``bn(conv(x))`` for an
    eval-mode BN (running statistics), as new tensors: the modules are left
    as they are, and autograd carries gradients back to the parameters of
    both (training with ``norm_eval``). The arithmetic is mmcv's
    ``efficient_conv_bn_eval_forward``, so the results are bit-identical.

    Args:
        conv: the conv (any ``_ConvNd``).
        bn: the BatchNorm after it, with running statistics.

    Returns:
        (weight, bias) for ``conv._conv_forward``.
    """
    coeff = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        coeff = bn.weight * coeff
    weight = conv.weight * coeff.reshape([-1] + [1] * (conv.weight.dim() - 1))
    shift = -bn.running_mean if conv.bias is None else \
        conv.bias - bn.running_mean
    bias = coeff * shift
    if bn.bias is not None:
        bias = bn.bias + bias
    return weight, bias


# torch's hook tables, per module and global. Calling a conv's
# ``_conv_forward`` directly skips the hooks that calling the module runs.
_MODULE_HOOKS = ('_forward_hooks', '_forward_pre_hooks', '_backward_hooks',
                 '_backward_pre_hooks')
_GLOBAL_HOOKS = ('_global_forward_hooks', '_global_forward_pre_hooks',
                 '_global_backward_hooks', '_global_backward_pre_hooks')


def _has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` runs hooks (spectral norm's weight update,
    a feature-extraction hook, a global hook)."""
    table = nn.modules.module
    return (any(getattr(module, name, None) for name in _MODULE_HOOKS)
            or any(getattr(table, name, None) for name in _GLOBAL_HOOKS))


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


def _folds(module: 'ConvNormAct', x: Tensor) -> bool:
    """Whether ``module`` is a conv + eval-mode BN (+ act) that oneDNN can
    run as one call on ``x``."""
    conv = module.conv
    return (module.order == ('conv', 'norm', 'act')
            and module.folds_norm()
            and not module.with_explicit_padding
            and type(conv) in (nn.Conv2d, DepthwiseConv2d)
            and conv.padding_mode == 'zeros'
            and not isinstance(conv.padding, str)
            and x.is_contiguous(memory_format=torch.channels_last))


def _module_conv(module, x, act):
    """The module as it is (conv with the BN folded in, then the act)."""
    return module.run_layers(x)


def _onednn_conv(module, x, act):
    """Conv + eval-mode BN + activation ``act`` in one oneDNN call."""
    conv = module.conv
    weight, bias = fold_bn_into_conv(conv, module.norm)
    return kernel('_convolution_pointwise')(
        x, weight.contiguous(memory_format=torch.channels_last), bias,
        list(conv.padding), list(conv.stride), list(conv.dilation),
        conv.groups, act[0], [], act[1])


# Activations whose in-place form autograd can only record by first copying
# the input (their backward needs it), mapped to the out-of-place function.
_COPYING_INPLACE_ACTS = {nn.SiLU: F.silu, nn.Hardswish: F.hardswish,
                         nn.Mish: F.mish}


def _out_of_place_activation(module: ConvModule) -> Optional[Callable]:
    """The out-of-place function of ``module``'s in-place activation where
    recording the in-place one for autograd would copy its input."""
    act = module.activate if module.with_activation else None
    # Only where the activation comes last: it then acts on the module's
    # own intermediate map (an activation first would act on the caller's
    # input, which mmcv's in-place form overwrites).
    if (act is None or not getattr(act, 'inplace', False)
            or module.order[-1] != 'act'):
        return None
    return _COPYING_INPLACE_ACTS.get(type(act))


class ConvNormAct(ConvModule):
    """mmcv's ``ConvModule`` (same arguments, parameters and state dict),
    safe to call from several threads at once.

    With mmcv's ``efficient_conv_bn_eval`` and the BN in eval mode, the BN
    is folded into the conv weights as mmcv does it (bit-identical results,
    gradients to both), but as values passed to the conv's
    ``_conv_forward``: mmcv sets and deletes ``conv.forward`` on every call
    instead, which breaks threads sharing one eval model. A BN in train
    mode runs after the conv as usual. (A conv with hooks, e.g. spectral
    norm, is called as a module and its BN runs after it, unfolded.)

    At CPU float32 inference with an eval-mode BN, this folded conv then
    the activation, or conv + BN + activation in one oneDNN call, whichever
    :class:`ShapeTuner` chooses for the shape class. With autograd, an
    in-place SiLU (mmcv's default) runs out of place: autograd would
    otherwise copy the map first to keep the input its backward needs, one
    more pass over the map for the same result."""

    def folds_norm(self) -> bool:
        """Whether the conv runs with the BN folded in now: the module's
        ``efficient_conv_bn_eval`` is on (mmcv sets it only for a BN with
        running statistics), the BN is in eval mode, and the conv has no
        hooks that calling it directly would skip."""
        return (getattr(self, 'efficient_conv_bn_eval_forward',
                        None) is not None
                and self.with_norm and not self.norm.training
                and self.norm.track_running_stats
                and not _has_hooks(self.conv))

    def run_layers(self, x: Tensor, activate: bool = True,
                   norm: bool = True) -> Tensor:
        """``ConvModule.forward``'s layers in the module's order, with the
        BN folded as values (:meth:`folds_norm`) and nothing on the module
        changed.

        Args:
            x: the input map.
            activate: apply the activation.
            norm: apply the norm.
        """
        order = self.order
        i = 0
        while i < len(order):
            layer = order[i]
            if layer == 'conv':
                if self.with_explicit_padding:
                    x = self.padding_layer(x)
                if (norm and order[i + 1:i + 2] == ('norm', )
                        and self.folds_norm()):
                    x = self.conv._conv_forward(
                        x, *fold_bn_into_conv(self.conv, self.norm))
                    i += 1  # the norm is folded in
                else:
                    x = self.conv(x)
            elif layer == 'norm' and norm and self.with_norm:
                x = self.norm(x)
            elif layer == 'act' and activate and self.with_activation:
                x = self._activation(x)
            i += 1
        return x

    def _activation(self, x: Tensor) -> Tensor:
        out_of_place = _out_of_place_activation(self)
        if (out_of_place is not None and x.requires_grad
                and autograd_applies()):
            return out_of_place(x)
        return self.activate(x)

    def forward(self, x: Tensor, activate: bool = True,
                norm: bool = True) -> Tensor:
        if activate and norm and inference_applies(x):
            act = _fused_activation(self)
            if (act is not None and _folds(self, x)
                    and kernel('_convolution_pointwise') is not None):
                conv = self.conv
                key = (conv.in_channels, conv.out_channels, conv.kernel_size,
                       conv.stride, conv.groups, act, size_class(x.numel()))
                return _tuner('conv', dict(module=_module_conv,
                                           onednn=_onednn_conv))(key, self, x,
                                                                 act)
        return self.run_layers(x, activate, norm)


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
        # ConvNormAct's BN folding also calls this with folded weights, so
        # training with frozen BN (norm_eval) gets the fast backward too.
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
           'CHOICE_ENV_VAR', 'KERNEL_CHOICES', 'set_kernel_choice',
           'kernel_choice', 'chooses_by_rule', 'Choice',
           'fold_bn_into_conv',
           'inference_applies', 'training_applies', 'autograd_applies',
           'autocast_dtype',
           'add_residual', 'Linear',
           'ConvNormAct', 'DepthwiseConv2d', 'depthwise_weight_grad',
           'ShapeTuner', 'tuning_report', 'reset_tuning', 'size_class',
           'matmul_attention', 'scaled_dot_product_attention']
