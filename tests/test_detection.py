"""Object detection with MMDetection: configs, shapes data, tools, demo, mim.

- Every detection config under configs/ (top level and tiny/) builds in
  mmdet and wires the backbone's four maps into FPN; the top-level ones
  state the paper's §4.4 protocol; the tiny ones differ from the config they
  inherit only in data, image size, schedule and grid sizes.
- tools/data/make_shapes_coco.py writes deterministic COCO data (boxes,
  polygon and RLE masks) that mmdet's CocoDataset reads.
- End to end (slow): RetinaNet and Mask R-CNN train and evaluate through
  tools/train.py and tools/test.py, memorising two images: the loss falls
  and bbox mAP clears a floor the untrained model does not reach; a run
  with --amp trains with finite losses and, killed, resumes with the same
  schedule; demo/image_demo.py draws an image of any size; a config outside
  the repository inherits the installed (non-editable) package's config and
  trains; ``mim train mmtranscnn retinanet_transcnn_base.py`` finds that
  config. Independent runs go side by side (tests/side_by_side.py).
"""
import ast
import functools
import glob
import importlib.util
import json
import math
import os
import os.path as osp
import signal
import subprocess
import sys
import time
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmtranscnn import get_config_path
from mmtranscnn.engine import setup_codebase
from mmtranscnn.models import TransCNN
from mmtranscnn.models.released import RELEASED
from side_by_side import side_by_side
from tool_modules import load_tool

TESTS_DIR = osp.dirname(osp.abspath(__file__))
REPO_DIR = osp.dirname(TESTS_DIR)
CONFIG_DIR = osp.join(REPO_DIR, 'configs')
TOP_CONFIGS = [
    osp.join(CONFIG_DIR, f'{det}_transcnn_{arch}.py')
    for det in ('retinanet', 'mask_rcnn') for arch in ('small', 'base')
]
TINY_RETINANET = osp.join(CONFIG_DIR, 'tiny',
                          'retinanet_transcnn_small_shapes.py')
TINY_MASK_RCNN = osp.join(CONFIG_DIR, 'tiny',
                          'mask_rcnn_transcnn_small_shapes.py')
# Every config a user can run at the top level and in tiny/ (not the _base_
# pieces); the detection ones are those named after their detector, the
# others are built by the tests of their codebase (segmentation,
# pretraining).
ALL_CONFIGS = sorted(
    glob.glob(osp.join(CONFIG_DIR, '*.py')) +
    glob.glob(osp.join(CONFIG_DIR, 'tiny', '*.py')))
DETECTION_CONFIGS = [
    p for p in ALL_CONFIGS
    if osp.basename(p).startswith(('retinanet_', 'mask_rcnn_'))
]
TRAIN = osp.join(REPO_DIR, 'tools', 'train.py')
TEST = osp.join(REPO_DIR, 'tools', 'test.py')
DEMO = osp.join(REPO_DIR, 'demo', 'image_demo.py')
RUN_TIMEOUT = 600  # seconds per subprocess; a shared 2-core CPU is slow
CLASSES = ('circle', 'rectangle', 'triangle', 'ring')


shapes = load_tool('tools/data/make_shapes_coco.py', 'make_shapes_coco')


def rel(path):
    return osp.relpath(path, CONFIG_DIR)


def load_config(path):
    cfg = Config.fromfile(path)
    setup_codebase(cfg)
    return cfg


def without_missing_pretrained(cfg):
    """Drop the backbone's init_cfg when its checkpoint is not on disk."""
    init_cfg = cfg.model.backbone.get('init_cfg')
    if init_cfg and not osp.isfile(init_cfg['checkpoint']):
        cfg.model.backbone.init_cfg = None
    return cfg


# -- configs ------------------------------------------------------------------
def test_all_four_detection_configs_exist():
    for path in TOP_CONFIGS + [TINY_RETINANET, TINY_MASK_RCNN]:
        assert osp.isfile(path), path


def test_every_mmdet_config_is_a_detection_config():
    # A detection config named otherwise would escape the build test below.
    for path in ALL_CONFIGS:
        scope = Config.fromfile(path).get('default_scope')
        assert (scope == 'mmdet') == (path in DETECTION_CONFIGS), (path,
                                                                   scope)


@pytest.mark.parametrize('path', DETECTION_CONFIGS,
                         ids=[rel(p) for p in DETECTION_CONFIGS])
def test_config_builds_its_detector(path):
    cfg = Config.fromfile(path)
    assert cfg.get('default_scope') == 'mmdet', path
    setup_codebase(cfg)
    from mmdet.registry import MODELS
    assert 'mmtranscnn' in cfg.custom_imports['imports']
    assert cfg.custom_imports['allow_failed_imports'] is False
    model = MODELS.build(without_missing_pretrained(cfg).model)
    assert isinstance(model.backbone, TransCNN)
    assert list(cfg.model.neck.in_channels) == model.backbone.num_features
    # A size that is no multiple of 32 or of the grids: FPN gets the four
    # maps and returns its levels, all with its channels.
    model.eval()
    with torch.no_grad():
        feats = model.extract_feat(torch.rand(1, 3, 72, 100))
    assert len(feats) == cfg.model.neck.num_outs
    assert all(f.shape[1] == cfg.model.neck.out_channels for f in feats)


def base_files(path):
    """The ``_base_`` entries written in a config file."""
    with open(path) as f:
        for node in ast.parse(f.read()).body:
            if isinstance(node, ast.Assign) and node.targets[0].id == '_base_':
                value = ast.literal_eval(node.value)
                return value if isinstance(value, list) else [value]
    return []


