"""Mixed precision on CPU-only machines.

mmengine's ``AmpOptimWrapper`` asserts an accelerator (cuda, npu, mlu,
musa). CPUs run mixed precision in bfloat16, which has float32's exponent
range, so no loss scaling is needed: the wrapper only has to run the forward
under ``torch.autocast('cpu', dtype=torch.bfloat16)``.
"""
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from torch import nn


@OPTIM_WRAPPERS.register_module()
class CPUBF16AmpOptimWrapper(OptimWrapper):
    """OptimWrapper whose forward runs under bfloat16 autocast on the CPU.

    Selected by ``tools/train.py --amp`` when no accelerator is present;
    takes the same arguments as mmengine's ``OptimWrapper``.
    """

    @contextmanager
    def optim_context(self, model: nn.Module):
        with super().optim_context(model), torch.autocast(
                device_type='cpu', dtype=torch.bfloat16):
            yield
