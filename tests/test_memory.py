"""The backbone's layout and memory choices (mmtranscnn/models/memory.py)
leave its function as it was.

- float64, random weights and BN statistics: outputs, every gradient (the
  input's included), running statistics and ``num_batches_tracked`` of
  the model as built equal those of the forward as it was
  (tests/frozen_blocks.py: ConvModules called one by one, NCHW memory) to
  1e-10 relative, in train and eval mode, for Table 1's and the eight
  released presets, and with ``with_cp``;
- ``conv_chain`` alone with BN, SyncBN (one process), GroupNorm, every
  order and several activations (with and without weights, in place or
  not); a random activation runs as plain modules;
- bf16 autocast, torch.compile and DDP (two gloo processes) give what the
  frozen forward gives;
- what autograd keeps for backward shrinks: an IRB keeps its input, its
  expansion's and its projection's outputs only; the maps are
  channels-last inside and NCHW outside;
- without gradients, every BN after a conv is folded into it.
"""
import pytest
import torch
from mmcv.cnn import ConvModule
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import mmtranscnn  # noqa: F401  (registers the models)
from mmtranscnn.models import TransCNN
from mmtranscnn.models.blocks import InvertedResidual
from mmtranscnn.models.memory import MAP_LAYOUT, conv_chain, to_nchw
from mmtranscnn.models.released import RELEASED

import frozen_blocks

PRESETS = ['small', 'base'] + list(RELEASED)
TOLERANCE = 1e-10


def relative_error(a, b):
    scale = b.abs().max().clamp_min(torch.finfo(b.dtype).tiny)
    return ((a - b).abs().max() / scale).item()


def randomise_norms(model, seed=1):
    """Random affine weights for every norm and random running statistics
    for every BN, so that both are really exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (_BatchNorm, nn.GroupNorm)) and m.affine:
                n = m.weight.numel()
                m.weight.copy_(torch.rand(n, generator=gen) + .5)
                m.bias.copy_(torch.randn(n, generator=gen) * .1)
            if isinstance(m, _BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * .1)
                m.running_var.copy_(torch.rand(n, generator=gen) + .5)


def run(model, forward, x, train, cotangents=None):
    """One forward and backward; returns outputs, the input's gradient,
    the parameters' gradients and the buffers after the step."""
    model.train(train)
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    outs = forward(model, x)
    if cotangents is None:
        gen = torch.Generator().manual_seed(2)
        cotangents = [torch.randn(o.shape, generator=gen, dtype=o.dtype)
                      for o in outs]
    sum((o * c).sum() for o, c in zip(outs, cotangents)).backward()
    grads = {n: p.grad for n, p in model.named_parameters()
             if p.grad is not None}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return outs, x.grad, grads, buffers


def biases_before_batch_norm(model):
    """Conv biases that a BN normalising by batch statistics follows: their
    gradient is zero, so both sides hold rounding noise only."""
    names = set()
    for name, m in model.named_modules():
        if isinstance(m, ConvModule) and m.with_norm and m.with_bias \
                and isinstance(m.norm, _BatchNorm) and m.norm.training \
                and m.order.index('conv') < m.order.index('norm'):
            names.add(f'{name}.conv.bias' if name else 'conv.bias')
    return names


def assert_same_step(got, want, tol=TOLERANCE, zero_grads=()):
    outs, grad_x, grads, buffers = got
    w_outs, w_grad_x, w_grads, w_buffers = want
    assert len(outs) == len(w_outs)
    for o, w in zip(outs, w_outs):
        assert relative_error(o, w) <= tol
    assert relative_error(grad_x, w_grad_x) <= tol
    assert grads.keys() == w_grads.keys() and grads
    largest = max(g.abs().max().item() for g in w_grads.values())
    for k in zero_grads:
        assert grads[k].abs().max() <= tol * largest, k
        assert w_grads[k].abs().max() <= tol * largest, k
    worst = max((relative_error(grads[k], w_grads[k]), k) for k in grads
                if k not in zero_grads)
    assert worst[0] <= tol, worst
    assert buffers.keys() == w_buffers.keys()
    for k in buffers:
        if buffers[k].is_floating_point():
            assert relative_error(buffers[k], w_buffers[k]) <= tol, k
        else:  # num_batches_tracked
            assert torch.equal(buffers[k], w_buffers[k]), k


def model_and_frozen_twin(arch, **kwargs):
    torch.manual_seed(0)
    model = TransCNN(arch=arch, **kwargs)
    model.init_weights()
    randomise_norms(model)
    model = model.double()
    return model, frozen_blocks.nchw_copy(model)


