"""The backbone and the detectors on a CUDA device, against the CPU.

Every check is a helper that takes device strings; the CUDA tests run it on
``'cuda'`` and are skipped (with the reason shown) where no CUDA device is
present. The CPU tests below each CUDA test run the same helper on the CPU,
so the test code itself runs on every machine, and assert what the CPU can
show:

- fp32 forward + backward on CUDA (TF32 off) equals the CPU result: same
  weights, same input; outputs, input gradient, every parameter gradient
  and the BN running statistics (CPU run: float32 against float64, which
  is also what the tolerances are calibrated on);
- fp16 and bf16 autocast outputs are finite and close to fp32;
- the backbone's forward makes no host-device sync
  (``torch.cuda.set_sync_debug_mode('error')``; on the CPU the same forward
  on 'meta' tensors, where reading a value raises);
- SDPA runs a fused kernel on maps without padding: no attention mask is
  passed there (recorded on every device), and on CUDA the forward runs
  with SDPA restricted to the flash kernel (which takes no mask) while a
  padded input under the same restriction fails;
- ``with_cp=True`` gives the same outputs and gradients;
- the conv chains that keep only conv outputs for backward
  (``mmtranscnn/models/memory.py``) give what the modules run one by one
  give (tests/frozen_blocks.py);
- SyncBN: two processes (gloo, which SyncBatchNorm supports for CUDA
  tensors) each with half the batch give the outputs and summed gradients
  of one BN model on the whole batch; and mmengine's
  ``revert_sync_batchnorm`` (what a non-distributed run does) gives a model
  equal to the BN one.
"""
import contextlib
import copy
import os
import os.path as osp
from unittest import mock

import pytest
import torch

from mmtranscnn.models import TransCNN, hmhsa
from mmtranscnn.ops import attention

REPO_DIR = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_RETINANET = osp.join(REPO_DIR, 'configs', 'tiny',
                          'retinanet_transcnn_small_shapes.py')
TINY_MASK_RCNN = osp.join(REPO_DIR, 'configs', 'tiny',
                          'mask_rcnn_transcnn_small_shapes.py')

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(
    not CUDA, reason='no CUDA device: torch.cuda.is_available() is False')

#: A size that is no multiple of 32 nor of the grids: stage maps 50x66,
#: 25x33, 13x17 and 7x9 are padded to the grids (8, 4, 2) and masked.
PADDED = (2, 3, 200, 264)
#: Stage maps 64, 32, 16, 8: multiples of every grid at every level, so no
#: padding and no attention mask anywhere.
UNPADDED = (2, 3, 256, 256)
#: The CPU runs of the helpers: padded too (maps 26x34, 13x17, 7x9, 4x5),
#: smaller to keep the suite's time down.
CPU_PADDED = (2, 3, 104, 136)


def padded_shape(device):
    return PADDED if torch.device(device).type == 'cuda' else CPU_PADDED

# fp32 on two devices (or fp32 against fp64 on one): max |a - b| over a
# tensor, relative to max |b| of that tensor. Calibrated on the CPU with
# the same inputs: float32 against float64 reached 4e-6 on the backbone's
# outputs and 2e-5 on its gradients at 2x3x200x264 (2.6e-6 and 1.3e-5 at
# the CPU runs' 2x3x104x136); two float32 devices each differ about that
# much from the exact result, so the bounds leave a margin of 25-50x.
FP32_OUT_RTOL = 1e-4
FP32_GRAD_RTOL = 1e-3
# The detectors, on the batch of detection_batch(), float32 against float64
# on the CPU, in repeated runs (float32 CPU results vary between processes
# in the last bits): Mask R-CNN's gradients 3.4e-3 to 3.9e-3 (its mask
# head and RPN conv: the untrained mask logits saturate, and
# sigmoid(x) - target of a saturated logit keeps few significant digits in
# float32; mmdet computes loss_mask and loss_rpn_cls in float32 even in a
# float64 model). RetinaNet's either 5e-5 or, in 2 of 5 runs, up to 1.1e-2
# on its first three classification convs, whose gradients are 1e-3 of the
# largest ones and cancel. Their losses agreed to 4e-7. On a second CPU
# (AMD EPYC, the fresh-clone CI run of the merged code) Mask R-CNN's mask
# head reached 1.77e-2 and 1.80e-2 in two runs. The bounds are about 3-4x
# the largest error seen.
DET_GRAD_RTOL = {'RetinaNet': 5e-2, 'MaskRCNN': 5e-2}
# Autocast against fp32: ||a - b|| / ||b|| per output map.
AUTOCAST_RTOL = {torch.float16: 0.01, torch.bfloat16: 0.05}


