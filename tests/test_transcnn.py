"""The TransCNN backbone: shapes, fidelity to Table 1, training behaviour."""
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mmtranscnn.analysis import count_flops, count_params
from mmtranscnn.models import TransCNN

PAPER = {  # Table 1 / Table 3: parameters (M) and FLOPs (G) at 224x224
    'small': (13.1, 1.8),
    'base': (26.7, 4.0),
}
CLASSIFIER_HEAD = 512 * 1000 + 1000  # GAP + 1000-way FC


@pytest.fixture(scope='module')
def small():
    torch.manual_seed(0)
    model = TransCNN('small')
    model.init_weights()
    return model.eval()


@pytest.mark.parametrize('arch', ['small', 'base'])
def test_params_and_flops_match_table1(arch):
    model = TransCNN(arch)
    params = (count_params(model) + CLASSIFIER_HEAD) / 1e6
    head_flops = 512 * 1000
    flops = (count_flops(model, (1, 3, 224, 224)) + head_flops) / 1e9
    want_params, want_flops = PAPER[arch]
    assert abs(params - want_params) / want_params <= 0.02, params
    assert abs(flops - want_flops) / want_flops <= 0.08, flops


# Exact parameter counts, the figures the README states (12.893M, 26.526M,
# 22.614M, ...): any change to the architecture shows here.
BACKBONE_PARAMS = {'small': 12_380_368, 'base': 26_013_072}
# The ImageNet classifiers of configs/imagenet/ as mmpretrain builds them:
# backbone + GlobalAveragePooling + LinearClsHead(512 -> 1000).
CLASSIFIER_PARAMS = {'small': 12_893_368, 'base': 26_526_072}
# The detectors of Table 1's networks as mmdet builds them (80 classes).
DETECTOR_PARAMS = {
    'paper_arch/retinanet_transcnn-paper-small_fpn_1x_coco.py': 22_613_956,
    'paper_arch/retinanet_transcnn-paper-base_fpn_1x_coco.py': 36_246_660,
    'paper_arch/mask_rcnn_transcnn-paper-small_fpn_1x_coco.py': 32_531_392,
    'paper_arch/mask_rcnn_transcnn-paper-base_fpn_1x_coco.py': 46_164_096,
}


def num_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('arch', ['small', 'base'])
def test_exact_parameter_counts_of_backbone_and_classifier(arch):
    import copy

    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmengine.utils import import_modules_from_strings

    from mmtranscnn import get_config_path
    assert num_params(TransCNN(arch)) == BACKBONE_PARAMS[arch]
    pytest.importorskip('mmpretrain')  # an optional codebase
    cfg = Config.fromfile(get_config_path(
        f'imagenet/transcnn-{arch}_8xb128_in1k.py'))
    import_modules_from_strings(**cfg.custom_imports)
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        classifier = MODELS.build(copy.deepcopy(cfg.model))
    assert cfg.model.head.num_classes == 1000
    assert num_params(classifier) == CLASSIFIER_PARAMS[arch]
    assert num_params(classifier) == BACKBONE_PARAMS[arch] + CLASSIFIER_HEAD


@pytest.mark.parametrize('config', sorted(DETECTOR_PARAMS))
def test_exact_parameter_counts_of_detectors(config):
    pytest.importorskip('mmdet')  # an optional codebase
    from mmengine.config import Config

    from mmtranscnn import get_config_path
    from mmtranscnn.engine import setup_codebase
    cfg = Config.fromfile(get_config_path(config))
    setup_codebase(cfg)
    cfg.model.backbone.init_cfg = None  # no ImageNet checkpoint needed
    from mmdet.registry import MODELS
    model = MODELS.build(cfg.model)
    assert num_params(model.backbone) == BACKBONE_PARAMS[
        cfg.model.backbone.arch]
    assert num_params(model) == DETECTOR_PARAMS[config]


def test_attention_matmuls_are_counted():
    """Without the SDPA handle the counter would silently drop them."""
    model = TransCNN('small')
    by_module = count_flops(model, (1, 3, 224, 224), by_module=True)
    attn = by_module['stages.0.0.attn']
    linears = sum(by_module[f'stages.0.0.attn.{n}']
                  for n in ('norm', 'qkv', 'q', 'kv', 'proj'))
    # Stage 2, 56x56 tokens, C=64: level 0 in 8x8 grids + level 1 over the
    # 7x7 merged tokens: 2*N*C*(64 + 49) multiply-adds.
    assert attn - linears == 2 * 3136 * 64 * (64 + 49)