@pytest.mark.parametrize('path', TOP_CONFIGS, ids=[rel(p) for p in
                                                    TOP_CONFIGS])
def test_top_level_configs_follow_the_paper(path):
    """§4.4 (PVT's protocol) on mmdet's own bases."""
    name = osp.basename(path)
    det, arch = name[:-3].split('_transcnn_')
    cfg = load_config(path)
    # mmdet's bases, inherited rather than copied.
    root = path if arch == 'base' else osp.join(
        CONFIG_DIR, f'{det}_transcnn_base.py')
    bases = base_files(root)
    model_base = {'retinanet': 'retinanet_r50_fpn.py',
                  'mask_rcnn': 'mask-rcnn_r50_fpn.py'}[det]
    data_base = {'retinanet': 'coco_detection.py',
                 'mask_rcnn': 'coco_instance.py'}[det]
    assert f'mmdet::_base_/models/{model_base}' in bases
    assert f'mmdet::_base_/datasets/{data_base}' in bases
    assert 'mmdet::_base_/default_runtime.py' in bases
    assert cfg.model.type == {'retinanet': 'RetinaNet',
                              'mask_rcnn': 'MaskRCNN'}[det]

    bb = cfg.model.backbone
    # The authors' released networks closest to Table 1's (their
    # TransCNN-Small has Table 1's Base layout), from their files by URL
    # (tests/test_headline_configs.py loads them from the cache).
    released = {'base': 'transcnn-v1-small', 'small': 'transcnn-v1-tiny'}
    assert bb.type == 'TransCNN' and bb.arch == released[arch]
    assert tuple(bb.grid_sizes) == (8, 8, 8, 0)
    assert tuple(bb.pool_ratios) == (16, 8, 4, 0)  # §4.4: ImageNet's x2
    assert tuple(bb.out_indices) == (0, 1, 2, 3)
    assert bb.norm_eval is True and bb.frozen_stages == -1
    assert bb.init_cfg == dict(
        type='Pretrained', checkpoint=RELEASED[bb.arch].url, prefix=None)
    assert list(cfg.model.neck.in_channels) == [64, 128, 256, 512]

    # AdamW 1e-4, weight decay 1e-4; x0.1 after epochs 8 and 11; 12 epochs;
    # linear warm-up; 8 GPUs x 2 images.
    assert cfg.optim_wrapper.optimizer == dict(
        type='AdamW', lr=1e-4, weight_decay=1e-4)
    warmup, steps = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and warmup.by_epoch is False
    assert steps.type == 'MultiStepLR' and steps.gamma == 0.1
    assert list(steps.milestones) == [8, 11]
    assert cfg.train_cfg.max_epochs == 12
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.auto_scale_lr.base_batch_size == 16

    # COCO train2017/val2017, shorter side 800 (longer <= 1333), flip.
    train = cfg.train_dataloader.dataset
    assert train.ann_file == 'annotations/instances_train2017.json'
    assert cfg.val_dataloader.dataset.ann_file.endswith(
        'instances_val2017.json')
    steps = {t['type']: t for t in train.pipeline}
    assert steps['Resize']['scale'] == (1333, 800)
    assert steps['Resize']['keep_ratio'] is True
    assert steps['RandomFlip']['prob'] == 0.5
    assert steps['LoadAnnotations'].get('with_mask', False) == (
        det == 'mask_rcnn')
    test_resize = [t for t in cfg.test_dataloader.dataset.pipeline
                   if t['type'] == 'Resize'][0]
    assert test_resize['scale'] == (1333, 800)
    metrics = cfg.val_evaluator.metric
    assert metrics == ('bbox' if det == 'retinanet' else ['bbox', 'segm'])


def test_missing_pretrained_checkpoint_says_how_to_get_one():
    cfg = load_config(osp.join(CONFIG_DIR, 'paper_arch',
                               'retinanet_transcnn-paper-small_fpn_1x_coco.py'))
    checkpoint = cfg.model.backbone.init_cfg.checkpoint
    if osp.isfile(checkpoint):
        pytest.skip(f'{checkpoint} exists here')
    backbone = TransCNN(**{k: v for k, v in cfg.model.backbone.items()
                           if k != 'type'})
    with pytest.raises(FileNotFoundError) as err:
        backbone.init_weights()
    message = str(err.value)
    assert checkpoint in message
    assert 'configs/imagenet' in message and 'init_cfg=None' in message