@contextlib.contextmanager
def exact_fp32():
    """TF32 off for CUDA matmuls and cuDNN convolutions (restored after)."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    cudnn = torch.backends.cudnn.allow_tf32
    precision = torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision('highest')
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn
        torch.set_float32_matmul_precision(precision)


def make_backbone(arch='small', seed=0, **kwargs):
    torch.manual_seed(seed)
    model = TransCNN(arch, **kwargs)
    model.init_weights()
    return model


def make_input(shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def projections(outs, seed=2):
    """Fixed random weights, one per output map, for a scalar loss whose
    gradient is not the same everywhere (as a plain mean's would be)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=gen) / o.numel()**.5 for o in outs]


def zero_gradient_slices(model):
    """Parameters whose exact gradient is zero: the key biases (a bias added
    to every key shifts all scores of a query equally, which softmax
    ignores). Their computed gradient is rounding noise, compared apart."""
    names = {}
    for name, module in model.named_modules():
        for proj, part in (('qkv', 1), ('kv', 0)):
            layer = getattr(module, proj, None)
            if isinstance(layer, torch.nn.Linear) and layer.bias is not None \
                    and hasattr(module, 'embed_dims'):
                c = module.embed_dims
                prefix = f'{name}.' if name else ''
                names[f'{prefix}{proj}.bias'] = slice(part * c,
                                                      (part + 1) * c)
    return names


def backbone_step(model, x, device, dtype=torch.float32, autocast=None,
                  train=True):
    """Forward and backward of a copy of ``model`` on ``device``.

    Returns the outputs, the input gradient, every parameter gradient and
    the BN buffers, as float64 CPU tensors.
    """
    m = copy.deepcopy(model).to(device=device, dtype=dtype).train(train)
    xd = x.detach().to(device=device, dtype=dtype).clone().requires_grad_()
    amp = (torch.autocast(torch.device(device).type, dtype=autocast)
           if autocast is not None else contextlib.nullcontext())
    with amp:
        outs = m(xd)
    weights = projections(outs)
    loss = sum((o.to(dtype) * w.to(device=device, dtype=dtype)).sum()
               for o, w in zip(outs, weights))
    loss.backward()
    return dict(
        outs=[o.detach().double().cpu() for o in outs],
        x_grad=xd.grad.double().cpu(),
        grads={n: p.grad.double().cpu() for n, p in m.named_parameters()
               if p.grad is not None},
        buffers={n: b.double().cpu() for n, b in m.named_buffers()
                 if b.is_floating_point()},
        zero_grad=zero_gradient_slices(m))


def max_rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def assert_results_close(got, want, out_rtol=FP32_OUT_RTOL,
                         grad_rtol=FP32_GRAD_RTOL):
    """Outputs, gradients and buffers of two :func:`backbone_step` runs (or
    of two detector steps) agree."""
    assert len(got['outs']) == len(want['outs'])
    for i, (a, b) in enumerate(zip(got['outs'], want['outs'])):
        assert a.shape == b.shape and torch.isfinite(a).all(), i
        assert max_rel_err(a, b) <= out_rtol, (i, max_rel_err(a, b))
    if 'x_grad' in want:
        assert max_rel_err(got['x_grad'], want['x_grad']) <= grad_rtol
    assert got['grads'].keys() == want['grads'].keys()
    scale = max(float(g.abs().max()) for g in want['grads'].values())
    zero = want['zero_grad']
    for name, b in want['grads'].items():
        a = got['grads'][name]
        assert torch.isfinite(a).all(), name
        if name in zero:
            # The exactly-zero part: noise far below the gradients' scale.
            sl = zero[name]
            assert float(a[sl].abs().max()) <= 1e-5 * scale, name
            assert float(b[sl].abs().max()) <= 1e-5 * scale, name
            keep = torch.ones(b.numel(), dtype=torch.bool)
            keep[sl] = False
            a, b = a[keep], b[keep]
        assert max_rel_err(a, b) <= grad_rtol, (name, max_rel_err(a, b))
    for name, b in want['buffers'].items():
        a = got['buffers'][name]
        scale = b.abs().max()
        if name.endswith('running_mean'):
            # A mean can be zero in exact arithmetic (BN outputs with zero
            # bias feed the next BN): its scale is the standard deviation.
            var = want['buffers'][name[:-len('mean')] + 'var']
            scale = torch.maximum(scale, var.max().sqrt())
        err = float((a - b).abs().max() / scale)
        assert err <= out_rtol, (name, err)


# -- fp32 forward + backward ---------------------------------------------------
def check_backbone_matches(device, ref_device='cpu', dtype=torch.float32,
                           ref_dtype=torch.float32, query_from='full'):
    model = make_backbone('small', query_from=query_from)
    x = make_input(padded_shape(device))
    with exact_fp32():
        got = backbone_step(model, x, device, dtype)
        want = backbone_step(model, x, ref_device, ref_dtype)
    assert_results_close(got, want)
    return got, want


@needs_cuda
@pytest.mark.parametrize('query_from', ['full', 'merged'])
def test_cuda_backbone_fp32_matches_cpu(query_from):
    check_backbone_matches('cuda', query_from=query_from)


def test_cpu_backbone_fp32_matches_fp64():
    """The helper on the CPU: float32 against float64 within the same
    tolerances (what a second fp32 device is held to)."""
    got, want = check_backbone_matches('cpu', ref_dtype=torch.float64)
    # Not vacuous: the two runs differ (by rounding) and the gradients are
    # not zero.
    assert max_rel_err(got['outs'][0], want['outs'][0]) > 0
    assert all(float(g.abs().max()) > 0 for n, g in want['grads'].items()
               if n not in want['zero_grad'])


# -- autocast ------------------------------------------------------------------
def check_autocast_close(device, dtype):
    model = make_backbone('small')
    x = make_input(padded_shape(device))
    with exact_fp32():
        ref = backbone_step(model, x, device)
        low = backbone_step(model, x, device, autocast=dtype)
    errs = []
    for a, b in zip(low['outs'], ref['outs']):
        assert torch.isfinite(a).all()
        errs.append(float((a - b).norm() / b.norm()))
    assert max(errs) <= AUTOCAST_RTOL[dtype], errs
    for name, g in low['grads'].items():
        assert torch.isfinite(g).all(), name
    # Not vacuous: autocast did lower the precision.
    assert max(errs) > 1e-6, errs
    return errs


@needs_cuda
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16],
                         ids=['fp16', 'bf16'])