@pytest.mark.parametrize('size', [(33, 47), (225, 311), (64, 64)])
def test_any_input_size(small, size):
    x = torch.randn(2 if size[0] > 200 else 1, 3, *size)
    with torch.no_grad():
        outs = small(x)
    assert [o.shape[1] for o in outs] == [64, 128, 256, 512]
    h, w = size
    for i, out in enumerate(outs):
        stride = 4 * 2**i
        assert out.shape[2:] == (-(-h // stride), -(-w // stride)), (i, size)
        assert torch.isfinite(out).all()


@pytest.mark.slow
def test_detection_size_with_detection_grids():
    model = TransCNN('small', grid_sizes=(16, 8, 4, 0)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 800, 1333))
    assert [tuple(o.shape[2:]) for o in outs] == [(200, 334), (100, 167),
                                                  (50, 84), (25, 42)]


@pytest.mark.parametrize('arch', ['small', 'base'])
def test_backward_reaches_every_parameter(arch):
    """No unused parameters under DDP with the default out_indices."""
    model = TransCNN(arch, drop_path_rate=0.1).train()
    outs = model(torch.randn(2, 3, 64, 96))
    sum(o.mean() for o in outs).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []


def test_bf16_autocast_is_finite(small):
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        outs = small(torch.randn(1, 3, 96, 80))
    assert all(torch.isfinite(o.float()).all() for o in outs)


def test_out_indices_select_stages():
    model = TransCNN('small', out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [128, 512]


def test_stages_after_the_last_output_are_frozen_and_skipped():
    """out_indices=(0, 1, 2): stage 4 is built (full checkpoints load
    strictly) but frozen, so every trainable parameter gets a gradient and
    DDP without find_unused_parameters does not stop."""
    torch.manual_seed(0)
    full = TransCNN('small')
    model = TransCNN('small', out_indices=(0, 1, 2))
    model.load_state_dict(full.state_dict(), strict=True)
    model.train()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 128, 256]
    sum(o.mean() for o in outs).backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(not n.startswith('stages.3.')
                             for n in trainable)
    no_grad = [n for n, p in model.named_parameters()
               if p.requires_grad and p.grad is None]
    assert no_grad == []
    assert not model.stages[3].training


def test_frozen_stages_and_norm_eval():
    model = TransCNN('small', frozen_stages=2, norm_eval=True)
    model.train()
    frozen = [model.stem, model.stages[0], model.stages[1]]
    for module in frozen:
        assert all(not p.requires_grad for p in module.parameters())
        assert not module.training
    assert all(p.requires_grad for p in model.stages[2].parameters())
    assert all(not m.training for m in model.modules()
               if isinstance(m, _BatchNorm))
    assert model.train() is model  # chains like nn.Module


def test_with_cp_gives_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = TransCNN('small')
    ckpt = TransCNN('small', with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for model in (plain, ckpt):
        model.train()
        model.zero_grad()
        sum(o.sum() for o in model(x)).backward()
        grads.append(model.stages[1][1].irb.expand.conv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_grid_sizes_are_not_weights():
    """ImageNet-trained weights load strictly with detection grids."""
    source = TransCNN('small', grid_sizes=(8, 4, 2, 0))
    for grids in [(16, 8, 4, 0), ((32, 32), (16, 16), (8, 8), 0),
                  (4, (2, 2), 1, 0)]:
        target = TransCNN('small', grid_sizes=grids)
        target.load_state_dict(source.state_dict(), strict=True)


@pytest.mark.parametrize('kwargs,match', [
    (dict(arch='tiny'), r"arch must be one of \['base', 'small'\]"),
    (dict(arch=dict(channels=[64], depths=[1, 2], kernel_sizes=[3],
                    expand_ratios=[4])), 'equal length'),
    (dict(arch=dict(channels=[64], depths=[1], kernel_sizes=[3])),
     r"missing \['expand_ratios'\]"),
    (dict(arch=dict(channels=[64], depths=[1], kernel_sizes=[4],
                    expand_ratios=[4])), 'kernel_sizes'),
    (dict(grid_sizes=(8, 4, 2)), 'one entry per stage'),
    (dict(grid_sizes=(8, 4, -2, 0)), r'grid_sizes\[2\]'),
    (dict(out_indices=(0, 4)), 'out_indices'),
    (dict(frozen_stages=5), 'frozen_stages'),
    (dict(query_from='x'), 'query_from'),
    (dict(drop_path_rate=1.5), 'drop_path_rate'),
    (dict(norm_cfg=dict(type='Nope')),
     r"norm_cfg must be a dict whose type is a registered layer "
     r"\(e.g. 'BN'.*'GN'.*\), got \{'type': 'Nope'\}"),
    (dict(norm_cfg='BN'), 'norm_cfg must be a dict'),
    (dict(act_cfg=dict(type='Nope')),
     r"act_cfg must be a dict whose type is a registered layer "
     r"\(e.g. 'SiLU'.*'GELU'.*\), got \{'type': 'Nope'\}"),
    (dict(act_cfg=None), 'act_cfg must be a dict'),
    (dict(in_channels=0), 'in_channels must be a positive int, got 0'),
    (dict(in_channels=3.0), 'in_channels must be a positive int'),
    (dict(with_cp='yes'), "with_cp must be True or False, got 'yes'"),
    (dict(norm_eval=1), 'norm_eval must be True or False'),
    (dict(out_indices=(-1, )), r'out_indices entries must be ints in '
     r'\[0, 3\], got -1'),
    (dict(out_indices=(3, 1)), r'out_indices must be increasing.*'
     r'use \(1, 3\)'),
    (dict(out_indices=(1, 1)), 'out_indices must be increasing'),
    (dict(out_indices=()), 'out_indices must be an int or a non-empty'),
])
def test_bad_arguments_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransCNN(**kwargs)


def test_layer_cfgs_accept_registered_names_and_classes():
    TransCNN('small', norm_cfg=dict(type='GN', num_groups=1),
             act_cfg=dict(type='GELU'))
    TransCNN('small', norm_cfg=dict(type=torch.nn.BatchNorm2d))


def test_single_int_out_index_and_other_input_channels():
    model = TransCNN('small', in_channels=1, out_indices=2).eval()
    assert model.out_indices == (2, )
    with torch.no_grad():
        outs = model(torch.randn(1, 1, 64, 64))
    assert [o.shape[1] for o in outs] == [256]


def test_custom_arch_dict():
    model = TransCNN(
        dict(channels=[64, 128], depths=[1, 1], kernel_sizes=[3, 3],
             expand_ratios=[2, 2]), grid_sizes=(4, 0), out_indices=(0, 1))
    outs = model.eval()(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 128]


@pytest.mark.parametrize('shape', [(3, 64, 64), (1, 1, 64, 64)])
def test_bad_input_is_reported(small, shape):
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        small(torch.randn(*shape))


def test_pretrained_init_loads_every_key(tmp_path):
    source = TransCNN('small')
    for p in source.parameters():
        torch.nn.init.normal_(p)
    state = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(10, 512)
    path = tmp_path / 'cls.pth'
    torch.save(dict(meta=dict(epoch=1), state_dict=state), path)

    target = TransCNN('small', init_cfg=dict(
        type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    target.init_weights()
    for k, v in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[k], v)


def test_pretrained_init_reports_wrong_checkpoint(tmp_path):
    path = tmp_path / 'base.pth'
    torch.save({f'backbone.{k}': v
                for k, v in TransCNN('base').state_dict().items()}, path)
    target = TransCNN('small', init_cfg=dict(
        type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    with pytest.raises(RuntimeError, match='does not fit TransCNN'):
        target.init_weights()


def test_pretrained_init_missing_file_says_how_to_get_one(tmp_path):
    target = TransCNN('small', init_cfg=dict(
        type='Pretrained', checkpoint=str(tmp_path / 'nope.pth')))
    with pytest.raises(FileNotFoundError, match='init_cfg=None'):
        target.init_weights()
