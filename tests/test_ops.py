"""``mmtranscnn.ops``: layers and functions with a kernel of their own for
one kind of device compute what the torch layer or function they stand for
computes.

``attention`` (plain matmuls for grids of at most 64 keys on the CPU)
against SDPA: outputs and the gradients of q, k and v, with and without a
mask, in float64, float32 and bf16, and SDPA itself for more keys, with
dropout and when traced.

``DepthwiseConv2d``'s CPU backward (the input gradient as a forward conv with
the flipped kernel, the weight gradient from 3x3 pieces) against the plain
``nn.Conv2d``: outputs and every gradient in float64 to 1e-10 and in
float32, under bf16 autocast, and the plain conv wherever the kernel is not
for it (other settings, no gradient, tracing).
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from mmtranscnn.models import TransCNN
from mmtranscnn.ops import (MATMUL_MAX_KEYS, DepthwiseConv2d, attention,
                            depthwise_weight_grad)


def rel_err(got, want):
    return ((got - want).norm() / want.norm()).item()


def _pair(channels=12, k=5, bias=True, dtype=torch.float32, **kwargs):
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(channels, channels, k, padding=k // 2,
                            groups=channels, bias=bias, **kwargs).to(dtype)
    fast = DepthwiseConv2d(channels, channels, k, padding=k // 2,
                           groups=channels, bias=bias, **kwargs).to(dtype)
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def _grads(module, x, grad=None):
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    out = module(x)
    out.backward(torch.ones_like(out) if grad is None else grad)
    return out, [x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize('k', [5, 7])
@pytest.mark.parametrize('shape', [(2, 8, 9, 13), (1, 16, 20, 7)])
def test_depthwise_weight_grad_equals_autograd(k, shape):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(shape[1], 1, k, k, dtype=torch.float64,
                    requires_grad=True)
    out = F.conv2d(x, w, padding=k // 2, groups=shape[1])
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    got = depthwise_weight_grad(x.detach(), grad_out, k)
    assert rel_err(got, w.grad) <= 1e-10


@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-10),
                                       (torch.float32, 1e-5)])
@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.parametrize('layout', [torch.contiguous_format,
                                    torch.channels_last])
def test_gradients_equal_the_plain_conv(dtype, tol, bias, layout):
    plain, fast = _pair(bias=bias, dtype=dtype)
    x = torch.randn(2, 12, 11, 17, dtype=dtype).contiguous(
        memory_format=layout)
    grad = torch.randn_like(x)
    out_p, grads_p = _grads(plain, x, grad)
    out_f, grads_f = _grads(fast, x, grad)
    assert out_f.grad_fn.name() == '_DepthwiseConvFnBackward'
    assert rel_err(out_f, out_p) <= tol
    for got, want in zip(grads_f, grads_p):
        assert rel_err(got, want) <= tol


def test_under_bf16_autocast_it_matches_the_plain_conv():
    plain, fast = _pair()
    x = torch.randn(2, 12, 11, 17)
    grad = torch.randn(2, 12, 11, 17)
    _, want = _grads(plain, x, grad)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out_p, lo_p = _grads(plain, x, grad)
        out_f, lo_f = _grads(fast, x, grad)
    assert out_f.dtype == out_p.dtype == torch.bfloat16
    for got, ref, exact in zip(lo_f, lo_p, want):
        assert got.dtype == ref.dtype
        err_f = rel_err(got.float(), exact)
        assert err_f <= max(2 * rel_err(ref.float(), exact), 2e-2)


@pytest.mark.parametrize('settings', [
    dict(k=3), dict(k=5, stride=2), dict(k=5, dilation=2),
    dict(k=5, padding_mode='reflect')])
def test_other_settings_run_the_plain_conv(settings):
    k = settings.pop('k')
    plain, fast = _pair(k=k, **settings)
    assert not fast.fast_backward()
    out, _ = _grads(fast, torch.randn(1, 12, 10, 10))
    assert out.grad_fn.name() != '_DepthwiseConvFnBackward'


def test_without_gradients_or_traced_it_is_the_plain_conv():
    plain, fast = _pair()
    x = torch.randn(1, 12, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=0, atol=0)
    traced = torch.jit.trace(fast, x.requires_grad_(), check_trace=False)
    kinds = {n.kind() for n in traced.graph.nodes()}
    assert 'aten::_convolution' in kinds
    assert not any('Python' in kind for kind in kinds)


def test_the_built_model_uses_it_for_its_5x5_depthwise_convs():
    """Every entry point builds the IRBs with it: the 5x5 depthwise convs
    of stages 1 and 3 take the fast backward, the 3x3 ones the plain one,
    and the state dict is the plain conv's."""
    model = TransCNN('small', grid_sizes=(8, 4, 2, 0))
    convs = [m for m in model.modules() if isinstance(m, DepthwiseConv2d)]
    depths = model.arch_settings['depths']
    assert len(convs) == sum(depths)  # one per IRB
    assert sum(c.fast_backward() for c in convs) == depths[0] + depths[2]
    key = 'stages.0.0.irb.depthwise.conv.weight'
    assert key in model.state_dict()
    # the same results as a model whose depthwise convs are nn.Conv2d
    plain = copy.deepcopy(model)
    for conv in plain.modules():
        if isinstance(conv, DepthwiseConv2d):
            conv.__class__ = torch.nn.Conv2d
    model.train(), plain.train()
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    model.double(), plain.double()
    results = []
    for net in (model, plain):
        outs = net(x)
        sum(o.square().mean() for o in outs).backward()
        results.append((outs, [p.grad for p in net.parameters()]))
    for a, b in zip(results[0][0], results[1][0]):
        assert rel_err(a, b) <= 1e-10
    for a, b in zip(results[0][1], results[1][1]):
        if b is not None and b.norm() > 0:
            assert rel_err(a, b) <= 1e-10