def test_cuda_autocast_close_to_fp32(dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip('this CUDA device has no bfloat16')
    check_autocast_close('cuda', dtype)


def test_cpu_bf16_autocast_close_to_fp32():
    check_autocast_close('cpu', torch.bfloat16)


# -- host-device syncs ---------------------------------------------------------
def forward_without_sync(model, shape, device):
    """The backbone's forward on ``device`` where any read of a tensor value
    by the host raises: CUDA with the sync debug mode set to 'error', or
    'meta' tensors (which hold no values). Returns the output shapes."""
    m = copy.deepcopy(model).to(device)
    x = torch.randn(*shape, device=device) if device != 'meta' else \
        torch.empty(*shape, device='meta')
    if torch.device(device).type == 'cuda':
        m(x)  # warm-up (kernel selection, workspaces) outside the check
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')
        try:
            outs = m(x)
        finally:
            torch.cuda.set_sync_debug_mode('default')
    else:
        outs = m(x)
    return [tuple(o.shape) for o in outs]


SYNC_CASES = [
    # (input shape, grid sizes): padded and unpadded, several levels,
    # plain attention.
    ((2, 3, 200, 264), (8, 4, 2, 0)),
    ((1, 3, 225, 311), (8, 4, 2, 0)),
    ((1, 3, 97, 130), ((4, 2), 3, (2, 2), 0)),
    ((2, 3, 256, 256), (8, 4, 2, 0)),
]


def expected_shapes(shape):
    h, w = shape[2:]
    return [(shape[0], c, -(-h // s), -(-w // s))
            for c, s in zip((64, 128, 256, 512), (4, 8, 16, 32))]


@needs_cuda
@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('query_from', ['full', 'merged'])
@pytest.mark.parametrize('shape,grids', SYNC_CASES)
def test_cuda_forward_makes_no_host_sync(shape, grids, query_from, train):
    model = make_backbone('small', grid_sizes=grids,
                          query_from=query_from).train(train)
    assert forward_without_sync(model, shape, 'cuda') == \
        expected_shapes(shape)


# (The CPU counterpart, on 'meta' tensors, is test_meta_forward_makes_no_
# host_sync in tests/test_no_sync.py.)


# -- fused SDPA ----------------------------------------------------------------
class AttentionRecorder:
    """Records, for every attention call of H-MHSA
    (``mmtranscnn.ops.attention``: SDPA, or matmuls for small CPU grids),
    whether an attention mask was passed."""

    def __init__(self):
        self.masked = []

    def __call__(self, q, k, v, attn_mask=None, dropout_p=0.):
        self.masked.append(attn_mask is not None)
        return attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)


def sdpa_masks(model, shape, device, autocast=None):
    """Per attention call of one forward: whether it got a mask."""
    m = copy.deepcopy(model).to(device).eval()
    x = make_input(shape).to(device)
    amp = (torch.autocast(torch.device(device).type, dtype=autocast)
           if autocast is not None else contextlib.nullcontext())
    rec = AttentionRecorder()
    with torch.no_grad(), amp, mock.patch.object(hmhsa, 'attention', rec):
        m(x)
    return rec.masked


def flash_only():
    """SDPA restricted to the flash kernel, which takes no attention mask."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def check_unpadded_maps_pass_no_mask(device):
    model = make_backbone('small')
    unpadded = sdpa_masks(model, UNPADDED, device)
    padded = sdpa_masks(model, PADDED, device)
    # 8 blocks, 2 attention levels each in stages 1-3, 1 in stage 4.
    assert len(unpadded) == len(padded) == 14
    assert not any(unpadded), unpadded
    assert any(padded), padded  # the recorder does see masks


def test_cpu_unpadded_maps_pass_no_mask():
    check_unpadded_maps_pass_no_mask('cpu')


@needs_cuda
def test_cuda_unpadded_maps_pass_no_mask():
    check_unpadded_maps_pass_no_mask('cuda')


@needs_cuda
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16],
                         ids=['fp16', 'bf16'])
def test_cuda_sdpa_takes_the_flash_kernel_without_padding(dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip('this CUDA device has no bfloat16')
    model = make_backbone('small').cuda().eval()
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad(), torch.autocast('cuda', dtype=dtype):
        with flash_only(), profile(activities=[ProfilerActivity.CUDA]) as p:
            outs = model(make_input(UNPADDED).cuda())
        assert all(torch.isfinite(o).all() for o in outs)
        names = {e.key.lower() for e in p.key_averages()}
        assert any('flash' in n for n in names), sorted(names)[:50]
        # The restriction bites: padded maps need a mask, which flash
        # does not take.
        with flash_only(), pytest.raises(RuntimeError):
            model(make_input(PADDED).cuda())


# -- gradient checkpointing ----------------------------------------------------
def check_with_cp_same_gradients(device):
    plain = make_backbone('small')
    cp = make_backbone('small', with_cp=True)
    cp.load_state_dict(plain.state_dict())
    x = make_input(padded_shape(device))
    with exact_fp32():
        want = backbone_step(plain, x, device)
        got = backbone_step(cp, x, device)
    # Recomputation runs the blocks' BN in train mode twice, so the running
    # statistics move twice: compare everything else.
    got.pop('buffers')
    want['buffers'] = {}
    assert_results_close(got, want, out_rtol=1e-6, grad_rtol=1e-5)


def test_cpu_with_cp_same_gradients():
    check_with_cp_same_gradients('cpu')


@needs_cuda
def test_cuda_with_cp_same_gradients():
    check_with_cp_same_gradients('cuda')


# -- conv chains that keep only conv outputs for backward ----------------------
def check_conv_chains_equal_modules(device):
    """The model as built (models/memory.py: norms and activations
    recomputed in backward) against the same weights run module by module
    (tests/frozen_blocks.py), on one device: outputs, gradients and running
    statistics."""
    import types

    import frozen_blocks
    model = make_backbone('small')
    modules = copy.deepcopy(model)
    modules.forward = types.MethodType(frozen_blocks.backbone, modules)
    x = make_input(padded_shape(device))
    with exact_fp32():
        got = backbone_step(model, x, device)
        want = backbone_step(modules, x, device)
    assert_results_close(got, want, out_rtol=1e-5, grad_rtol=1e-4)


def test_cpu_conv_chains_equal_modules():
    check_conv_chains_equal_modules('cpu')


@needs_cuda
def test_cuda_conv_chains_equal_modules():
    check_conv_chains_equal_modules('cuda')


# -- SyncBN --------------------------------------------------------------------
def check_reverted_syncbn_equals_bn(device):
    """mmengine's revert_sync_batchnorm (a non-distributed run) turns a
    SyncBN TransCNN into the BN one: same modules' kinds, same results."""
    from mmengine.model import revert_sync_batchnorm
    bn = make_backbone('small')
    sync = make_backbone('small', norm_cfg=dict(type='SyncBN'))
    assert sum(isinstance(m, torch.nn.SyncBatchNorm)
               for m in sync.modules()) == sum(
                   isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules())
    sync.load_state_dict(bn.state_dict())
    reverted = revert_sync_batchnorm(sync)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm)
                   for m in reverted.modules())
    x = make_input(padded_shape(device))
    with exact_fp32():
        want = backbone_step(bn, x, device)
        got = backbone_step(reverted, x, device)
    assert_results_close(got, want, out_rtol=1e-6, grad_rtol=1e-6)