def flatten(value, prefix=''):
    """Nested dicts/lists as {dotted.key: leaf}."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)) and any(
            isinstance(v, (dict, list, tuple)) for v in value):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: value}
    flat = {}
    for key, sub in items:
        flat.update(flatten(sub, f'{prefix}.{key}' if prefix else str(key)))
    return flat


# What a tiny config may change in the config it inherits (issue 4: "data,
# image size, schedule and grid sizes"). Training from scratch without an
# ImageNet checkpoint also means no init_cfg, BN statistics of its own and
# no stochastic depth; a 4-class dataset means 4-class heads.
TINY_MODEL_CHANGES = ('backbone.grid_sizes', 'backbone.init_cfg',
                      'backbone.norm_eval', 'backbone.drop_path_rate',
                      'bbox_head.num_classes', 'roi_head.bbox_head.num_classes',
                      'roi_head.mask_head.num_classes')
TINY_TOP_LEVEL_CHANGES = {
    # data and image size
    'data_root', 'metainfo', 'img_scale', 'train_pipeline', 'test_pipeline',
    'train_dataloader', 'val_dataloader', 'test_dataloader',
    'val_evaluator', 'test_evaluator',
    # schedule
    'max_epochs', 'train_cfg', 'param_scheduler', 'optim_wrapper',
    'auto_scale_lr', 'default_hooks', 'log_processor',
}


@pytest.mark.parametrize('path', [TINY_RETINANET, TINY_MASK_RCNN],
                         ids=['retinanet', 'mask_rcnn'])
def test_tiny_config_changes_only_data_size_schedule_and_grids(path):
    (parent, ) = base_files(path)
    parent = osp.normpath(osp.join(osp.dirname(path), parent))
    # A real config: Table 1's Small, as the main job trains from scratch.
    assert osp.dirname(parent) == osp.join(CONFIG_DIR, 'paper_arch')
    tiny, real = Config.fromfile(path), Config.fromfile(parent)
    changed = {k for k in set(tiny) | set(real)
               if tiny.get(k) != real.get(k)}
    assert changed - {'model'} <= TINY_TOP_LEVEL_CHANGES, changed
    flat_tiny, flat_real = flatten(tiny.model.to_dict()), flatten(
        real.model.to_dict())
    model_changes = {
        k for k in set(flat_tiny) | set(flat_real)
        if flat_tiny.get(k) != flat_real.get(k)
    }
    allowed = {k for k in model_changes if k.startswith(TINY_MODEL_CHANGES)}
    assert model_changes == allowed, model_changes - allowed
    # The optimizer stays AdamW with the real weight decay; only the lr and
    # gradient clipping belong to the schedule.
    assert tiny.optim_wrapper.optimizer.type == 'AdamW'
    assert tiny.optim_wrapper.optimizer.weight_decay == \
        real.optim_wrapper.optimizer.weight_decay
    assert tiny.model.backbone.init_cfg is None
    assert tiny.train_dataloader.dataset.metainfo['classes'] == CLASSES


def test_config_path_of_installed_configs():
    path = get_config_path('retinanet_transcnn_base.py')
    assert osp.isfile(path) and osp.isabs(path)
    assert osp.samefile(path, osp.join(CONFIG_DIR,
                                       'retinanet_transcnn_base.py'))
    with pytest.raises(FileNotFoundError, match='retinanet_transcnn_base'):
        get_config_path('retinanet_transcnn_huge.py')
    with pytest.raises(FileNotFoundError):
        get_config_path('../setup.py')  # outside the configs
    with pytest.raises(ValueError, match='name'):
        get_config_path(None)


DOWNSTREAM_CONFIG = """
# A config in another project: it inherits the installed mmtranscnn config.
_base_ = __import__('mmtranscnn').get_config_path('retinanet_transcnn_base.py')
data_root = {data_root!r}
metainfo = dict(classes={classes!r})
img_scale = (64, 64)
model = dict(
    backbone=dict(grid_sizes=(4, 2, 0, 0), pool_ratios=(4, 2, 0, 0),
                  init_cfg=None, norm_eval=False),
    bbox_head=dict(num_classes={num_classes}),
    test_cfg=dict(score_thr=0.0))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=2)
val_cfg = None
val_dataloader = None
val_evaluator = None
test_cfg = None
test_dataloader = None
test_evaluator = None
param_scheduler = None
# Weights only in the checkpoint (the test's disk: ~0.4 GB with AdamW's
# state).
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(by_epoch=False, interval=2,
                                     save_optimizer=False))
