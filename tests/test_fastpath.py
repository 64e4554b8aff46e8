"""The CPU fast paths (:mod:`mmtranscnn.models.fastpath`) equal the plain
paths, take effect only where they apply, and obey their switch.

``.ci/run`` runs this file twice: on the CPU as it is, and with ATen,
oneDNN and MKL (the GEMMs) limited to AVX2 (``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``), since users' CPUs
differ from CI's.
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mmtranscnn.models import HMHSA, TransCNN, fastpath
from mmtranscnn.models.fastpath import (ConvNormAct, DepthwiseConv2d,
                                        Linear)
from random_bn import randomise_bn


@pytest.fixture
def kernel_calls(monkeypatch):
    """Records the name of every oneDNN kernel the fast paths call."""
    calls = []
    real = fastpath.kernel

    def counting(name):
        fn = real(name)
        if fn is None:
            return None

        def call(*args):
            calls.append(name)
            return fn(*args)
        return call

    monkeypatch.setattr(fastpath, 'kernel', counting)
    return calls


def _eval_model(act_cfg=dict(type='SiLU'), batch=2):
    """Eval-mode TransCNN-Small with random BN statistics and an input whose
    size is no multiple of the grids."""
    torch.manual_seed(0)
    model = TransCNN('small', grid_sizes=(4, 2, 2, 0), act_cfg=act_cfg)
    randomise_bn(model)
    return model.eval(), torch.randn(batch, 3, 75, 93)


def _assert_all_close(a, b, tol=1e-4):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


def test_onednn_is_available_here():
    """The equality tests below only mean something if the kernels run."""
    assert fastpath.is_enabled()
    assert fastpath.kernel('_convolution_pointwise') is not None
    assert fastpath.kernel('_linear_pointwise') is not None


# -- each shortcut equals its plain layer -----------------------------------
@pytest.mark.parametrize('act,kernel,groups,stride', [
    (dict(type='SiLU'), 1, 1, 1), (dict(type='SiLU'), 5, 8, 1),
    (None, 3, 1, 2), (dict(type='ReLU'), 3, 1, 1),
    (dict(type='GELU'), 1, 1, 1), (dict(type='GELU', approximate='tanh'),
                                   3, 8, 1)])
def test_fused_conv_norm_act_equals_the_plain_module(kernel_calls, act,
                                                     kernel, groups, stride):
    torch.manual_seed(0)
    module = ConvNormAct(8, 16 if groups == 1 else 8, kernel, stride=stride,
                         padding=kernel // 2, groups=groups,
                         norm_cfg=dict(type='BN'), act_cfg=act,
                         efficient_conv_bn_eval=True)
    randomise_bn(module)
    module.eval()
    x = torch.randn(2, 8, 13, 11).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad():
        assert fastpath._folds(module, x)
        fused = fastpath._onednn_conv(module, x,
                                      fastpath._fused_activation(module))
        assert kernel_calls == ['_convolution_pointwise']
        with fastpath.enabled(False):
            plain = module(x)
        tuned = module(x)  # whichever the tuner picked
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tuned, plain, rtol=1e-5, atol=1e-5)
    # Where it does not apply, the plain module runs.
    kernel_calls.clear()
    module(x)  # gradients enabled
    module.train()
    with torch.no_grad():
        module(x)  # BN with batch statistics
    assert kernel_calls == []


@pytest.mark.parametrize('kw', [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=5, padding=2, groups=8, bias=True,
         conv_cfg=dict(type=DepthwiseConv2d)),
    dict(kernel_size=3, padding=1, stride=2,
         norm_cfg=dict(type='BN', affine=False)),
    dict(kernel_size=3, padding=1, padding_mode='reflect'),
    dict(kernel_size=1, order=('norm', 'conv', 'act')),
    dict(kernel_size=3, padding=1, act_cfg=None, norm_cfg=None)])
def test_conv_norm_act_equals_mmcv_convmodule(kw):
    """Bit-identical to mmcv's ConvModule (same state dict) in eval mode,
    with and without autograd and the fast paths, and in train mode;
    gradients through the folded BN (norm_eval training) equal too."""
    from mmcv.cnn import ConvModule
    kw = dict(dict(norm_cfg=dict(type='BN'), act_cfg=dict(type='SiLU'),
                   efficient_conv_bn_eval=True), **kw)
    torch.manual_seed(0)
    ours = ConvNormAct(8, 8, **kw)
    if ours.with_norm:  # statistics (and affine weights) off the defaults
        with torch.no_grad():
            for t in [ours.norm.running_mean, ours.norm.running_var] + list(
                    ours.norm.parameters()):
                t.uniform_(.5, 1.5)
    theirs = ConvModule(8, 8, **kw)
    theirs.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(2, 8, 11, 13).contiguous(
        memory_format=torch.channels_last)
    for mode in ('eval', 'train'):
        getattr(ours, mode)()
        getattr(theirs, mode)()
        with torch.no_grad():
            want = theirs(x)
            with fastpath.enabled(False):
                assert torch.equal(ours(x), want), mode
            if mode == 'train' or not fastpath._folds(ours, x):
                assert torch.equal(ours(x), want), mode  # no kernel choice
        xs = [x.clone().requires_grad_() for _ in range(2)]
        outs = [m(xi) for m, xi in zip((ours, theirs), xs)]
        assert torch.equal(outs[0].detach(), outs[1].detach()), mode
        grads = [torch.autograd.grad(o.square().sum(),
                                     [xi] + list(m.parameters()))
                 for o, xi, m in zip(outs, xs, (ours, theirs))]
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_fused_linear_equals_the_plain_layer(kernel_calls):
    torch.manual_seed(0)
    layer = Linear(24, 40)
    x = torch.randn(3, 7, 24)
    with torch.no_grad():
        fused = fastpath._onednn_linear(layer, x)
        tuned = layer(x)
    assert kernel_calls[0] == '_linear_pointwise'
    plain = F.linear(x, layer.weight, layer.bias)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tuned, plain, rtol=1e-5, atol=1e-5)
    assert set(layer.state_dict()) == {'weight', 'bias'}


@pytest.mark.parametrize('lq,lk,masked', [(4, 4, False), (16, 16, True),
                                          (64, 64, True), (256, 16, False),
                                          (49, 49, False)])
def test_matmul_attention_equals_sdpa(lq, lk, masked):
    torch.manual_seed(0)
    q = torch.randn(5, 2, lq, 32)
    k, v = torch.randn(2, 5, 2, lk, 32).unbind(0)
    mask = None
    if masked:
        mask = torch.rand(5, 1, 1, lk) > .3
        mask[..., 0] = True  # no all-masked rows (callers guarantee it)
    torch.testing.assert_close(
        fastpath.matmul_attention(q, k, v, mask),
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('lq,lk,masked', [(4, 4, False), (16, 16, True),
                                          (64, 64, False), (256, 16, False)])
def test_matmul_attention_under_bf16_autocast(lq, lk, masked):
    """In bf16 mixed-precision training (q, k, v from autocast's linears)
    the matmul form and its gradients stay within bfloat16's precision of
    the exact attention of those operands, as SDPA's do."""
    torch.manual_seed(0)
    q = torch.randn(5, 2, lq, 64).bfloat16().requires_grad_()
    k, v = (t.bfloat16().requires_grad_()
            for t in torch.randn(2, 5, 2, lk, 64).unbind(0))
    mask = None
    if masked:
        mask = torch.rand(5, 1, 1, lk) > .3
        mask[..., 0] = True
    g = torch.randn(5, 2, lq, 64).bfloat16()
    exact_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out = F.scaled_dot_product_attention(*exact_in, attn_mask=mask)
    exact = (out, ) + torch.autograd.grad(out, exact_in, g.double())
    for attention in (fastpath.matmul_attention, fastpath._sdpa):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = attention(q, k, v, mask)
        got = (out, ) + torch.autograd.grad(out, (q, k, v), g)
        for a, ref in zip(got, exact):
            assert a.dtype == torch.bfloat16
            torch.testing.assert_close(
                a.double(), ref, rtol=1.6e-2,
                atol=1.6e-2 * ref.abs().max().item())


def test_training_attention_is_chosen_under_bf16_autocast():
    fastpath.reset_tuning()
    torch.manual_seed(0)
    m = HMHSA(32, grid_sizes=(4, ), head_dim=16).train()
    x = torch.randn(2, 32, 8, 8, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = m(x)
    out.float().square().mean().backward()
    keys = fastpath.tuning_report()['attention-train']
    assert keys and {key[-1] for key in keys} == {torch.bfloat16}
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_shape_tuner_keeps_the_fastest_per_shape_class():
    import time
    calls = []

    def slow(x):
        calls.append('slow')
        time.sleep(0.002)
        return x + 1

    def fast(x):
        calls.append('fast')
        return x + 1

    tuner = fastpath.ShapeTuner('toy', dict(slow=slow, fast=fast))
    assert tuner('a', 1) == 2
    assert tuner.choices == {'a': ('fast', 'measurement')}
    calls.clear()
    assert tuner('a', 5) == 6
    assert calls == ['fast']  # measured once per shape class
    tuner('b', 1)
    assert set(tuner.choices) == {'a', 'b'}
    assert fastpath.size_class(1000) == fastpath.size_class(1023) != \
        fastpath.size_class(1024)


@pytest.mark.parametrize('act', ['SiLU', 'GELU', 'ReLU'])
def test_backbone_fast_inference_equals_plain(kernel_calls, act):
    """The whole backbone with and without the fast paths (GELU included:
    the fused kernel needs GELU's approximation named)."""
    model, x = _eval_model(dict(type=act))
    fastpath.reset_tuning()
    with torch.no_grad():
        fast = model(x)
        report = fastpath.tuning_report()
        assert report['conv'] and report['linear'] and report['attention']
        assert '_convolution_pointwise' in kernel_calls
        assert '_linear_pointwise' in kernel_calls
        n = len(kernel_calls)
        with fastpath.enabled(False):
            plain = model(x)
        assert len(kernel_calls) == n
        again = model(x)  # with the choices made
    _assert_all_close(fast, plain)
    _assert_all_close(again, plain)
    # and both equal the autograd forward
    _assert_all_close(fast, [o.detach() for o in model(x)])


def test_backbone_fast_training_equals_plain():
    """The depthwise backward shortcut gives the plain gradients."""
    torch.manual_seed(0)
    model = TransCNN('small', grid_sizes=(4, 2, 2, 0))
    x = torch.randn(2, 3, 64, 72)
    grads = []
    for on in (True, False):
        model.zero_grad()
        with fastpath.enabled(on):
            sum(o.square().mean() for o in model(x)).backward()
        grads.append({n: p.grad.clone()
                      for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][name], rtol=1e-3, atol=1e-5,
                                   msg=name)


# -- the switch --------------------------------------------------------------
def test_mkldnn_flag_switches_the_fast_paths_off(kernel_calls):
    model, x = _eval_model()
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
        assert not fastpath.is_enabled()
        model(x)
    assert kernel_calls == []
    dw = DepthwiseConv2d(4, 4, 5, padding=2, groups=4)
    xg = torch.randn(1, 4, 8, 8, requires_grad=True)
    with torch.backends.mkldnn.flags(enabled=False):
        assert not dw._fast_backward_applies(xg, dw.weight)
    assert dw._fast_backward_applies(xg, dw.weight)


def test_switch_and_context(kernel_calls):
    layer = Linear(8, 8)
    x = torch.randn(2, 8)
    fastpath.reset_tuning()
    with torch.no_grad():
        with fastpath.enabled(False):
            assert not fastpath.is_enabled()
            layer(x)
        assert kernel_calls == [] and fastpath.tuning_report()['linear'] == {}
        layer(x)
        assert kernel_calls and fastpath.tuning_report()['linear']
    with pytest.raises(TypeError, match='bool'):
        fastpath.set_enabled('no')


@pytest.mark.parametrize('value,expect', [('0', False), ('off', False),
                                          ('no', False), ('1', True),
                                          ('ON', True), ('', True)])
def test_environment_switch_values(monkeypatch, value, expect):
    monkeypatch.setenv(fastpath.ENV_VAR, value)
    assert fastpath._env_enabled() is expect
    monkeypatch.setenv(fastpath.ENV_VAR, 'maybe')
    with pytest.raises(ValueError, match='MMTRANSCNN_FAST_PATHS must be'):
        fastpath._env_enabled()


def test_environment_switch_is_read_at_import():
    env = dict(os.environ, MMTRANSCNN_FAST_PATHS='0')
    out = subprocess.run(
        [sys.executable, '-c', 'from mmtranscnn.models import fastpath; '
         'print(fastpath.is_enabled())'], env=env, capture_output=True,
        text=True, check=True)
    assert out.stdout.strip() == 'False'


# (Tools below the JIT, FlopCounterMode and torch.export, seeing the plain
# ops: tests/test_no_sync.py.)


# -- depthwise conv backward --------------------------------------------------
@pytest.mark.parametrize('shape,k', [((2, 8, 13, 9), 5), ((1, 6, 7, 11), 7),
                                     ((1, 4, 3, 2), 5), ((2, 5, 6, 6), 9)])
@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('channels_last', [False, True])
def test_depthwise_backward_matches_conv2d(shape, k, bias, channels_last):
    torch.manual_seed(0)
    c = shape[1]
    conv = DepthwiseConv2d(c, c, k, padding=k // 2, groups=c,
                           bias=bias).double()
    x = torch.randn(*shape, dtype=torch.float64)
    if channels_last:  # the layout TransCNN runs in
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    assert conv._fast_backward_applies(x, conv.weight)
    g = torch.randn(*shape, dtype=torch.float64)
    params = [x, conv.weight] + ([conv.bias] if bias else [])
    got = torch.autograd.grad(conv(x), params, g)
    want = torch.autograd.grad(
        F.conv2d(x, conv.weight, conv.bias, padding=k // 2, groups=c),
        params, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_depthwise_fast_path_only_where_it_applies():
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    conv = DepthwiseConv2d(4, 4, 5, padding=2, groups=4)
    assert conv._fast_backward_applies(x, conv.weight)
    with torch.no_grad():
        assert not conv._fast_backward_applies(x, conv.weight)
    with fastpath.enabled(False):
        assert not conv._fast_backward_applies(x, conv.weight)
    assert not DepthwiseConv2d(4, 4, 3, padding=1, groups=4)\
        ._fast_backward_applies(x, conv.weight)  # oneDNN's 3x3 is fast
    assert not DepthwiseConv2d(4, 4, 5, padding=2, stride=2, groups=4)\
        ._fast_backward_applies(x, conv.weight)
    assert not DepthwiseConv2d(4, 8, 5, padding=2, groups=4)\
        ._fast_backward_applies(x, conv.weight)
    with torch.autocast('cpu', dtype=torch.bfloat16):  # mixed precision
        assert conv._fast_backward_applies(x, conv.weight)
    # The state dict is nn.Conv2d's.
    assert set(conv.state_dict()) == {'weight', 'bias'}


def _bf16_depthwise_grads(conv, x, g):
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = conv(x)
    params = [x, conv.weight] + ([conv.bias] if conv.bias is not None
                                 else [])
    return y, torch.autograd.grad(y, params, g)


@pytest.mark.parametrize('shape,k', [((2, 16, 13, 9), 5), ((1, 8, 7, 11), 7)])
@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('channels_last', [False, True])
def test_depthwise_backward_under_bf16_autocast(shape, k, bias,
                                                channels_last):
    """Under CPU autocast the fast backward runs in bfloat16, as the plain
    conv does: the same forward, and gradients as close to the exact ones
    (of the bf16-rounded operands) as bfloat16 allows."""
    torch.manual_seed(0)
    c = shape[1]
    conv = DepthwiseConv2d(c, c, k, padding=k // 2, groups=c, bias=bias)
    x = torch.randn(*shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    g = torch.randn(*shape).bfloat16()
    y, got = _bf16_depthwise_grads(conv, x, g)
    with fastpath.enabled(False):
        y_plain, plain = _bf16_depthwise_grads(conv, x, g)
    assert y.dtype == y_plain.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_plain, rtol=0, atol=0)
    assert [t.dtype for t in got] == [t.dtype for t in plain]  # fp32
    # The exact gradients of the operands the bf16 conv saw.
    x64 = x.detach().bfloat16().double().requires_grad_()
    w64 = conv.weight.detach().bfloat16().double().requires_grad_()
    b64 = None
    if bias:
        b64 = conv.bias.detach().bfloat16().double().requires_grad_()
    exact = torch.autograd.grad(
        F.conv2d(x64, w64, b64, padding=k // 2, groups=c),
        [t for t in (x64, w64, b64) if t is not None], g.double())
    for fast, slow, ref in zip(got, plain, exact):
        tol = dict(rtol=1.6e-2, atol=1.6e-2 * ref.abs().max().item())
        torch.testing.assert_close(slow.double(), ref, **tol)
        torch.testing.assert_close(fast.double(), ref, **tol)


def test_hmhsa_residual_in_place_only_without_autograd():
    torch.manual_seed(0)
    m = HMHSA(32, grid_sizes=(4, ), head_dim=16).eval()
    x = torch.randn(1, 32, 9, 10)
    keep = x.clone()
    with torch.no_grad():
        m(x)
    assert torch.equal(x, keep), 'the input must never be overwritten'


def test_isa_limit_is_in_force_when_asked():
    """scripts/test.sh reruns this file with ATen limited to AVX2; make sure
    the limit really reached torch (else that run would prove nothing)."""
    want = os.environ.get('ATEN_CPU_CAPABILITY')
    if want:
        assert torch.backends.cpu.get_cpu_capability() == want.upper()
    else:
        assert torch.backends.cpu.get_cpu_capability() in (
            'DEFAULT', 'AVX2', 'AVX512', 'VSX', 'ZVECTOR', 'SVE256')


def test_training_attention_choice_keeps_gradients_and_checkpointing():
    """In training the attention is also chosen by measurement (forward +
    backward timed on detached copies); gradients equal SDPA's, also with
    activation checkpointing around the block."""
    fastpath.reset_tuning()
    torch.manual_seed(0)
    plain = TransCNN('small', grid_sizes=(4, 2, 2, 0))
    ckpt = TransCNN('small', grid_sizes=(4, 2, 2, 0), with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 72)
    grads = []
    for model, on in ((plain, False), (plain, True), (ckpt, True)):
        model.train()
        model.zero_grad()
        with fastpath.enabled(on):
            sum(o.square().mean() for o in model(x)).backward()
        grads.append({n: p.grad.clone()
                      for n, p in model.named_parameters()})
    assert fastpath.tuning_report()['attention-train']
    for other in grads[1:]:
        for name, g in grads[0].items():
            torch.testing.assert_close(other[name], g, rtol=1e-3,
                                       atol=1e-5, msg=name)


# -- in-place activations under autograd -------------------------------------
def _ops_of(fn):
    from torch.profiler import profile
    with profile() as prof:
        fn()
    return [e.name for e in prof.events()]


@pytest.mark.parametrize('act', ['SiLU', 'HSwish', 'ReLU'])
def test_inplace_activation_runs_out_of_place_under_autograd(act):
    """Same output and gradients as mmcv's ConvModule, without the copy that
    recording an in-place SiLU costs (ReLU's in-place form needs none)."""
    from mmcv.cnn import ConvModule
    torch.manual_seed(0)
    kw = dict(norm_cfg=dict(type='BN'), act_cfg=dict(type=act))
    ours = ConvNormAct(8, 16, 3, padding=1, **kw).train()
    plain = ConvModule(8, 16, 3, padding=1, **kw).train()
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    outs, grads = [], []
    for m in (ours, plain):
        y = m(x)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append([x.grad.clone()] + [p.grad.clone()
                                         for p in m.parameters()])
        x.grad = None
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    ours_ops = _ops_of(lambda: ours(x))
    plain_ops = _ops_of(lambda: plain(x))
    if act == 'ReLU':
        assert ours_ops.count('aten::clone') == plain_ops.count('aten::clone')
    else:
        assert 'aten::clone' in plain_ops  # the copy this avoids
        assert 'aten::clone' not in ours_ops, ours_ops
    # without autograd, and with the fast paths off, ConvModule's own path
    with torch.no_grad():
        torch.testing.assert_close(ours(x), plain(x), rtol=0, atol=0)
    with fastpath.enabled(False):
        off_ops = _ops_of(lambda: ours(x))
    assert off_ops.count('aten::clone') == plain_ops.count('aten::clone')


def test_activation_not_last_keeps_convmodule_order():
    """ConvModule's order ('act', 'conv', 'norm') puts the activation
    first; the out-of-place form must not move it to the end."""
    from mmcv.cnn import ConvModule
    torch.manual_seed(0)
    kw = dict(norm_cfg=dict(type='BN'), act_cfg=dict(type='SiLU'),
              order=('act', 'conv', 'norm'))
    ours = ConvNormAct(8, 8, 3, padding=1, **kw).train()
    plain = ConvModule(8, 8, 3, padding=1, **kw).train()
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    torch.testing.assert_close(ours(x * 1), plain(x * 1), rtol=0, atol=0)


def test_depthwise_weight_grad_ignores_stale_buffer_contents(monkeypatch):
    """Only the padding of the work buffers is zero-filled: garbage in
    fresh memory must not reach the gradient."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 11)
    g = torch.randn(2, 6, 9, 11)
    want = torch.nn.grad.conv2d_weight(x, (6, 1, 5, 5), g, padding=2,
                                       groups=6)
    real_new_empty = torch.Tensor.new_empty

    def nan_filled(self, *args, **kwargs):
        return real_new_empty(self, *args, **kwargs).fill_(float('nan'))
    monkeypatch.setattr(torch.Tensor, 'new_empty', nan_filled)
    got = fastpath.depthwise_weight_grad(x, g, 5)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