def backbone(model, x):
    return model(x)


@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('arch', PRESETS)
def test_backbone_equals_frozen_forward_float64(arch, train):
    # 72x100: stage maps 18x25 .. 3x4, so most grids pad.
    x = torch.randn(2, 3, 72, 100, dtype=torch.float64)
    model, twin = model_and_frozen_twin(arch)
    got = run(model, backbone, x, train)
    want = run(twin, frozen_blocks.backbone, x, train)
    zero_grads = biases_before_batch_norm(model)
    assert_same_step(got, want, zero_grads=zero_grads)
    # A second step: running statistics updated once per step, as before.
    if train:
        assert_same_step(run(model, backbone, x, train),
                         run(twin, frozen_blocks.backbone, x, train),
                         zero_grads=zero_grads)


@pytest.mark.parametrize('arch', ['small', 'base', 'transcnn-v1-tiny'])
def test_norm_eval_training_equals_frozen_forward_float64(arch):
    """Training with BNs that normalise by their running statistics
    (``norm_eval=True``, as the detection configs have it): each plain
    conv and the BN after it run as one conv with the BN folded in, and
    gradients reach both through the folded weights."""
    x = torch.randn(2, 3, 72, 100, dtype=torch.float64)
    model, twin = model_and_frozen_twin(arch, norm_eval=True)
    got = run(model, backbone, x, True)
    want = run(twin, frozen_blocks.backbone, x, True)
    assert not model.stem.conv1.norm.training
    assert_same_step(got, want)
    # Every BN after a conv is folded into it: none runs as a module.
    calls = []
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm) and '.attn.' not in name:
            m.register_forward_hook(
                lambda m, args, out, name=name: calls.append(name))
    run(model, backbone, x, True)
    assert not calls, calls


@pytest.mark.parametrize('arch', ['small', 'transcnn-v1-tiny',
                                  'hatnet-tiny'])
def test_inference_equals_frozen_forward_float64(arch):
    # Without gradients, each conv and the eval-mode BN after it run as one
    # conv with the BN folded in.
    x = torch.randn(2, 3, 72, 100, dtype=torch.float64)
    model, twin = model_and_frozen_twin(arch)
    model.eval()
    twin.eval()
    with torch.no_grad():
        want = frozen_blocks.backbone(twin, x)
        got = model(x)
    # Every BN after a conv is folded into it: none runs as a module.
    calls, after_convs = [], 0
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm) and '.attn.' not in name:
            m.register_forward_hook(lambda *args: calls.append(1))
            after_convs += 1
    with torch.inference_mode():
        got_inference = model(x)
    assert after_convs > 0 or arch == 'hatnet-tiny'  # (GroupNorm)
    assert not calls
    for g, gi, w in zip(got, got_inference, want):
        assert relative_error(g, w) <= TOLERANCE
        assert torch.equal(g, gi)
    assert all(torch.equal(a, b) for a, b in zip(
        model.state_dict().values(), twin.state_dict().values()))


@pytest.mark.parametrize('arch', ['small', 'hatnet-tiny'])
def test_with_cp_equals_frozen_forward_float64(arch):
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    model, twin = model_and_frozen_twin(arch, with_cp=True,
                                        out_indices=(1, 3))
    got = run(model, backbone, x, True)
    assert_same_step(got, run(twin, frozen_blocks.backbone, x, True),
                     zero_grads=biases_before_batch_norm(model))


def test_maps_channels_last_inside_nchw_outside():
    model = TransCNN(arch='small')
    assert model.stem.conv1.conv.weight.is_contiguous(
        memory_format=MAP_LAYOUT)
    seen = []
    model.stages[1][1].irb.register_forward_hook(
        lambda m, args, out: seen.append(out))
    grads = []
    model.stages[1][1].irb.register_full_backward_hook(
        lambda m, grad_in, grad_out: grads.append(grad_out[0]))
    outs = model(torch.randn(1, 3, 64, 64))
    assert seen[0].is_contiguous(memory_format=MAP_LAYOUT)
    assert all(o.is_contiguous() for o in outs)
    # An NCHW gradient from the neck comes back channels-last.
    sum((o * torch.randn(o.shape)).sum() for o in outs).backward()
    assert grads[0].is_contiguous(memory_format=MAP_LAYOUT)
    # Loading an NCHW state dict keeps the layout.
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    assert model.stem.conv1.conv.weight.is_contiguous(
        memory_format=MAP_LAYOUT)


