"""Compare the released presets with the authors' own code, in float64.

For each released network: the authors' model (``TransCNN.py`` /
``HAT_Net.py`` from a checkout of ``github.com/yun-liu/HAT-Net``, given by
``--code-dir``; they import ``timm``, which must be installed) gets random
weights, its BN statistics are measured on one batch (a train-mode pass
with cumulative averages), and on another batch its four stage outputs and
logits are compared with ours (the same weights through
:func:`mmtranscnn.models.released.convert_released`) and with the plain
reference of ``tests/released_reference.py``. Prints the largest relative
error ``||a - b|| / ||b||`` per pair. Nothing is downloaded; the authors'
code is not part of this repository.

    python tools/misc/compare_with_released.py --code-dir ../HAT-Net
"""
import argparse
import os.path as osp
import sys

import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, osp.join(REPO, 'tests'))

from mmtranscnn.models import TransCNN  # noqa: E402
from mmtranscnn.models.released import RELEASED, convert_released  # noqa
from released_reference import Reference  # noqa: E402

from released_code import BUILDERS, load_module  # noqa: E402  (tools/misc)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def randomise(model, seed=0):
    """Weights scaled by fan-in, norm scales near 1, small biases; residual
    branches end small, so that the random network is not chaotic."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            x = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if p.dim() == 1:
                x = 1 + 0.1 * x if name.endswith('weight') else 0.1 * x
            else:
                x = x / p[0].numel() ** 0.5
            if name.endswith(('attn.proj.weight', 'conv.conv3.1.weight')):
                x = 0.2 * x
            p.copy_(x)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one batch, its stats


def compare(preset, module, batch=2):
    _, builder = BUILDERS[preset]
    theirs = getattr(module, builder)().double()
    randomise(theirs)
    size = RELEASED[preset].input_size
    gen = torch.Generator().manual_seed(1)
    xa, xb = (torch.randn(batch, 3, size, size, generator=gen,
                          dtype=torch.float64) for _ in range(2))
    theirs.train()
    with torch.no_grad():
        theirs(xa)  # measures the BN statistics (nothing for GroupNorm)
    theirs.eval()
    feats = []
    hooks = [theirs.blocks[s][-1].register_forward_hook(
        lambda m, i, o: feats.append(o)) for s in range(4)]
    with torch.no_grad():
        their_logits = theirs(xb)
    for hook in hooks:
        hook.remove()
    sd = {k: v.clone() for k, v in theirs.state_dict().items()}
    backbone, fc, _ = convert_released(sd)
    ours = TransCNN(preset).double().eval()
    ours.load_state_dict(backbone, strict=True)
    with torch.no_grad():
        outs = ours(xb)
    logits = torch.nn.functional.linear(outs[-1].mean((2, 3)),
                                        fc['fc.weight'], fc['fc.bias'])
    arch = TransCNN.arch_zoo[preset]
    ref_outs, ref_logits = Reference(
        sd, arch['variant'], arch['head_dim'],
        [g or 1 for g in arch['grid_sizes']], list(arch['pool_ratios']))(xb)

    def worst(a, a_logits, b, b_logits):
        return max([rel(x, y) for x, y in zip(a, b)] +
                   [rel(a_logits, b_logits)])

    return dict(size=size,
                ours_vs_released=worst(outs, logits, feats, their_logits),
                ours_vs_reference=worst(outs, logits, ref_outs, ref_logits),
                reference_vs_released=worst(ref_outs, ref_logits, feats,
                                            their_logits))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--code-dir', required=True,
                        help='folder holding TransCNN.py and HAT_Net.py')
    parser.add_argument('--presets', nargs='+', default=list(BUILDERS),
                        choices=list(BUILDERS))
    args = parser.parse_args()
    modules = {}
    for preset in args.presets:
        filename, _ = BUILDERS[preset]
        if filename not in modules:
            modules[filename] = load_module(osp.join(args.code_dir, filename))
        result = compare(preset, modules[filename])
        print(preset, ' '.join(f'{k}={v:.3g}' if isinstance(v, float) else
                               f'{k}={v}' for k, v in result.items()),
              flush=True)


if __name__ == '__main__':
    main()