log_processor = dict(by_epoch=False)
"""


def write_downstream_config(directory, data_root):
    os.makedirs(directory, exist_ok=True)
    path = osp.join(directory, 'retinanet_transcnn_base_myshapes.py')
    with open(path, 'w') as f:
        f.write(DOWNSTREAM_CONFIG.format(
            data_root=osp.join(str(data_root), ''), classes=CLASSES,
            num_classes=len(CLASSES)))
    return path


def test_downstream_config_inherits_and_overrides(tmp_path):
    path = write_downstream_config(tmp_path / 'my_project', tmp_path / 'd')
    cfg = Config.fromfile(path)
    # Ours: the model type, FPN wiring and backbone arch come from the base.
    assert cfg.model.type == 'RetinaNet'
    assert cfg.model.backbone.arch == 'transcnn-v1-small'
    assert list(cfg.model.neck.in_channels) == [64, 128, 256, 512]
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    # Theirs: grid sizes, classes, data.
    assert tuple(cfg.model.backbone.grid_sizes) == (4, 2, 0, 0)
    assert cfg.model.bbox_head.num_classes == len(CLASSES)
    assert cfg.train_dataloader.dataset.data_root.startswith(str(tmp_path))


# -- the shapes data ----------------------------------------------------------
def file_contents(root):
    out = {}
    for path in sorted(glob.glob(osp.join(root, '**', '*'), recursive=True)):
        if osp.isfile(path):
            with open(path, 'rb') as f:
                out[osp.relpath(path, root)] = f.read()
    return out


SMALL_DATA = dict(num_train=12, num_val=4, img_size=(96, 80))


def test_shapes_is_deterministic_by_seed(tmp_path):
    a = shapes.make_shapes_coco(str(tmp_path / 'a'), **SMALL_DATA)
    b = shapes.make_shapes_coco(str(tmp_path / 'b'), **SMALL_DATA)
    c = shapes.make_shapes_coco(str(tmp_path / 'c'), seed=1, **SMALL_DATA)
    assert a['generated'] and b['generated'] and c['generated']
    files_a = file_contents(tmp_path / 'a')
    assert files_a == file_contents(tmp_path / 'b')
    files_c = file_contents(tmp_path / 'c')
    assert files_a.keys() == files_c.keys()
    assert files_a['train/000001.png'] != files_c['train/000001.png']
    # The same call again finds the data and writes nothing.
    again = shapes.make_shapes_coco(str(tmp_path / 'a'), **SMALL_DATA)
    assert again['generated'] is False
    assert again['train'] == a['train']
    other = shapes.make_shapes_coco(str(tmp_path / 'a'), **dict(
        SMALL_DATA, num_train=3))
    assert other['generated'] and other['train']['images'] == 3
    assert len(os.listdir(tmp_path / 'a' / 'train')) == 3


def test_shapes_annotations_are_valid_coco(tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    shapes.make_shapes_coco(str(tmp_path), **SMALL_DATA)
    width, height = SMALL_DATA['img_size']
    kinds = set()
    for split, num in (('train', 12), ('val', 4)):
        coco = COCO(str(tmp_path / 'annotations' / f'instances_{split}.json'))
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(
            CLASSES)
        assert len(coco.getImgIds()) == num
        for img in coco.loadImgs(coco.getImgIds()):
            path = tmp_path / split / img['file_name']
            from PIL import Image
            assert Image.open(path).size == (width, height)
            assert (img['width'], img['height']) == (width, height)
            assert coco.getAnnIds(imgIds=img['id'])  # every scene has one
        for ann in coco.loadAnns(coco.getAnnIds()):
            x, y, w, h = ann['bbox']
            assert 0 <= x and 0 <= y and w > 1 and h > 1
            assert x + w <= width and y + h <= height
            mask = coco.annToMask(ann)
            # The box is that of the visible mask, the area its pixels.
            assert abs(int(mask.sum()) - ann['area']) <= max(
                3, .05 * ann['area'])
            ys, xs = np.nonzero(mask)
            assert xs.min() >= math.floor(x) - 1 and ys.min() >= math.floor(
                y) - 1
            assert xs.max() <= x + w and ys.max() <= y + h
            kinds.add('rle' if isinstance(ann['segmentation'], dict) else
                      'polygon')
            if isinstance(ann['segmentation'], dict):
                assert mask_utils.area(ann['segmentation']) == ann['area']
        if split == 'train':
            labels = {a['category_id'] for a in coco.loadAnns(
                coco.getAnnIds())}
            assert labels == {1, 2, 3, 4}
    assert kinds == {'rle', 'polygon'}


def test_shapes_rejects_bad_arguments(tmp_path):
    for kwargs, field in ((dict(img_size=(16, 16)), 'img_size'),
                          (dict(objects=(3, 2)), 'objects'),
                          (dict(size_range=(.5, .9)), 'size_range'),
                          (dict(num_val=0), 'num_val')):
        with pytest.raises(ValueError, match=field):
            shapes.make_shapes_coco(str(tmp_path), **kwargs)


def test_coco_dataset_reads_shapes_boxes_and_masks(tmp_path):
    shapes.make_shapes_coco(str(tmp_path), **SMALL_DATA)
    cfg = load_config(TINY_MASK_RCNN)
    from mmdet.registry import DATASETS
    dataset_cfg = cfg.train_dataloader.dataset
    dataset_cfg.data_root = str(tmp_path)
    dataset = DATASETS.build(dataset_cfg)
    assert dataset.metainfo['classes'] == CLASSES
    assert len(dataset) == 12
    sample = dataset[0]['data_samples']
    gt = sample.gt_instances
    assert len(gt) > 0 and len(gt.masks) == len(gt)
    # Resized from 96x80 to fit 160x160: 160x133.
    assert gt.masks.masks.shape[1:] == (133, 160)
    for box, mask in zip(gt.bboxes.tensor, gt.masks.masks):
        ys, xs = np.nonzero(mask)
        assert xs.min() >= box[0] - 2 and xs.max() <= box[2] + 2
        assert ys.min() >= box[1] - 2 and ys.max() <= box[3] + 2


# -- end to end ---------------------------------------------------------------
def tool_env(**extra):
    env = dict(os.environ)
    # One thread: these runs are tiny, and on a loaded 2-core machine a
    # second OpenMP thread waiting for a core slows every step down.
    env['OMP_NUM_THREADS'] = '1'
    env['PYTHONWARNINGS'] = 'ignore'
    # The tools import this checkout's mmtranscnn, whatever the environment
    # has installed (e.g. an editable install of another checkout).
    env['PYTHONPATH'] = os.pathsep.join(
        [REPO_DIR] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep)
                      if p])
    env.update(extra)
    return env


def run(cmd, cwd, env=None, timeout=RUN_TIMEOUT):
    proc = subprocess.run(cmd, cwd=str(cwd), env=env or tool_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def read_scalars(work_dir):
    """Every line of the newest run's scalars.json in ``work_dir``."""
    paths = sorted(glob.glob(osp.join(str(work_dir), '*', 'vis_data',
                                      'scalars.json')), key=osp.getmtime)
    if not paths:
        return []
    with open(paths[-1]) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_test_metrics(work_dir):
    """The metrics of the newest tools/test.py run in ``work_dir``.

    mmengine's Runner.test writes them to ``<timestamp>/<timestamp>.json``
    (test runs log no vis_data/scalars.json).
    """
    paths = sorted((p for p in glob.glob(
        osp.join(str(work_dir), '*', '*.json'))
                    if osp.basename(osp.dirname(p)) ==
                    osp.splitext(osp.basename(p))[0]), key=osp.getmtime)
    assert paths, f'no <timestamp>/<timestamp>.json under {work_dir}'
    with open(paths[-1]) as f:
        return json.loads(f.read().strip().splitlines()[-1])


