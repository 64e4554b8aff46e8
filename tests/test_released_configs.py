"""Configs that start from the authors' released ImageNet files.

- every config under configs/released/ is covered here (none escapes);
- ImageNet evaluation configs: the released preset, its input size and the
  authors' resize/crop, a head of the preset's width; a converted file loads
  strictly into the classifier, and tools/test.py evaluates it end to end
  (tiny synthetic data, random weights);
- detection and segmentation configs (HAT-Net-Small here; the first
  version's are the headline configs, tests/test_headline_configs.py) build
  their models with the released preset and detection/segmentation grid
  settings, name the authors' URL, and the released file as downloaded
  initialises the backbone strictly through ``init_cfg``.
"""
import copy
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import load_checkpoint
from mmengine.utils import import_modules_from_strings

import mmtranscnn  # noqa: F401
from mmtranscnn.models import TransCNN
from mmtranscnn.models.released import RELEASED

from released_reference import compact_state_dict, random_state_dict
from tool_modules import load_tool

HERE = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(HERE)
RELEASED_DIR = osp.join(REPO, 'configs', 'released')
IMAGENET = sorted(glob.glob(osp.join(RELEASED_DIR, 'imagenet', '*.py')))
DETECTION = sorted(glob.glob(osp.join(RELEASED_DIR, 'detection', '*.py')))
SEGMENTATION = sorted(
    glob.glob(osp.join(RELEASED_DIR, 'segmentation', '*.py')))
with open(osp.join(HERE, 'data', 'released_layouts.json')) as f:
    FIXTURE = json.load(f)


def name_of(path):
    return osp.relpath(path, RELEASED_DIR)


def released_file(directory, preset, compact=False):
    """A random file in the released layout of ``preset``: well-conditioned
    weights, or (``compact``) windows of one buffer, a few MB on disk, for
    tests that only load and compare."""
    layout = {k: tuple(v) for k, v in FIXTURE[preset]['state_dict'].items()}
    sd = (compact_state_dict(layout, seed=3) if compact else
          random_state_dict(layout, seed=3))
    path = osp.join(str(directory), RELEASED[preset].file)
    torch.save({'model': sd}, path)
    return path, sd


@pytest.fixture(scope='module')
def released_files(tmp_path_factory):
    """preset -> (path, state dict) of a compact random file in its released
    layout, written once for the whole module."""
    directory = tmp_path_factory.mktemp('released')
    cache = {}

    def get(preset):
        if preset not in cache:
            cache[preset] = released_file(directory, preset, compact=True)
        return cache[preset]

    return get


def build(cfg, registry_scope):
    import_modules_from_strings(**cfg.custom_imports)
    registry = __import__(f'{registry_scope}.registry',
                          fromlist=['MODELS']).MODELS
    with DefaultScope.overwrite_default_scope(registry_scope):
        return registry.build(copy.deepcopy(cfg.model))


def test_every_released_config_is_covered():
    every = set(glob.glob(osp.join(RELEASED_DIR, '**', '*.py'),
                          recursive=True))
    bases = {p for p in every if '_base_' in p.split(os.sep)}
    assert every - bases == set(IMAGENET + DETECTION + SEGMENTATION)
    assert len(IMAGENET) == 8
    # HAT-Net-Small for each of RetinaNet, Mask R-CNN, Semantic FPN and
    # UperNet. The first version's presets are those of the headline
    # configs (configs/*.py, configs/segmentation/), not repeated here.
    for kind, paths in (('retinanet', DETECTION), ('mask_rcnn', DETECTION),
                        ('fpn', SEGMENTATION), ('upernet', SEGMENTATION)):
        assert any(osp.basename(p).startswith(f'{kind}_hatnet-small_')
                   for p in paths), kind
    for path in DETECTION + SEGMENTATION:
        assert not Config.fromfile(path).model.backbone.arch.startswith(
            'transcnn-v1'), path


@pytest.mark.parametrize('path', IMAGENET, ids=[name_of(p) for p in IMAGENET])
def test_imagenet_eval_config_is_the_authors_protocol(path):
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'mmpretrain'
    preset = cfg.model.backbone.arch
    size = RELEASED[preset].input_size
    assert osp.basename(path) == f'{preset}_in1k-{size}px.py'
    channels = TransCNN.arch_zoo[preset]['channels'][-1]
    assert cfg.model.head.in_channels == channels
    assert cfg.model.head.num_classes == 1000
    steps = {s['type']: s for s in cfg.test_dataloader.dataset.pipeline}
    assert steps['ResizeEdge']['scale'] == int(size * 256 / 224)
    assert steps['ResizeEdge']['interpolation'] == 'bicubic'
    assert steps['CenterCrop']['crop_size'] == size
    assert cfg.train_dataloader is None


