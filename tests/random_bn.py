"""Test helper: BatchNorm layers with non-trivial statistics and weights."""
import torch


def randomise_bn(model):
    """Give every BatchNorm2d of ``model`` random running statistics and
    affine weights (fixed seed), so folding and fusion are really tested.

    Args:
        model: any module.
    """
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * .1)
            m.running_var.copy_(torch.rand(n, generator=gen) + .5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + .5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * .1)