DERIVED_CONFIG = """
_base_ = {base!r}
data_root = {data_root!r}
img_scale = (64, 64)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask={with_mask}),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask={with_mask}),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor'))
]
train_dataloader = dict(
    batch_size=2,
    sampler=dict(shuffle=False),
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2, dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
# Keep every detection, so that the metric is computed even for a detector
# that has trained for a few iterations only.
model = dict(test_cfg={test_cfg})
max_epochs = {epochs}
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
# The lr drops x0.1 after epoch {milestone}: a resumed run must keep that.
param_scheduler = [
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=max_epochs,
         milestones=[{milestone}], gamma=0.1)
]
# A checkpoint every epoch, the last one kept (with its optimizer state,
# ~0.3 GB: --resume needs it).
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval=1, max_keep_ckpts=1))
log_processor = dict(window_size=1)
randomness = dict(seed=0)
"""
# Batch 2: 2 iterations per epoch, so the killed run's 3 epochs are 6
# iterations: they run under --amp, whose bf16 steps cost ~4 s each where
# the CPU has no native bf16 (AVX2 only).
TRAIN_IMAGES = 4

# Does the detector learn? It trains on the first two training images only,
# unflipped, every iteration, and is evaluated on the same two images. A
# detector whose training works fits them within a few dozen iterations; a
# broken one (gradients that do not reach the weights, wrong targets, a head
# on the wrong level, a metric on the wrong boxes) stays where the untrained
# model is.
MEMORISE_CONFIG = """
_base_ = {base!r}
data_root = {data_root!r}
img_scale = (64, 64)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask={with_mask}),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask={with_mask}),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor'))
]
train_dataloader = dict(
    batch_size=2,
    sampler=dict(shuffle=False),
    dataset=dict(data_root=data_root, pipeline=train_pipeline, indices=2))
val_dataloader = dict(
    batch_size=2,
    dataset=dict(data_root=data_root, pipeline=test_pipeline, indices=2,
                 ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_train.json')
test_evaluator = val_evaluator
# Keep every detection (the metric then ranks them all). BN running
# statistics of the last batch (momentum 1): with the default 0.1 they lag
# the weights, which change fast here, and the eval-mode model scored bbox
# mAP 0.016 after 20 iterations while the train-mode one found every object.
model = dict(test_cfg={test_cfg},{train_cfg}
             backbone=dict(norm_cfg=dict(type='BN', momentum=1.0)))
max_epochs = {epochs}
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5)
]
optim_wrapper = dict(optimizer=dict(lr={lr}))
# The tools after training need the weights only.
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1,
                    save_optimizer=False))
log_processor = dict(window_size=1)
randomness = dict(seed=0)
"""
# Iterations (one per epoch): as many as each needs to clear its floor
# below with a margin, no more (Mask R-CNN's cost ~1 s per iteration here).
MEMORISE_ITERS = {'RetinaNet': 30, 'MaskRCNN': 20}
# The lr: RetinaNet's tiny config's 5e-4; Mask R-CNN's 1e-3 made its loss
# diverge after 23 iterations on two images (1.2 -> 10.2), 2e-4 did not.
MEMORISE_LR = {'RetinaNet': 5e-4, 'MaskRCNN': 2e-4}
# bbox mAP on the two memorised images. Untrained, the detectors score
# 0.008 (RetinaNet) and 0.000 (Mask R-CNN) there, with 100 boxes per image
# (measured: the same config, one iteration at an lr of 1e-16); a detector
# that finds nothing scores 0. After MEMORISE_ITERS iterations they reached
# 0.107 and 0.034-0.036 (measured on a 2-core Xeon, 1 thread, over three
# versions of the model code).
MAP_FLOOR = {'RetinaNet': 0.04, 'MaskRCNN': 0.01}
# 64 RoIs per image for the second stage instead of 512 (at most 16
# positives instead of 128): its heads' cost per iteration follows them,
# and 30 iterations stay affordable on a CPU.
MASK_RCNN_TRAIN_CFG = '''
             train_cfg=dict(rcnn=dict(sampler=dict(num=64))),'''


def write_memorise_config(directory, base, data_root, epochs=None):
    with_mask = base == TINY_MASK_RCNN
    if epochs is None:
        epochs = MEMORISE_ITERS['MaskRCNN' if with_mask else 'RetinaNet']
    test_cfg = ("dict(rcnn=dict(score_thr=0.0))" if with_mask else
                "dict(score_thr=0.0)")
    path = osp.join(str(directory), f'memorise_{osp.basename(base)}')
    with open(path, 'w') as f:
        f.write(MEMORISE_CONFIG.format(
            base=base, data_root=osp.join(str(data_root), ''),
            with_mask=with_mask, test_cfg=test_cfg, epochs=epochs,
            lr=MEMORISE_LR['MaskRCNN' if with_mask else 'RetinaNet'],
            train_cfg=MASK_RCNN_TRAIN_CFG if with_mask else ''))
    return path


def assert_learned(scalars, detector):
    """The loss fell and the validation bbox mAP is above the floor."""
    losses = [s['loss'] for s in scalars if 'loss' in s]
    assert len(losses) == MEMORISE_ITERS[detector]
    assert all(math.isfinite(v) for v in losses)
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    # Measured (means of 5): 2.28 -> 0.12 (RetinaNet), 5.61 -> 1.45 (Mask
    # R-CNN); a detector that does not learn stays near its first losses.
    assert last < 0.4 * first, losses
    (val, ) = [s for s in scalars if 'coco/bbox_mAP' in s]
    assert val['coco/bbox_mAP'] >= MAP_FLOOR[detector], val
    return val


