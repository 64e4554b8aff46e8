"""Parameter and FLOP counting with the conventions of the paper's tables.

FLOPs are multiply-adds, counted by mmengine's ``FlopAnalyzer`` (the fvcore
convention: one fused multiply-add = one FLOP; convs, linears, matmuls,
norms and upsampling counted; element-wise ops, pooling and softmax not).
mmengine has no handle for ``aten::scaled_dot_product_attention``, so the
attention matmuls would silently count zero: :func:`sdpa_flop_handle` adds
them (Q K^T and attn V: ``B*heads*Lq*Lk*(d_qk + d_v)`` multiply-adds).
"""
from collections import Counter
from typing import Any, List, Sequence, Tuple, Union

import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import get_shape
from torch import nn


def sdpa_flop_handle(inputs: List[Any], outputs: List[Any]) -> Counter:
    """FLOPs of ``scaled_dot_product_attention`` from its traced inputs."""
    q_shape, k_shape, v_shape = (get_shape(v) for v in inputs[:3])
    *batch, lq, dq = q_shape
    lk = k_shape[-2]
    dv = v_shape[-1]
    n = 1
    for b in batch:
        n *= b
    return Counter({'scaled_dot_product_attention': n * lq * lk * (dq + dv)})


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters()
               if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module,
                input_shape: Union[Sequence[int], Tuple[int, ...]] = (
                    1, 3, 224, 224),
                by_module: bool = False,
                by_operator: bool = False) -> Union[int, dict]:
    """Multiply-adds of one forward pass of ``model`` on a zero input.

    Args:
        model: any module taking one image tensor (backbone or classifier
            with ``mode='tensor'`` handled by the caller).
        input_shape: the input's shape, batch included.
        by_module: return ``{module_name: flops}`` instead of the total.
        by_operator: return ``{operator: flops}`` (e.g. ``conv``,
            ``linear``, ``scaled_dot_product_attention``) instead.
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device('cpu')
    # With gradients on, the backbone runs its modules as they are (without
    # them it folds each eval-mode BN into its conv, models/memory.py), so
    # the count is the network's own, in any grad mode of the caller.
    inputs = (torch.zeros(tuple(input_shape), device=device,
                          requires_grad=True), )
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle('aten::scaled_dot_product_attention',
                           sdpa_flop_handle)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    try:
        with torch.enable_grad():
            if by_module:
                return analyzer.by_module()
            if by_operator:
                return dict(analyzer.by_operator())
            return analyzer.total()
    finally:
        model.train(was_training)
