"""A DistributedDataParallel wrapper that also accepts models on the CPU.

mmengine's Runner wraps the model as
``MMDistributedDataParallel(module, device_ids=[LOCAL_RANK])``. PyTorch's DDP
refuses ``device_ids`` for a module whose parameters live on the CPU
("device_ids can only be None or contain a single element" / "... CPU
modules"), so distributed training on a CPU-only machine fails there. The
wrapper below is the same mmengine wrapper with two CPU-only adjustments;
on a GPU it behaves exactly like ``MMDistributedDataParallel``.
"""
import logging

import torch
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS
from torch import nn


def _module_device(module: nn.Module) -> torch.device:
    """Device of the module's first parameter (CPU for a module without)."""
    for param in module.parameters():
        return param.device
    return torch.device('cpu')


def _has_sync_bn(module: nn.Module) -> bool:
    """Whether any layer is a (torch or mmcv) SyncBatchNorm."""
    return any('SyncBatchNorm' in type(m).__name__ for m in module.modules())


# Registered in mmengine's root registry so that every codebase scope (mmdet,
# mmseg, mmpretrain: their MODEL_WRAPPERS are children of it) can build it.
@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that works for CPU processes too.

    For a module on the CPU:

    - ``device_ids`` and ``output_device`` are dropped, because DDP accepts
      them only for single-device CUDA modules (the Runner always passes
      ``device_ids=[LOCAL_RANK]``). Gradients are then all-reduced by the
      process group's backend (gloo).
    - SyncBatchNorm layers are reverted to plain BatchNorm with a warning:
      torch's and mmcv's SyncBatchNorm only run on accelerators, so on the
      CPU each process keeps its own batch statistics.

    For a module on an accelerator nothing changes.

    Args:
        module (nn.Module): The model to wrap.
        detect_anomalous_params (bool): See ``MMDistributedDataParallel``.
            Defaults to False.
        **kwargs: Passed to ``torch.nn.parallel.DistributedDataParallel``.
    """

    def __init__(self,
                 module: nn.Module,
                 detect_anomalous_params: bool = False,
                 **kwargs) -> None:
        if _module_device(module).type == 'cpu':
            kwargs.pop('device_ids', None)
            kwargs.pop('output_device', None)
            if _has_sync_bn(module):
                print_log(
                    'SyncBatchNorm runs only on accelerators; on the CPU it '
                    'is replaced by BatchNorm (per-process statistics).',
                    logger='current', level=logging.WARNING)
                module = revert_sync_batchnorm(module)
        super().__init__(
            module=module,
            detect_anomalous_params=detect_anomalous_params,
            **kwargs)