def write_derived_config(directory, base, data_root, epochs=1, milestone=10):
    """A config inheriting a tiny config by path, on the test's data."""
    with_mask = base == TINY_MASK_RCNN
    test_cfg = ("dict(rcnn=dict(score_thr=0.0))" if with_mask else
                "dict(score_thr=0.0)")
    path = osp.join(str(directory), f'derived_{osp.basename(base)}')
    with open(path, 'w') as f:
        f.write(DERIVED_CONFIG.format(
            base=base, data_root=osp.join(str(data_root), ''),
            with_mask=with_mask, test_cfg=test_cfg, epochs=epochs,
            milestone=milestone))
    return path


@pytest.fixture(scope='module')
def shapes_data(module_tmp):
    root = module_tmp('shapes')
    shapes.make_shapes_coco(str(root), num_train=TRAIN_IMAGES, num_val=4,
                            img_size=(64, 64), size_range=(.3, .6))
    return root


def killed_and_resumed(config, work_dir):
    """Kill a 3-epoch --amp run inside epoch 2 and resume it. Returns the
    loss records of the killed run, the epoch it resumes from, the resumed
    run's output and the checkpoints it left (then deleted: ~0.3 GB each
    with the optimizer state)."""
    per_epoch = TRAIN_IMAGES // 2
    cwd = osp.dirname(config)
    cmd = [sys.executable, TRAIN, config, '--amp', '--work-dir',
           str(work_dir)]
    proc = subprocess.Popen(cmd, cwd=cwd, env=tool_env(),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + RUN_TIMEOUT
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f'the run ended (code {proc.returncode}) before '
                            'it could be killed in epoch 2')
            iters = [s['iter'] for s in read_scalars(work_dir)
                     if 'loss' in s]
            # One checkpoint is kept (the config): epoch_1, or epoch_2
            # once that is written.
            if any(work_dir.glob('epoch_*.pth')) and iters and \
                    max(iters) > per_epoch:
                break
            time.sleep(0.1)
        else:
            pytest.fail('the run did not reach epoch 2 in time')
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = [s for s in read_scalars(work_dir) if 'loss' in s]
    assert not (work_dir / 'epoch_3.pth').exists()
    last_epoch = max(int(p.name[6:-4]) for p in work_dir.glob('epoch_*.pth'))
    time.sleep(1.1)  # a new timestamp directory for the resumed run
    out = run(cmd + ['--resume'], cwd=cwd)
    checkpoints = sorted(p.name for p in work_dir.glob('*.pth'))
    for name in checkpoints:
        os.remove(work_dir / name)
    return dict(killed=killed, last_epoch=last_epoch, out=out,
                checkpoints=checkpoints)