def test_cpu_reverted_syncbn_equals_bn():
    check_reverted_syncbn_equals_bn('cpu')


@needs_cuda
def test_cuda_reverted_syncbn_equals_bn():
    check_reverted_syncbn_equals_bn('cuda')


def _syncbn_worker(rank, world, port, device, x, path):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        with exact_fp32():  # a new process: TF32 settings are per process
            _syncbn_step(rank, world, device, x, path)
    finally:
        dist.destroy_process_group()


def _syncbn_step(rank, world, device, x, path):
    """One rank's forward and backward on its half of the batch."""
    import torch.distributed as dist
    model = make_backbone('small', norm_cfg=dict(type='SyncBN'))
    half = x.shape[0] // world
    part = x[rank * half:(rank + 1) * half]
    # backbone_step's loss on a part of the batch: the same projection
    # weights, cut to this rank's samples.
    m = model.to(device).train()
    xd = part.to(device).requires_grad_()
    outs = m(xd)
    full_shapes = [(x.shape[0], ) + tuple(o.shape[1:]) for o in outs]
    weights = projections(
        [torch.empty(s) for s in full_shapes])
    loss = sum((o * w[rank * half:(rank + 1) * half].to(device)).sum()
               for o, w in zip(outs, weights))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in m.named_parameters()}
    for g in grads.values():
        dist.all_reduce(g)  # the sum over the two halves
    torch.save(dict(outs=[o.detach().cpu() for o in outs],
                    x_grad=xd.grad.cpu(),
                    grads={n: g.cpu() for n, g in grads.items()},
                    buffers={n: b.cpu() for n, b in m.named_buffers()
                             if b.is_floating_point()}),
               f'{path}.{rank}')


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def check_syncbn_two_processes(device, tmp_path):
    """Two processes, half the batch each, SyncBN synchronising the batch
    statistics: the outputs, input gradients and summed parameter gradients
    of one BN model on the whole batch."""
    import torch.multiprocessing as mp
    x = make_input(padded_shape(device))
    path = str(tmp_path / 'syncbn')
    with exact_fp32():
        mp.spawn(_syncbn_worker, args=(2, free_port(), device, x, path),
                 nprocs=2, join=True)
        want = backbone_step(make_backbone('small'), x, device)
    parts = [torch.load(f'{path}.{r}') for r in range(2)]
    got = dict(
        outs=[torch.cat([p['outs'][i] for p in parts]).double()
              for i in range(len(want['outs']))],
        x_grad=torch.cat([p['x_grad'] for p in parts]).double(),
        grads={n: g.double() for n, g in parts[0]['grads'].items()},
        buffers={n: b.double() for n, b in parts[0]['buffers'].items()})
    assert_results_close(got, want)


