"""Test helper: the backbone's forward as it was before the memory module
(``mmtranscnn/models/memory.py``): every ConvModule called as a module, in
NCHW memory. Written out against a built model's modules, so a model with
the same weights computes today's function through it.

Frozen on purpose: the equality tests compare the model against this, not
against the code they test.
"""
import copy

import torch
from torch.utils.checkpoint import checkpoint

from mmtranscnn.models.blocks import (ConvStem, InvertedResidual,
                                      TransCNNBlock)
from mmtranscnn.models.released_blocks import (HATNetInvertedResidual,
                                               ReleasedStem)
from mmtranscnn.ops import DepthwiseConv2d


def stem(module, x):
    """ConvStem / ReleasedStem: two ConvModules."""
    return module.conv2(module.conv1(x))


def irb(module, x):
    """InvertedResidual / HATNetInvertedResidual (Fig. 1c)."""
    y = module.project(module.depthwise(module.expand(x)))
    return x + module.drop_path(y)


def block(module, x):
    """TransCNNBlock: H-MHSA, then the IRB; with_cp as it was."""
    def inner(t):
        return irb(module.irb, module.attn(t))

    if module.with_cp and x.requires_grad:
        return checkpoint(inner, x, use_reentrant=False)
    return inner(x)


def backbone(model, x, to_output=lambda t: t.contiguous()):
    """TransCNN.forward as it was: NCHW input, the stage outputs of
    ``out_indices`` NCHW-contiguous (``to_output``)."""
    assert isinstance(model.stem, (ConvStem, ReleasedStem))
    x = stem(model.stem, x)
    outs = []
    for i, stage in enumerate(model.stages[:max(model.out_indices) + 1]):
        for layer in stage:
            if isinstance(layer, TransCNNBlock):
                assert isinstance(layer.irb,
                                  (InvertedResidual, HATNetInvertedResidual))
                x = block(layer, x)
            else:  # a downsampling block: unchanged
                x = layer(x)
        if i in model.out_indices:
            outs.append(to_output(x))
    return tuple(outs)


def nchw_copy(model):
    """A deep copy of ``model`` with its weights back in NCHW memory and
    its depthwise convs plain ``nn.Conv2d`` s (as they were built before
    ``mmtranscnn.ops``)."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, DepthwiseConv2d):
            module.__class__ = torch.nn.Conv2d
    return twin.to(memory_format=torch.contiguous_format)