@pytest.fixture(scope='module')
def e2e(shapes_data, built_dists, module_tmp):
    """Every end-to-end run of this module, side by side (one per core,
    tests/side_by_side.py), each as soon as the run it reads has finished:

    - 'RetinaNet', 'MaskRCNN': tools/train.py memorising two images;
    - after them: 'retinanet_test', 'mask_rcnn_test' (tools/test.py),
      'demo' (demo/image_demo.py) and 'main_job' (the main job's drawing
      step in a fresh interpreter, as the job runs it) on the RetinaNet;
    - 'killed': an --amp run killed in epoch 2, then resumed;
    - 'install': the session's wheel (conftest.py) installed into a folder
      outside the repo, then 'where' (where mmtranscnn and its configs
      resolve), 'downstream' (a project's training inheriting
      retinanet_transcnn_base.py) and 'mim' (``mim train``) with that
      folder first on PYTHONPATH: it shadows the editable install of the
      test environment, as a normal ``pip install mmtranscnn`` would be the
      only one.

    Returns ``SimpleNamespace(dirs=, configs=, runs=)``: directories and
    configs by name, and name -> finished future of the run's output.
    """
    from PIL import Image
    names = ('RetinaNet', 'MaskRCNN', 'retinanet_test', 'mask_rcnn_test',
             'demo', 'main_job', 'killed', 'install', 'downstream', 'mim')
    dirs = {name: module_tmp(name.lower()) for name in names}
    configs = {
        'RetinaNet': write_memorise_config(dirs['RetinaNet'], TINY_RETINANET,
                                           shapes_data),
        'MaskRCNN': write_memorise_config(dirs['MaskRCNN'], TINY_MASK_RCNN,
                                          shapes_data),
        'killed': write_derived_config(dirs['killed'], TINY_RETINANET,
                                       shapes_data, epochs=3, milestone=2),
        'downstream': write_downstream_config(
            dirs['downstream'] / 'my_project', shapes_data),
    }
    checkpoint = {d: str(dirs[d] / 'work' / f'epoch_{MEMORISE_ITERS[d]}.pth')
                  for d in MEMORISE_ITERS}
    image, _ = shapes.render_scene(np.random.default_rng(3), (150, 97), 3)
    Image.fromarray(image).save(dirs['demo'] / 'scene.jpg')
    draw = (
        'import sys; sys.path.insert(0, sys.argv[1]); import main_job; '
        'print(main_job.draw_predictions(sys.argv[2], sys.argv[3], 2, 0.0, '
        'config=sys.argv[4], data_root=sys.argv[5]))')
    site = dirs['install'] / 'site'
    installed = tool_env(PYTHONPATH=str(site))
    project = dirs['downstream'] / 'my_project'
    commands = {  # name -> (arguments of python, prerequisite)
        'MaskRCNN': ([TRAIN, configs['MaskRCNN'], '--work-dir',
                      str(dirs['MaskRCNN'] / 'work')], None),
        'RetinaNet': ([TRAIN, configs['RetinaNet'], '--work-dir',
                       str(dirs['RetinaNet'] / 'work')], None),
        'install': (['-m', 'pip', 'install', '-q', '--no-deps', '--target',
                     str(site), built_dists.wheel], None),
        'retinanet_test': ([
            TEST, configs['RetinaNet'], checkpoint['RetinaNet'],
            '--work-dir', str(dirs['retinanet_test']), '--out',
            str(dirs['retinanet_test'] / 'preds.pkl')], 'RetinaNet'),
        'mask_rcnn_test': ([
            TEST, configs['MaskRCNN'], checkpoint['MaskRCNN'],
            '--work-dir', str(dirs['mask_rcnn_test'])], 'MaskRCNN'),
        'demo': ([
            DEMO, configs['RetinaNet'], checkpoint['RetinaNet'],
            str(dirs['demo'] / 'scene.jpg'), '--out-file',
            str(dirs['demo'] / 'drawn' / 'scene.png'), '--score-thr', '0',
            '--device', 'cpu'], 'RetinaNet'),
        'main_job': ([
            '-c', draw, osp.join(REPO_DIR, 'tools'), checkpoint['RetinaNet'],
            str(dirs['main_job'] / 'drawn'), configs['RetinaNet'],
            str(shapes_data)], 'RetinaNet'),
        'where': ([
            '-c', 'import mmtranscnn; print(mmtranscnn.__file__); '
            "print(mmtranscnn.get_config_path('retinanet_transcnn_base.py'))"
        ], 'install'),
        'downstream': ([
            str(site / 'mmtranscnn' / '.mim' / 'tools' / 'train.py'),
            configs['downstream'], '--work-dir', 'work'], 'install'),
    }
    env = {'where': installed, 'downstream': installed}
    cwd = {'where': project, 'downstream': project}
    # The killed run first: its checkpoints (~0.3 GB, twice while one
    # replaces the other) are gone before most others are written.
    calls = {'killed': functools.partial(
        killed_and_resumed, configs['killed'], dirs['killed'] / 'work')}
    calls.update({name: functools.partial(
        run, [sys.executable] + args, cwd=cwd.get(name) or dirs[name],
        env=env.get(name)) for name, (args, _) in commands.items()})
    after = {name: first for name, (_, first) in commands.items() if first}
    if importlib.util.find_spec('mim') is not None:
        # Stopped right after our train.py has read the config, by an arch
        # name the backbone refuses: the output is checked, not the code.
        calls['mim'] = functools.partial(
            subprocess.run,
            [sys.executable, '-m', 'mim', 'train', 'mmtranscnn',
             'retinanet_transcnn_base.py', '--work-dir',
             str(dirs['mim'] / 'w'), '--cfg-options',
             'model.backbone.arch=stop-after-config'],
            cwd=str(dirs['mim']), env=installed, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, timeout=RUN_TIMEOUT)
        after['mim'] = 'install'
    dirs['site'], dirs['project'] = site, project
    return SimpleNamespace(dirs=dirs, configs=configs,
                           runs=side_by_side(calls, after))


