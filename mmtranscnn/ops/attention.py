"""Attention with SDPA's signature whose CPU kernel for small grids is plain
matmuls.

On the CPU, SDPA's fused kernel costs more than two matmuls and a softmax
when each query sees few keys: H-MHSA's grids of 4 to 64 keys (8x8) at
level 0. For a RetinaNet-TransCNN-Small train step at 160x160, batch 8,
under bf16 autocast, the matmuls saved 21% of the backbone's step on a
Zen 4 CPU. :func:`attention` takes them there, by a fixed rule on the
number of keys (the same in every process and rank); everywhere else (GPUs,
more keys, dropout, tracing, export, ``torch.compile``) it is SDPA.
"""
from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mmtranscnn.utils.tracing import is_traced

#: Grids with at most this many keys (8 x 8) attend through plain matmuls
#: on the CPU.
MATMUL_MAX_KEYS = 64

#: SDPA itself, held where mmdeploy's export does not replace it: mmdeploy
#: swaps every module-level reference to ``F.scaled_dot_product_attention``
#: for a version that fails on boolean masks, and the TorchScript exporter
#: translates SDPA as it is (opset 14 on).
_sdpa = partial(F.scaled_dot_product_attention)


def matmul_attention(q: Tensor, k: Tensor, v: Tensor,
                     attn_mask: Optional[Tensor] = None) -> Tensor:
    """``softmax(q k^T / sqrt(d) + mask) v`` with plain matmuls, the
    function SDPA computes (a boolean mask marks the keys that may be
    seen; the softmax runs in float32 at least, as SDPA's CPU kernel's
    does)."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1]**-0.5
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float('-inf'))
    exact = torch.promote_types(scores.dtype, torch.float32)
    return scores.softmax(-1, dtype=exact).to(v.dtype) @ v


def attention(q: Tensor, k: Tensor, v: Tensor,
              attn_mask: Optional[Tensor] = None,
              dropout_p: float = 0.) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p)``;
    on the CPU, for at most :data:`MATMUL_MAX_KEYS` keys without dropout,
    through :func:`matmul_attention`."""
    if (q.device.type == 'cpu' and dropout_p == 0.
            and k.shape[-2] <= MATMUL_MAX_KEYS and not is_traced()):
        return matmul_attention(q, k, v, attn_mask)
    return _sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)


__all__ = ['MATMUL_MAX_KEYS', 'attention', 'matmul_attention']