# -- conv_chain alone --------------------------------------------------------
NORMS = [dict(type='BN'), dict(type='SyncBN'), dict(type='GN', num_groups=2)]
ACTS = [dict(type='SiLU'), dict(type='ReLU'), dict(type='GELU'),
        dict(type='PReLU'), dict(type='LeakyReLU'), dict(type='HSwish'),
        None]


def chain_of(norm_cfg, act_cfg, order=('conv', 'norm', 'act'), bias='auto'):
    torch.manual_seed(3)
    mods = nn.ModuleList([
        ConvModule(4, 8, 1, norm_cfg=norm_cfg, act_cfg=act_cfg, order=order,
                   bias=bias),
        ConvModule(8, 8, 3, padding=1, groups=8, norm_cfg=norm_cfg,
                   act_cfg=act_cfg, order=order, bias=bias),
        ConvModule(8, 4, 1, stride=2, norm_cfg=norm_cfg, act_cfg=act_cfg,
                   order=order, bias=bias),
    ])
    randomise_norms(mods)
    return mods.double()


@pytest.mark.parametrize('act_cfg', ACTS, ids=lambda a: str(a and a['type']))
@pytest.mark.parametrize('norm_cfg', NORMS, ids=lambda n: n['type'])
def test_conv_chain_equals_modules_float64(norm_cfg, act_cfg):
    mods = chain_of(norm_cfg, act_cfg)
    twin = frozen_blocks.copy.deepcopy(mods)
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    for train in (True, False):
        got = run(mods, lambda m, t: (conv_chain(t, *m), ), x, train)
        want = run(twin, lambda m, t: (m[2](m[1](m[0](t))), ), x, train)
        assert_same_step(got, want)


@pytest.mark.parametrize('order', [('norm', 'conv', 'act'),
                                   ('act', 'conv', 'norm')])
def test_conv_chain_other_orders_and_biases(order):
    mods = chain_of(dict(type='GN', num_groups=1), dict(type='SiLU'),
                    order=order, bias=True)
    twin = frozen_blocks.copy.deepcopy(mods)
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    # (an activation first runs in place: not on the leaf itself)
    got = run(mods, lambda m, t: (conv_chain(t * 1, *m), ), x, True)
    want = run(twin, lambda m, t: (m[2](m[1](m[0](t * 1))), ), x, True)
    assert_same_step(got, want)


def test_conv_chain_frozen_parts():
    mods = chain_of(dict(type='BN'), dict(type='SiLU'))
    for p in mods[0].parameters():
        p.requires_grad = False
    twin = frozen_blocks.copy.deepcopy(mods)
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    got = run(mods, lambda m, t: (conv_chain(t, *m), ), x, True)
    want = run(twin, lambda m, t: (m[2](m[1](m[0](t))), ), x, True)
    assert_same_step(got, want)