@needs_cuda
def test_cuda_syncbn_two_processes_equal_bn_on_whole_batch(tmp_path):
    check_syncbn_two_processes('cuda', tmp_path)


def test_cpu_syncbn_needs_an_accelerator(tmp_path):
    """On the CPU, torch's SyncBatchNorm refuses to synchronise (it needs
    GPU tensors): the helper reaches that refusal, inside a real 2-process
    gloo group."""
    with pytest.raises(Exception,
                       match='SyncBatchNorm expected input tensor to be on '
                       'GPU'):
        check_syncbn_two_processes('cpu', tmp_path)


# -- detectors -----------------------------------------------------------------
# Boxes with integer corners and sides of multiples of 28 (the mask head's
# output size): the mask targets then sample the ground-truth masks at whole
# pixels, exactly, on every device.
GT_BOXES = ([[8., 8., 64., 64.], [60., 36., 116., 120.]],
            [[16., 20., 100., 76.], [64., 64., 120., 120.]])
IMG = (128, 128)


def detection_batch(with_masks):
    import numpy as np
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(3)
    inputs = torch.randn(len(GT_BOXES), 3, *IMG, generator=gen)
    samples = []
    for i, boxes in enumerate(GT_BOXES):
        s = DetDataSample(metainfo=dict(
            img_id=i, img_shape=IMG, ori_shape=IMG, pad_shape=IMG,
            batch_input_shape=IMG, scale_factor=(1., 1.)))
        gt = InstanceData()
        gt.bboxes = torch.tensor(boxes)
        gt.labels = torch.tensor([i, 3 - i])
        if with_masks:
            masks = np.zeros((len(boxes), ) + IMG, dtype=np.uint8)
            for j, (x1, y1, x2, y2) in enumerate(boxes):
                # A disc inside the box: a shape, not the box itself.
                yy, xx = np.mgrid[:IMG[0], :IMG[1]]
                cy, cx = (y1 + y2) / 2 - .5, (x1 + x2) / 2 - .5
                r = min(x2 - x1, y2 - y1) / 2
                masks[j] = ((yy - cy)**2 + (xx - cx)**2) <= r * r
            gt.masks = BitmapMasks(masks, *IMG)
        s.gt_instances = gt
        samples.append(s)
    return inputs, samples


