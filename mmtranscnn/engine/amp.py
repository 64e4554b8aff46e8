"""Mixed precision on CPU-only machines, where mmengine's
``AmpOptimWrapper`` fails: bfloat16 (float32's exponent range, so no loss
scaling).

With torch 2.14's oneDNN, the bf16 weight gradient of a strided conv whose
input is a single pixel is now and then NaN (11 of 60 tries of a 256->256
3x3 stride-2 conv on a (2, 256, 1, 1) input; never for larger inputs or
stride 1). RetinaNet's P7 conv sees that for images of 128 pixels or less,
and one NaN gradient ruins every weight, so such convs run in float32
(which costs nothing measurable at 1x1).
"""
import threading
import time
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from torch import nn

_FP32_HOOKED = '_mmtranscnn_fp32_one_pixel_hooks'
# Per thread, as autocast's state is: the convs now running in float32,
# each with the ``autocast(enabled=False)`` its pre-hook entered.
_running = threading.local()


def _fp32_convs_running() -> list:
    if not hasattr(_running, 'stack'):
        _running.stack = []
    return _running.stack


def _fp32_pre_hook(module: nn.Conv2d, args):
    x = args[0]
    if torch.is_autocast_enabled('cpu') and x.shape[-2:] == (1, 1):
        autocast_off = torch.autocast('cpu', enabled=False)
        autocast_off.__enter__()
        _fp32_convs_running().append((module, autocast_off))
        return (x.float(), ) + tuple(args[1:])


def _fp32_post_hook(module: nn.Conv2d, args, output):
    stack = _fp32_convs_running()
    if stack and stack[-1][0] is module:
        stack.pop()[1].__exit__(None, None, None)


def run_one_pixel_strided_convs_in_fp32(model: nn.Module) -> None:
    """Hook every strided ``nn.Conv2d`` of ``model`` (once) to run in
    float32 under CPU autocast when its input is 1x1 (state per thread:
    threads may share the model).

    Args:
        model: the model to hook.
    """
    if getattr(model, _FP32_HOOKED, False):
        return
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and tuple(module.stride) != (1, 1):
            module.register_forward_pre_hook(_fp32_pre_hook)
            # always_call: the post-hook runs even if forward raises.
            module.register_forward_hook(_fp32_post_hook, always_call=True)
    setattr(model, _FP32_HOOKED, True)


@OPTIM_WRAPPERS.register_module()
class CPUBF16AmpOptimWrapper(OptimWrapper):
    """OptimWrapper whose forward runs under bfloat16 autocast on the CPU,
    one-pixel strided convs in float32 (see the module docstring).

    Selected by ``tools/train.py --amp`` when no accelerator is present;
    takes the same arguments as mmengine's ``OptimWrapper``.
    """

    @contextmanager
    def optim_context(self, model: nn.Module):
        run_one_pixel_strided_convs_in_fp32(model)
        stack = _fp32_convs_running()
        depth = len(stack)
        with super().optim_context(model), torch.autocast(
                device_type='cpu', dtype=torch.bfloat16):
            try:
                yield
            finally:
                # Exit, newest first, every autocast context the hooks left
                # entered (whatever happened), before the bf16 one ends.
                while len(stack) > depth:
                    stack.pop()[1].__exit__(None, None, None)


def bf16_training_speedup(repeats: int = 2, size: int = 20) -> float:
    """float32 time / bfloat16 time (> 1: bfloat16 is faster) of one conv
    training step under CPU autocast, measured here and now: whether bf16
    pays depends on the CPU (native instructions or a slow emulation) and
    oneDNN's ISA limit. The step: forward and backward of a 3x3 256-channel
    conv (what dominates a RetinaNet step), fastest of ``repeats`` runs.

    Args:
        repeats: timed runs per dtype, after one warm-up run.
        size: height and width of the probe's (8, 256, size, size) map.
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