def saved_bytes(fn, x):
    """Bytes of the distinct storages autograd keeps for backward."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(storages.values())


def test_irb_keeps_its_input_and_conv_outputs_only():
    torch.manual_seed(0)
    irb = InvertedResidual(32, expand_ratio=4, kernel_size=5).train()
    x = torch.randn(2, 32, 24, 24, requires_grad=True).contiguous(
        memory_format=MAP_LAYOUT)
    frugal = saved_bytes(irb, x)
    plain = saved_bytes(lambda t: frozen_blocks.irb(irb, t), x)
    one_map = x.numel() * x.element_size()
    # Kept: the input, the expansion's output (4x) and the projection's
    # output (the depthwise conv runs again in backward); plus the
    # weights.
    assert one_map * 6 <= frugal < one_map * 6.5
    # As modules: the input, three 4x maps per expanded layer pair (conv
    # input, norm input, activation input), the projection's output.
    assert plain >= one_map * 25


def test_random_activation_runs_as_modules():
    mods = chain_of(dict(type='BN'), dict(type='RReLU'))
    twin = frozen_blocks.copy.deepcopy(mods)
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    torch.manual_seed(5)
    got = run(mods, lambda m, t: (conv_chain(t, *m), ), x, True)
    torch.manual_seed(5)
    want = run(twin, lambda m, t: (m[2](m[1](m[0](t))), ), x, True)
    assert_same_step(got, want)


# -- autocast, compile, DDP --------------------------------------------------
def test_bf16_autocast_equals_frozen_forward():
    torch.manual_seed(0)
    model = TransCNN(arch='small', out_indices=(3, ))
    model.init_weights()
    randomise_norms(model)
    # The twin keeps the channels-last layout, its maps' and their
    # gradients': bf16 kernels round differently in another layout, which
    # is not what this tests.
    twin = frozen_blocks.copy.deepcopy(model)
    x = torch.randn(2, 3, 64, 64)

    def under_autocast(forward):
        def run_it(m, t):
            with torch.autocast('cpu', dtype=torch.bfloat16):
                return forward(m, t.contiguous(memory_format=MAP_LAYOUT))
        return run_it

    got = run(model, under_autocast(backbone), x, True)
    want = run(twin, under_autocast(
        lambda m, t: frozen_blocks.backbone(m, t, to_output=to_nchw)), x,
               True)
    assert got[0][0].dtype == torch.bfloat16
    # (bit for bit on the CPUs tried; the bound leaves room for kernels
    # that round differently)
    assert_same_step(got, want, tol=1e-6,
                     zero_grads=biases_before_batch_norm(model))


def test_norm_eval_training_under_bf16_autocast():
    """Frozen BNs folded into their convs under bf16 autocast: as close to
    the float32 step as the modules run one by one are (the folded conv
    rounds once, the modules twice)."""
    torch.manual_seed(0)
    model = TransCNN(arch='small', out_indices=(3, ), norm_eval=True)
    model.init_weights()
    randomise_norms(model)
    twin = frozen_blocks.nchw_copy(model)
    x = torch.randn(2, 3, 64, 64)

    def bf16(forward):
        def run_it(m, t):
            with torch.autocast('cpu', dtype=torch.bfloat16):
                return forward(m, t)
        return run_it

    exact = run(twin, frozen_blocks.backbone, x, True)
    got = run(model, bf16(backbone), x, True)
    plain = run(twin, bf16(frozen_blocks.backbone), x, True)
    assert got[0][0].dtype == torch.bfloat16
    for i in (0, 1):  # outputs, the input's gradient
        a, b, e = (v[0] if i == 0 else v for v in (got[i], plain[i],
                                                   exact[i]))
        err, err_plain = relative_error(a.float(), e), \
            relative_error(b.float(), e)
        assert err <= max(2 * err_plain, 1e-2), (i, err, err_plain)
    for name, grad in exact[2].items():
        err = relative_error(got[2][name].float(), grad)
        err_plain = relative_error(plain[2][name].float(), grad)
        assert err <= max(2 * err_plain, 1e-2), (name, err, err_plain)


def test_torch_compile_equals_eager():
    torch.manual_seed(0)
    model = TransCNN(arch='small', out_indices=(3, ))
    model.init_weights()
    randomise_norms(model)
    twin = frozen_blocks.nchw_copy(model)
    compiled = torch.compile(model, backend='aot_eager')
    x = torch.randn(2, 3, 64, 64)
    got = run(compiled, backbone, x, True)
    want = run(twin, frozen_blocks.backbone, x, True)
    got = (got[0], got[1], {k.replace('_orig_mod.', ''): v
                            for k, v in got[2].items()},
           {k.replace('_orig_mod.', ''): v for k, v in got[3].items()})
    assert_same_step(got, want, tol=1e-4)


def _ddp_rank(rank, world, init_file, out_file):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}',
                            rank=rank, world_size=world)
    model, _ = model_and_frozen_twin('small', out_indices=(3, ))
    model = DDP(model)
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(rank))
    model(x)[0].square().sum().backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in model.module.named_parameters()},
                   out_file)
    dist.destroy_process_group()


def test_ddp_two_processes_average_frozen_gradients(tmp_path):
    import torch.multiprocessing as mp
    out_file = str(tmp_path / 'grads.pt')
    mp.spawn(_ddp_rank, args=(2, str(tmp_path / 'init'), out_file),
             nprocs=2, join=True)
    got = torch.load(out_file)
    # Each process's own step through the frozen forward, averaged.
    want = {}
    for rank in range(2):
        _, twin = model_and_frozen_twin('small', out_indices=(3, ))
        x = torch.randn(2, 3, 48, 48, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(rank))
        twin.train()
        frozen_blocks.backbone(twin, x)[0].square().sum().backward()
        for n, p in twin.named_parameters():
            if p.grad is not None:
                want[n] = want.get(n, 0) + p.grad / 2
    assert want.keys() == {k for k, v in got.items() if v is not None}
    for k in want:
        assert relative_error(got[k], want[k]) <= TOLERANCE, k