def fixed_proposals():
    """RoI proposals for Mask R-CNN's second stage, the same on every
    device (the RPN's own proposals go through NMS, whose choice among
    near-equal scores of an untrained RPN is not the same on two
    devices). Each gt box shifted by whole pixels (positives) and boxes
    elsewhere (negatives)."""
    from mmengine.structures import InstanceData
    out = []
    gen = torch.Generator().manual_seed(4)
    for boxes in GT_BOXES:
        b = torch.tensor(boxes)
        shifted = [b + torch.tensor([dx, dy, dx, dy])
                   for dx, dy in ((4., 0.), (0., -4.), (-3., 3.))]
        xy = torch.rand(20, 2, generator=gen) * 80
        wh = torch.rand(20, 2, generator=gen) * 40 + 8
        rest = torch.cat([xy, xy + wh], 1)
        res = InstanceData()
        res.bboxes = torch.cat(shifted + [rest])
        out.append(res)
    return out


def build_detector(config):
    pytest.importorskip('mmdet')  # an optional codebase
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from mmtranscnn.engine import setup_codebase
    cfg = Config.fromfile(config)
    setup_codebase(cfg)
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    if cfg.model.type == 'MaskRCNN':
        # Keep every anchor and every RoI: the random subsampling of
        # RandomSampler draws differently on every device.
        cfg.model.train_cfg.rpn.sampler.num = 10**6
        cfg.model.train_cfg.rcnn.sampler.num = 10**6
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def detector_step(model, device, dtype=torch.float32):
    """The detector's training losses and their gradients on ``device``."""
    m = copy.deepcopy(model).to(device=device, dtype=dtype).train()
    two_stage = hasattr(m, 'roi_head')
    inputs, samples = detection_batch(with_masks=two_stage)
    inputs = inputs.to(device=device, dtype=dtype)
    samples = [s.to(device) for s in samples]
    for s in samples:
        s.gt_instances.bboxes = s.gt_instances.bboxes.to(dtype)
    if two_stage:
        feats = m.extract_feat(inputs)
        rpn_samples = copy.deepcopy(samples)
        for s in rpn_samples:
            s.gt_instances.labels = torch.zeros_like(s.gt_instances.labels)
        losses = dict(m.rpn_head.loss(feats, rpn_samples))
        proposals = [p.to(device) for p in fixed_proposals()]
        for p in proposals:
            p.bboxes = p.bboxes.to(dtype)
        losses.update(m.roi_head.loss(feats, proposals, samples))
    else:
        losses = m.loss(inputs, samples)
    loss, log_vars = m.parse_losses(losses)
    loss.backward()
    names = sorted(k for k in log_vars if k.startswith('loss'))
    return dict(
        outs=[torch.as_tensor(log_vars[k]).detach().double().cpu()
              .reshape(1) for k in names],
        loss_names=names,
        grads={n: p.grad.double().cpu() for n, p in m.named_parameters()
               if p.grad is not None},
        buffers={n: b.double().cpu() for n, b in m.named_buffers()
                 if b.is_floating_point()},
        zero_grad={f'backbone.{k}': v
                   for k, v in zero_gradient_slices(m.backbone).items()})


