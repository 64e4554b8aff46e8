"""oneDNN fast paths for CPU inference, shared by the conv blocks and H-MHSA.

Eager PyTorch does not call oneDNN's fused kernels by itself (torch.compile
does). The blocks call them where they compute the same function as the
plain modules: see :func:`applies`.
"""
import functools
from typing import Callable, Optional

import torch
from torch import Tensor


@functools.lru_cache(maxsize=None)
def kernel(name: str) -> Optional[Callable]:
    """``torch.ops.mkldnn.<name>``, or None where this torch lacks it.

    Args:
        name: the operator, e.g. ``'_convolution_pointwise'``.
    """
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return getattr(torch.ops.mkldnn, name)
    except (AttributeError, RuntimeError):
        return None


def applies(x: Tensor) -> bool:
    """Whether a oneDNN inference kernel may replace the plain ops on ``x``:
    CPU float32, no autograd, no autocast, not while tracing (FLOP counters
    must see the plain ops)."""
    return (not torch.is_grad_enabled() and x.device.type == 'cpu'
            and x.dtype == torch.float32 and not torch.jit.is_tracing()
            and not torch.is_autocast_enabled('cpu'))


def add_residual(x: Tensor, branch: Tensor) -> Tensor:
    """``x + branch``; without autograd the sum goes into ``branch``, a map
    the caller just made, instead of a new allocation.

    Args:
        x: the residual input.
        branch: the freshly computed branch output (same shape).
    """
    if not torch.is_grad_enabled():
        return branch.add_(x)
    return x + branch