@pytest.mark.slow
def test_retinanet_trains_and_evaluates_through_the_tools(e2e):
    e2e.runs['RetinaNet'].result()
    work_dir = e2e.dirs['RetinaNet'] / 'work'
    assert (work_dir / f"epoch_{MEMORISE_ITERS['RetinaNet']}.pth").is_file()
    val = assert_learned(read_scalars(work_dir), 'RetinaNet')

    test_dir = e2e.dirs['retinanet_test']
    assert 'coco/bbox_mAP_50' in e2e.runs['retinanet_test'].result()
    metrics = read_test_metrics(test_dir)
    # Same weights, same images: the validation at the end of training.
    assert metrics['coco/bbox_mAP'] == pytest.approx(val['coco/bbox_mAP'])
    import pickle
    with open(test_dir / 'preds.pkl', 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 2 and 'bboxes' in preds[0]['pred_instances']


@pytest.mark.slow
def test_mask_rcnn_trains_and_evaluates_through_the_tools(e2e):
    e2e.runs['MaskRCNN'].result()
    scalars = read_scalars(e2e.dirs['MaskRCNN'] / 'work')
    iters = MEMORISE_ITERS['MaskRCNN']
    assert len([s for s in scalars if 'loss_mask' in s]) == iters
    val = assert_learned(scalars, 'MaskRCNN')

    out = e2e.runs['mask_rcnn_test'].result()
    assert 'coco/segm_mAP' in out and 'coco/bbox_mAP' in out
    metrics = read_test_metrics(e2e.dirs['mask_rcnn_test'])
    assert metrics['coco/bbox_mAP'] == pytest.approx(val['coco/bbox_mAP'])
    assert 0 <= metrics['coco/segm_mAP_50'] <= 1


@pytest.mark.slow
def test_killed_amp_run_resumes_with_the_same_schedule(e2e):
    """--amp (bf16 autocast on the CPU) trains with finite losses; a 3-epoch
    run killed inside epoch 2 resumes with its lr schedule and epochs."""
    per_epoch = TRAIN_IMAGES // 2
    result = e2e.runs['killed'].result()
    config, work_dir = e2e.configs['killed'], e2e.dirs['killed'] / 'work'
    killed, last_epoch = result['killed'], result['last_epoch']
    assert last_epoch in (1, 2)
    assert f'resumed epoch: {last_epoch}, iter: {last_epoch * per_epoch}' \
        in result['out']
    resumed = [s for s in read_scalars(work_dir) if 'loss' in s]
    iters = [s['iter'] for s in resumed]
    assert iters == list(range(last_epoch * per_epoch + 1,
                               3 * per_epoch + 1))
    for record in killed + resumed:
        for key in ('loss', 'loss_cls', 'loss_bbox'):
            assert math.isfinite(record[key]), record
    dumped = work_dir / osp.basename(config)
    wrapper = Config.fromfile(str(dumped)).optim_wrapper.type
    expected = ('AmpOptimWrapper' if torch.cuda.is_available() else
                'CPUBF16AmpOptimWrapper')
    assert wrapper == expected
    # The schedule goes on where it was: x0.1 from epoch 3 (iteration 5).
    base_lr = Config.fromfile(config).optim_wrapper.optimizer.lr
    for record in resumed:
        want = base_lr * (0.1 if record['iter'] > 2 * per_epoch else 1.)
        assert record['lr'] == pytest.approx(want, rel=1e-6), record
    # And matches what the killed run logged for the same iterations.
    before = {s['iter']: s['lr'] for s in killed}
    for record in resumed:
        if record['iter'] in before:
            assert record['lr'] == pytest.approx(before[record['iter']])
    assert result['checkpoints'] == ['epoch_3.pth']
    assert any('coco/bbox_mAP' in s for s in read_scalars(work_dir))


@pytest.mark.slow
def test_image_demo_draws_an_image_of_any_size(e2e):
    from PIL import Image
    assert 'detections' in e2e.runs['demo'].result()
    demo_dir = e2e.dirs['demo']
    drawn = np.asarray(Image.open(demo_dir / 'drawn' / 'scene.png')
                       .convert('RGB'))
    assert drawn.shape == (97, 150, 3)
    original = np.asarray(Image.open(demo_dir / 'scene.jpg').convert('RGB'))
    assert np.abs(drawn.astype(int) - original).sum() > 0  # boxes drawn


@pytest.mark.slow
def test_main_job_draws_predictions_from_the_runners_checkpoint(e2e):
    """The main job's last step, in a fresh interpreter as the job runs it:
    the runner's checkpoint (which holds mmengine objects) must load on
    torch >= 2.6, where torch.load refuses them by default."""
    e2e.runs['main_job'].result()
    drawn = sorted((e2e.dirs['main_job'] / 'drawn').glob('*_gt_vs_pred.png'))
    assert len(drawn) == 2
    from PIL import Image
    picture = np.asarray(Image.open(drawn[0]).convert('RGB'))
    # ground truth | prediction side by side, each enlarged 3x from 64x64
    assert picture.shape == (192, 384, 3)


# -- downstream use of the installed package ---------------------------------
@pytest.mark.slow
def test_wheel_carries_the_detection_configs(e2e, built_dists):
    e2e.runs['install'].result()
    site = e2e.dirs['site']
    with zipfile.ZipFile(built_dists.wheel) as zf:
        names = set(zf.namelist())
    for path in TOP_CONFIGS + [TINY_RETINANET, TINY_MASK_RCNN] + glob.glob(
            osp.join(CONFIG_DIR, '_base_', '**', '*.py'), recursive=True):
        name = 'mmtranscnn/.mim/configs/' + rel(path)
        assert name in names, name
        assert (site / name).is_file()
    for tool in ('tools/train.py', 'tools/test.py',
                 'tools/data/make_shapes_coco.py'):
        assert f'mmtranscnn/.mim/{tool}' in names, tool


@pytest.mark.slow
def test_downstream_config_trains_with_the_installed_package(e2e):
    """A project outside the repo inherits retinanet_transcnn_base.py."""
    site = str(e2e.dirs['site'])
    # The base resolves inside the installed copy, not the repository.
    module_file, base = e2e.runs['where'].result().split()[-2:]
    assert module_file.startswith(site) and base.startswith(site)
    e2e.runs['downstream'].result()
    project, config = e2e.dirs['project'], e2e.configs['downstream']
    assert (project / 'work' / 'iter_2.pth').is_file()
    scalars = [s for s in read_scalars(project / 'work') if 'loss' in s]
    assert len(scalars) == 2 and all(math.isfinite(s['loss'])
                                     for s in scalars)
    # mmengine dumps the merged config into the work directory.
    cfg = Config.fromfile(str(project / 'work' / osp.basename(config)))
    assert tuple(cfg.model.backbone.grid_sizes) == (4, 2, 0, 0)
    assert cfg.model.backbone.arch == 'transcnn-v1-small'


@pytest.mark.slow
def test_mim_train_finds_our_config(e2e):
    """`mim train mmtranscnn retinanet_transcnn_base.py` resolves the file.

    The run is stopped right after our train.py has read the config, by an
    arch name the backbone refuses.
    """
    pytest.importorskip('mim')
    site = str(e2e.dirs['site'])
    out = e2e.runs['mim'].result().stdout
    found = osp.join(site, 'mmtranscnn', '.mim', 'configs',
                     'retinanet_transcnn_base.py')
    assert f'will use {found} instead' in out, out[-3000:]
    train = osp.join(site, 'mmtranscnn', '.mim', 'tools', 'train.py')
    assert f'{train} {found}' in out
    assert "got 'stop-after-config'" in out, out[-3000:]