def check_detector_matches(config, device, ref_device='cpu',
                           dtype=torch.float32, ref_dtype=torch.float32):
    model = build_detector(config)
    with exact_fp32():
        got = detector_step(model, device, dtype)
        want = detector_step(model, ref_device, ref_dtype)
    assert got['loss_names'] == want['loss_names']
    assert_results_close(got, want,
                         grad_rtol=DET_GRAD_RTOL[type(model).__name__])
    # Every trainable parameter got a gradient.
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(want['grads']) == trainable
    return got, want


@needs_cuda
@pytest.mark.parametrize('config', [TINY_RETINANET, TINY_MASK_RCNN],
                         ids=['retinanet', 'mask_rcnn'])
def test_cuda_detector_fp32_matches_cpu(config):
    check_detector_matches(config, 'cuda')


@pytest.mark.parametrize('config', [TINY_RETINANET, TINY_MASK_RCNN],
                         ids=['retinanet', 'mask_rcnn'])
def test_cpu_detector_fp32_matches_fp64(config):
    got, want = check_detector_matches(config, 'cpu',
                                       ref_dtype=torch.float64)
    expected = {'retinanet': {'loss_bbox', 'loss_cls'},
                'mask_rcnn': {'loss_rpn_bbox', 'loss_rpn_cls', 'loss_bbox',
                              'loss_cls', 'loss_mask'}}
    kind = 'mask_rcnn' if 'mask_rcnn' in config else 'retinanet'
    assert set(want['loss_names']) == expected[kind] | {'loss'}
    assert all(float(v) > 0 for v in want['outs'])