@pytest.mark.parametrize('preset', ['transcnn-v1-tiny', 'hatnet-tiny'])
def test_converted_file_loads_strictly_into_the_classifier(preset, tmp_path):
    from mmpretrain.models import ImageClassifier
    size = RELEASED[preset].input_size
    cfg = Config.fromfile(osp.join(RELEASED_DIR, 'imagenet',
                                   f'{preset}_in1k-{size}px.py'))
    model = build(cfg, 'mmpretrain')
    assert type(model) is ImageClassifier
    src, sd = released_file(tmp_path, preset)
    dst = str(tmp_path / 'converted.pth')
    load_tool('tools/model_converters/hatnet2mmtranscnn.py').main(
        [src, dst, '--arch', preset])
    load_checkpoint(model, dst, strict=True)
    assert torch.equal(model.head.fc.weight, sd['classifier.1.weight'])
    # The file as downloaded also initialises the backbone in mmpretrain.
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=src)
    fresh = build(cfg, 'mmpretrain')
    fresh.init_weights()
    for key, value in fresh.backbone.state_dict().items():
        assert torch.equal(value, model.backbone.state_dict()[key]), key
    model.eval()
    with torch.no_grad():
        scores = model(torch.randn(1, 3, size, size), mode='tensor')
    assert scores.shape == (1, 1000)


def test_test_tool_evaluates_a_converted_file(tmp_path):
    make_tiny = load_tool('tools/data/make_tiny_imagenet.py')
    root = str(tmp_path / 'imagenet')
    make_tiny.make_tiny_imagenet(root, num_classes=2, train_per_class=1,
                                 val_per_class=2, layout='annfile')
    src, _ = released_file(tmp_path, 'hatnet-tiny')
    dst = str(tmp_path / 'hatnet-tiny_in1k.pth')
    load_tool('tools/model_converters/hatnet2mmtranscnn.py').main([src, dst])
    # The tool imports this checkout's package, not an installed one.
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(
                   [REPO] + ([os.environ['PYTHONPATH']]
                             if os.environ.get('PYTHONPATH') else [])))
    for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR',
                'MASTER_PORT'):
        env.pop(key, None)
    run = dict(cwd=str(tmp_path), env=env, capture_output=True, text=True,
               timeout=240)
    config = osp.join(RELEASED_DIR, 'imagenet', 'hatnet-tiny_in1k-224px.py')
    proc = subprocess.run([
        sys.executable, osp.join(REPO, 'tools', 'test.py'), config, dst,
        '--work-dir', str(tmp_path / 'work'), '--cfg-options',
        f'test_dataloader.dataset.data_root={root}',
        'test_dataloader.batch_size=4', 'test_dataloader.num_workers=0',
        'test_dataloader.persistent_workers=False'
    ], **run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result, ) = glob.glob(str(tmp_path / 'work' / '*' / '*.json'))
    with open(result) as f:
        metrics = json.load(f)
    assert 0 <= metrics['accuracy/top1'] <= 100
    assert 'accuracy/top5' in metrics


def _released_backbone_check(cfg, scope, released_files):
    backbone = cfg.model.backbone
    preset = backbone.arch
    assert preset in RELEASED
    # The authors' file by URL, as downloaded (no prefix on its keys).
    assert backbone.init_cfg.checkpoint == RELEASED[preset].url
    assert backbone.init_cfg.prefix is None
    src, sd = released_files(preset)
    cfg.model.backbone.init_cfg.checkpoint = src
    model = build(cfg, scope)
    model.backbone.init_weights()  # strict: raises on any key
    assert torch.equal(model.backbone.stem.conv2.conv.weight,
                       sd['patch_embed.3.weight'])
    return model


@pytest.mark.parametrize('path', DETECTION, ids=[name_of(p) for p in
                                                 DETECTION])
def test_detection_config_starts_from_the_released_file(path,
                                                       released_files):
    cfg = Config.fromfile(path)
    assert cfg.custom_imports.imports == ['mmtranscnn']
    assert tuple(cfg.model.backbone.pool_ratios) == (16, 8, 4, 0)
    model = _released_backbone_check(cfg, 'mmdet', released_files)
    channels = TransCNN.arch_zoo[cfg.model.backbone.arch]['channels']
    assert list(cfg.model.neck.in_channels) == channels
    assert model.backbone.grid_sizes == tuple(
        (g, ) if g else () for g in cfg.model.backbone.grid_sizes)


@pytest.mark.parametrize('path', SEGMENTATION,
                         ids=[name_of(p) for p in SEGMENTATION])
def test_segmentation_config_starts_from_the_released_file(path,
                                                          released_files):
    cfg = Config.fromfile(path)
    model = _released_backbone_check(cfg, 'mmseg', released_files)
    if cfg.model.backbone.arch.startswith('hatnet'):
        # GroupNorm, not the base file's SyncBN.
        assert model.backbone.stem.conv1.gn is not None
    model.eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == TransCNN.arch_zoo[
        cfg.model.backbone.arch]['channels']
