"""Mixed precision on CPU-only machines.

mmengine's ``AmpOptimWrapper`` asserts an accelerator (cuda, npu, mlu,
musa). CPUs run mixed precision in bfloat16, which has float32's exponent
range, so no loss scaling is needed: the wrapper runs the forward under
``torch.autocast('cpu', dtype=torch.bfloat16)``.

One exception is made. With torch 2.14's oneDNN, the bfloat16 weight
gradient of a strided convolution whose input is a single pixel (1x1) is
now and then NaN (measured: 11 of 60 tries of a 256->256 3x3 stride-2 conv
on a (2, 256, 1, 1) input; never for larger inputs or stride 1). RetinaNet's
P7 conv sees exactly that for images of 128 pixels or less, and one NaN
gradient ruins every weight. Such convs run in float32 instead, which costs
nothing measurable at 1x1.
"""
import threading
import time
from contextlib import contextmanager
from typing import Iterator, List, Tuple

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from torch import nn

_FP32_HOOKED = '_mmtranscnn_fp32_one_pixel_hooks'

# Per thread (autocast state is per thread too): the convs now running in
# float32, each with the ``torch.autocast(enabled=False)`` context its
# pre-hook entered and its post-hook exits.
_running = threading.local()


def _fp32_convs_running() -> List[Tuple[nn.Module, torch.autocast]]:
    stack = getattr(_running, 'stack', None)
    if stack is None:
        stack = _running.stack = []
    return stack


def _one_pixel_strided(module: nn.Conv2d, x: torch.Tensor) -> bool:
    return x.shape[-2:] == (1, 1) and tuple(module.stride) != (1, 1)


def _fp32_pre_hook(module: nn.Conv2d, args):
    x = args[0]
    if torch.is_autocast_enabled('cpu') and _one_pixel_strided(module, x):
        autocast_off = torch.autocast('cpu', enabled=False)
        autocast_off.__enter__()
        _fp32_convs_running().append((module, autocast_off))
        return (x.float(), ) + tuple(args[1:])
    return None


def _fp32_post_hook(module: nn.Conv2d, args, output):
    stack = _fp32_convs_running()
    if stack and stack[-1][0] is module:
        stack.pop()[1].__exit__(None, None, None)
    return None


def _leave_fp32_convs(depth: int) -> None:
    """Exit the autocast contexts entered above ``depth`` of this thread's
    stack, newest first (each restores the state before it)."""
    stack = _fp32_convs_running()
    while len(stack) > depth:
        stack.pop()[1].__exit__(None, None, None)


def run_one_pixel_strided_convs_in_fp32(model: nn.Module) -> None:
    """Hook every strided ``nn.Conv2d`` of ``model`` (once) so that it runs
    in float32 under CPU autocast when its input is 1x1 (see the module
    docstring for the oneDNN bug this avoids).

    The pre-hook enters ``torch.autocast('cpu', enabled=False)`` and the
    post-hook, which torch runs even when the forward raises, exits it, so
    the autocast state before the conv comes back whatever happens. The
    hooks keep their state per thread, not on the module: threads may
    share the model. :func:`fp32_strided_convs_at_one_pixel` hooks the
    model and, on leaving, exits whatever the hooks left entered.
    """
    if getattr(model, _FP32_HOOKED, False):
        return
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and tuple(module.stride) != (1, 1):
            module.register_forward_pre_hook(_fp32_pre_hook)
            # always_call: the post-hook runs even if forward raises.
            module.register_forward_hook(_fp32_post_hook, always_call=True)
    setattr(model, _FP32_HOOKED, True)


@contextmanager
def fp32_strided_convs_at_one_pixel(model: nn.Module) -> Iterator[None]:
    """Inside, ``model``'s strided convs run in float32 under CPU autocast
    when their input is 1x1 (:func:`run_one_pixel_strided_convs_in_fp32`);
    on leaving, whatever happened inside, every autocast context those
    convs entered in this thread is exited.

    Args:
        model: the model whose forward runs inside.
    """
    run_one_pixel_strided_convs_in_fp32(model)
    depth = len(_fp32_convs_running())
    try:
        yield
    finally:
        _leave_fp32_convs(depth)


@OPTIM_WRAPPERS.register_module()
class CPUBF16AmpOptimWrapper(OptimWrapper):
    """OptimWrapper whose forward runs under bfloat16 autocast on the CPU.

    Selected by ``tools/train.py --amp`` when no accelerator is present;
    takes the same arguments as mmengine's ``OptimWrapper``.
    """

    @contextmanager
    def optim_context(self, model: nn.Module):
        with super().optim_context(model), torch.autocast(
                device_type='cpu', dtype=torch.bfloat16), \
                fp32_strided_convs_at_one_pixel(model):
            yield


def bf16_training_speedup(repeats: int = 2, size: int = 20) -> float:
    """How many times faster one conv training step runs under CPU bfloat16
    autocast than in float32, measured on this machine now.

    Whether bfloat16 pays depends on the CPU (native bf16 instructions, or
    an emulation many times slower than float32) and on oneDNN's ISA limit,
    so it is measured, not guessed from the CPU's name. The step is the
    forward and backward of a 3x3 256-channel conv on a (8, 256, size,
    size) map (the kind of conv that dominates a RetinaNet training step);
    the fastest of ``repeats`` runs counts for each dtype.

    Args:
        repeats: timed runs per dtype, after one warm-up run.
        size: height and width of the probe's map.

    Returns:
        float32 time / bfloat16 time (> 1: bfloat16 is faster).
    """
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(256, 256, 3, padding=1)
    x = torch.randn(8, 256, size, size, generator=generator)

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            out = conv(x)
        out.float().sum().backward()
        return time.perf_counter() - start

    best = {}
    for bf16 in (False, True):
        step(bf16)
        best[bf16] = min(step(bf16) for _ in range(repeats))
    return best[False] / best[True]