def test_train_tool_still_accepts_the_old_speed_up_switch():
    """``--no-cpu-speedups`` switched off a tools-only speed-up that is
    gone; command lines that pass it still run, with a warning."""
    from tool_modules import load_tool
    train = load_tool('tools/train.py')
    with pytest.warns(FutureWarning, match='does nothing'):
        args = train.parse_args(['cfg.py', '--no-cpu-speedups'])
    assert args.config == 'cfg.py'


def _qkv(keys, dtype, heads=2, queries=9):
    torch.manual_seed(0)
    q = torch.randn(6, heads, queries, 8, dtype=dtype)
    k = torch.randn(6, heads, keys, 8, dtype=dtype)
    v = torch.randn(6, heads, keys, 8, dtype=dtype)
    mask = torch.rand(6, 1, 1, keys) > 0.3
    mask[..., 0] = True  # (every grid has a real key)
    return q, k, v, mask


def _attend(fn, q, k, v, mask, grad):
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, attn_mask=mask)
    out.backward(grad)
    return out, [q.grad, k.grad, v.grad]


@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-10),
                                       (torch.float32, 1e-5),
                                       (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize('masked', [False, True])
@pytest.mark.parametrize('keys', [4, MATMUL_MAX_KEYS, MATMUL_MAX_KEYS + 1])
def test_attention_equals_sdpa(dtype, tol, masked, keys):
    q, k, v, mask = _qkv(keys, dtype)
    mask = mask if masked else None
    grad = torch.randn_like(q)
    out, grads = _attend(attention, q, k, v, mask, grad)
    want, want_grads = _attend(F.scaled_dot_product_attention, q, k, v,
                               mask, grad)
    fused = 'ScaledDotProduct' in out.grad_fn.name()
    assert fused == (keys > MATMUL_MAX_KEYS)  # matmuls for small grids
    exact = torch.promote_types(dtype, torch.float32)
    assert rel_err(out.to(exact), want.to(exact)) <= tol
    for got, ref in zip(grads, want_grads):
        assert rel_err(got.to(exact), ref.to(exact)) <= tol


def test_attention_is_sdpa_with_dropout_and_when_traced():
    q, k, v, mask = _qkv(16, torch.float32)
    torch.manual_seed(1)
    got = attention(q, k, v, attn_mask=mask, dropout_p=0.5)
    torch.manual_seed(1)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                          dropout_p=0.5)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    traced = torch.jit.trace(lambda a, b, c: attention(a, b, c), (q, k, v))
    kinds = {n.kind() for n in traced.graph.nodes()}
    assert 'aten::scaled_dot_product_attention' in kinds
