"""The CPU training speed-up computes what the plain model computes.

``mmtranscnn.engine.cpu_speedups`` is applied to built models by the tools;
here it is checked against the plain path: outputs and every
parameter's gradient in float32, the same under bf16 autocast (as close to
the float32 result as the plain path is), and the state dict unchanged;
and the tools' runner and test hook apply them.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from mmtranscnn.engine.cpu_speedups import (MATMUL_MAX_KEYS,
                                            matmul_attention,
                                            small_grid_attention,
                                            speed_up_cpu_training)
from mmtranscnn.models import HMHSA, TransCNN


def rel_err(got, want):
    return ((got - want).norm() / want.norm()).item()


@pytest.mark.parametrize('keys', [MATMUL_MAX_KEYS, MATMUL_MAX_KEYS + 1])
def test_small_grid_attention_equals_sdpa(keys):
    torch.manual_seed(0)
    q = torch.randn(6, 2, 9, 8)
    k = torch.randn(6, 2, keys, 8)
    v = torch.randn(6, 2, keys, 8)
    mask = torch.rand(6, 1, 1, keys) > 0.3
    mask[..., 0] = True
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = small_grid_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    plain = matmul_attention(q, k, v, mask)
    torch.testing.assert_close(plain, want, rtol=1e-5, atol=1e-6)


def test_hmhsa_attention_is_replaced_per_module():
    """The speed-up sets the attention of the modules it is given only."""
    a, b = HMHSA(16, 4, head_dim=8), HMHSA(16, 4, head_dim=8)
    speed_up_cpu_training(a)
    assert a.attention is small_grid_attention
    assert b.attention is F.scaled_dot_product_attention


def _trained_grads(model, x):
    outs = model(x)
    sum(o.square().mean() for o in outs).backward()
    return outs, {n: p.grad for n, p in model.named_parameters()
                  if p.grad is not None}


@pytest.mark.parametrize('arch', ['small', 'transcnn-v1-tiny'])
def test_training_speedups_give_the_plain_outputs_and_gradients(arch):
    torch.manual_seed(0)
    plain = TransCNN(arch, grid_sizes=(8, 4, 2, 0), drop_path_rate=0.)
    if arch != 'small':
        plain = TransCNN(arch, pool_ratios=(8, 4, 2, 0))
    plain.train()
    fast = copy.deepcopy(plain)
    depths = plain.arch_settings['depths']
    # every block's attention
    assert speed_up_cpu_training(fast) == dict(attention=sum(depths))
    assert fast.stem.conv1.conv.weight.is_contiguous(
        memory_format=torch.channels_last)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 3, 96, 128)
    outs_p, grads_p = _trained_grads(plain, x)
    outs_f, grads_f = _trained_grads(fast, x)
    for a, b in zip(outs_f, outs_p):
        assert rel_err(a, b) <= 1e-5
    assert grads_f.keys() == grads_p.keys()
    for name, grad in grads_p.items():
        # (a conv bias before a train-mode BN has a zero gradient: rounding
        # noise of ~1e-7 on both sides, hence the absolute floor)
        diff = (grads_f[name] - grad).norm().item()
        assert diff <= 1e-4 * grad.norm().item() + 1e-5, (name, diff)


def test_training_speedups_under_bf16_autocast():
    """As close to the float32 gradients as the plain model under autocast
    is (a bit of slack: the two round differently)."""
    torch.manual_seed(0)
    ref = TransCNN('small', grid_sizes=(8, 4, 2, 0)).train()
    plain, fast = copy.deepcopy(ref), copy.deepcopy(ref)
    speed_up_cpu_training(fast)
    x = torch.randn(2, 3, 64, 96)
    _, grads_ref = _trained_grads(ref, x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        _, grads_p = _trained_grads(plain, x)
        _, grads_f = _trained_grads(fast, x)
    for name, grad in grads_ref.items():
        err_p = rel_err(grads_p[name].float(), grad)
        err_f = rel_err(grads_f[name].float(), grad)
        assert err_f <= max(2 * err_p, 2e-2), name


def test_tools_runner_applies_them(tmp_path):
    """``build_runner(cfg, cpu_speedups=True)`` (tools/train.py and
    tools/test.py without a GPU) builds the model with the training
    speed-up."""
    from mmengine.config import Config

    from mmtranscnn.engine import CPUTrainingRunner, build_runner
    cfg = Config(dict(
        model=dict(type='mmtranscnn.TransCNN', arch='small',
                   out_indices=(3, )),
        work_dir=str(tmp_path), default_scope='mmtranscnn'))
    runner = build_runner(cfg, cpu_speedups=True)
    assert isinstance(runner, CPUTrainingRunner)
    assert sum(getattr(m, 'attention', None) is small_grid_attention
               for m in runner.model.modules()) == 8
    plain = build_runner(cfg.copy(), cpu_speedups=False)
    assert not any(getattr(m, 'attention', None) is small_grid_attention
                   for m in plain.model.modules())
