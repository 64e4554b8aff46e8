"""The backbone's forward reads no tensor value on the host (CPU proxy for
"no host-device sync"), and graph tools see its plain ops.

- On 'meta' tensors, which have shapes but no values, any ``bool(tensor)``,
  ``.item()``, ``.tolist()`` or control flow on a tensor's value raises. The
  forward must run there for padded and unpadded sizes, several grid
  levels, plain attention, both query forms, train and eval mode, with and
  without autograd, and give the shapes of the real CPU forward. On a CUDA
  device each such read would stall the GPU pipeline (tests/test_cuda.py
  checks that with ``torch.cuda.set_sync_debug_mode('error')``).
- Under ``torch.no_grad()`` on the CPU, ``FlopCounterMode`` and
  ``torch.export`` see aten convolutions and linear layers (no oneDNN
  inference kernels, which they could not count or export), the FLOPs equal
  those of the autograd forward, and the exported program computes the
  eager outputs.
"""
import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmtranscnn.models import TransCNN

CASES = [
    # (input shape, grid sizes)
    ((2, 3, 200, 264), (8, 4, 2, 0)),   # padded at every stage
    ((1, 3, 97, 130), ((4, 2), 3, (2, 2), 0)),  # three levels, padded
    ((1, 3, 256, 256), (8, 4, 2, 0)),   # no padding anywhere
    ((1, 3, 64, 96), (0, 0, 0, 0)),     # plain attention everywhere
]


def expected_shapes(shape):
    h, w = shape[2:]
    return [(shape[0], c, -(-h // s), -(-w // s))
            for c, s in zip((64, 128, 256, 512), (4, 8, 16, 32))]


@pytest.fixture(scope='module')
def models():
    out = {}
    for _, grids in CASES:
        for query_from in ('full', 'merged'):
            torch.manual_seed(0)
            out[grids, query_from] = TransCNN(
                'small', grid_sizes=grids, query_from=query_from)
    return out


@pytest.mark.parametrize('train,grad', [(False, False), (True, True)],
                         ids=['eval-no_grad', 'train-grad'])
@pytest.mark.parametrize('query_from', ['full', 'merged'])
@pytest.mark.parametrize('shape,grids', CASES)
def test_meta_forward_makes_no_host_sync(models, shape, grids, query_from,
                                         train, grad):
    model = copy.deepcopy(models[grids, query_from]).to('meta').train(train)
    x = torch.empty(*shape, device='meta')
    with torch.set_grad_enabled(grad):
        outs = model(x)
    assert [tuple(o.shape) for o in outs] == expected_shapes(shape)
    assert all(o.device.type == 'meta' for o in outs)
    if grad:
        sum(o.sum() for o in outs).backward()
        assert all(p.grad is not None for p in model.parameters())


def test_meta_catches_a_value_read():
    """The proxy is not vacuous: what a sync needs raises on meta."""
    t = torch.empty(3, device='meta')
    for read in (lambda: bool(t.all()), lambda: t.sum().item(),
                 lambda: t.tolist()):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()


def test_meta_shapes_match_the_cpu_forward(models):
    shape, grids = CASES[0]
    model = copy.deepcopy(models[grids, 'full']).eval()
    with torch.no_grad():
        outs = model(torch.randn(*shape))
    assert [tuple(o.shape) for o in outs] == expected_shapes(shape)


class OpRecorder(TorchDispatchMode):
    """The namespaces and names of the aten-level ops that ran."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket._qualified_op_name)
        return func(*args, **(kwargs or {}))


def small_model(shape_grids=CASES[0]):
    torch.manual_seed(0)
    model = TransCNN(dict(channels=[64, 128, 256, 512], depths=[1, 1, 1, 1],
                          kernel_sizes=[5, 3, 5, 3],
                          expand_ratios=[4, 4, 6, 5]),
                     grid_sizes=shape_grids[1])
    model.init_weights()
    return model.eval()


def test_flop_counter_sees_plain_ops_under_no_grad():
    flop_counter = pytest.importorskip('torch.utils.flop_counter')
    model = small_model()
    x = torch.randn(1, 3, 200, 264)

    def count(grad):
        with torch.set_grad_enabled(grad), OpRecorder() as rec, \
                flop_counter.FlopCounterMode(display=False) as fc:
            model(x)
        return fc.get_total_flops(), rec.ops

    flops_no_grad, ops = count(False)
    flops_grad, _ = count(True)
    assert not [op for op in ops if op.startswith('mkldnn::')], ops
    assert 'aten::convolution' in ops
    assert ops & {'aten::addmm', 'aten::mm', 'aten::bmm', 'aten::linear'}
    # The same function, counted the same with and without autograd.
    assert flops_no_grad == flops_grad > 0


def test_export_sees_plain_ops_under_no_grad():
    if not hasattr(torch, 'export'):
        pytest.skip(f'torch {torch.__version__} has no torch.export')
    if tuple(int(v) for v in torch.__version__.split('.')[:2]) < (2, 2):
        # Measured on 2.1.2: dynamo stops inside mmcv 2.1.0's ConvModule
        # (its eval-time BN folding binds conv.forward to a partial).
        pytest.skip(f'torch.export of mmcv ConvModules needs a newer torch '
                    f'than {torch.__version__} (works on 2.14.1)')
    model = small_model()
    x = torch.randn(1, 3, 200, 264)
    with torch.no_grad():
        want = model(x)
        program = torch.export.export(model, (x, ))
        got = program.module()(x)
    targets = {str(n.target) for n in program.graph.nodes
               if n.op == 'call_function'}
    assert not [t for t in targets if 'mkldnn' in t], targets
    assert any('convolution' in t or 'conv2d' in t for t in targets), targets
    assert any(k in t for t in targets for k in ('linear', 'addmm', 'mm')), \
        targets
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
