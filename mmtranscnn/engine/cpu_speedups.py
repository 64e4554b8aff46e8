"""The CPU training speed-up, applied to a built model from outside the
model files (as mmcv's ``fuse_conv_bn`` is); it changes how attention is
computed, never what. ``tools/train.py`` applies :func:`speed_up_cpu_training`
to CPU runs (unless ``--no-cpu-speedups``): H-MHSA attends over grids of at
most :data:`MATMUL_MAX_KEYS` keys with plain matmuls, cheaper there than
SDPA's fused kernel (a fixed rule by shape, the same in every process and
rank). docs/cpu_performance.md says what it saves.
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


def speed_up_cpu_training(model: nn.Module) -> Dict[str, int]:
    """Apply the training speed-up to ``model`` in place (parameters,
    state dict and results stay as they are); returns how many H-MHSA
    modules were changed, as ``{'attention': n}``.

    Args:
        model: a built model (a TransCNN backbone, or a model holding one).
    """
    counts = dict(attention=0)
    for module in model.modules():
        if isinstance(module, HMHSA):
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

