"""Semantic segmentation with MMSegmentation: configs, tiny data, tools, demo.

- Every config under configs/segmentation/ and configs/paper_arch/ (and the
  tiny one) builds in mmseg, wires the backbone's four maps into its
  neck/heads, runs, and states the protocol its header promises.
- tools/data/make_tiny_ade.py writes a deterministic ADE-layout dataset
  that mmseg's ADE20KDataset reads.
- End to end (slow): a config inheriting the tiny config starts from an
  "ImageNet" checkpoint, trains through tools/train.py, is evaluated through
  tools/test.py (mIoU) and segments an image through demo/seg_demo.py.
"""
import functools
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from mmtranscnn.models import TransCNN
from mmtranscnn.engine import setup_codebase
from side_by_side import side_by_side
from tool_modules import load_tool

TESTS_DIR = osp.dirname(osp.abspath(__file__))
REPO_DIR = osp.dirname(TESTS_DIR)
# The headline configs (the authors' released backbones) and those of
# Table 1's networks (paper_arch/, our own ImageNet pretraining).
SEG_CONFIGS = sorted(
    glob.glob(osp.join(REPO_DIR, 'configs', 'segmentation', '*.py')) +
    glob.glob(osp.join(REPO_DIR, 'configs', 'paper_arch', 'fpn_*.py')) +
    glob.glob(osp.join(REPO_DIR, 'configs', 'paper_arch', 'upernet_*.py')))
# Released network of each headline size (Table 1's Base layout was
# released as TransCNN-Small).
RELEASED_ARCH = {'base': 'transcnn-v1-small', 'small': 'transcnn-v1-tiny'}
TINY_CONFIG = osp.join(REPO_DIR, 'configs', 'tiny',
                       'fpn_transcnn-small_1xb2-40it_tiny-ade-128x128.py')
TRAIN = osp.join(REPO_DIR, 'tools', 'train.py')
TEST = osp.join(REPO_DIR, 'tools', 'test.py')
DEMO = osp.join(REPO_DIR, 'demo', 'seg_demo.py')
RUN_TIMEOUT = 600  # seconds per subprocess; a shared 2-core CPU is slow


make_tiny_ade = load_tool('tools/data/make_tiny_ade.py', 'make_tiny_ade')


def name_of(path):
    return osp.splitext(osp.basename(path))[0]


def load_mmseg_config(path):
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'mmseg'
    setup_codebase(cfg)
    return cfg


# -- configs ------------------------------------------------------------------
def test_there_are_fpn_and_upernet_configs_for_small_and_base():
    names = {name_of(p) for p in SEG_CONFIGS}
    for head in ('fpn', 'upernet'):
        for arch in ('small', 'base'):
            assert any(n.startswith(f'{head}_transcnn-{arch}_') for n in
                       names), (head, arch, names)


@pytest.mark.parametrize(
    'path', SEG_CONFIGS + [TINY_CONFIG], ids=[name_of(p) for p in
                                               SEG_CONFIGS + [TINY_CONFIG]])
def test_config_builds_and_segments(path):
    from mmengine.optim import build_optim_wrapper
    from mmseg.registry import MODELS

    cfg = load_mmseg_config(path)
    assert 'mmtranscnn' in cfg.custom_imports['imports']
    bb = cfg.model.backbone
    tiny = path == TINY_CONFIG
    paper = tiny or 'paper' in name_of(path)
    size = 'base' if '-base_' in name_of(path) else 'small'
    assert bb.type == 'TransCNN'
    assert bb.arch == (size if paper else RELEASED_ARCH[size])
    if tiny:
        # 128x128 crops: stage maps 32/16/8/4 -> 4x4 level-1 token maps.
        assert cfg.crop_size == (128, 128)
        assert tuple(bb.grid_sizes) == (8, 4, 2, 0)
        assert bb.init_cfg is None  # runs without an ImageNet checkpoint
    else:
        # 512x512 crops: stage maps 128/64/32/16 -> 8x8 level-1 token maps.
        assert cfg.crop_size == (512, 512)
        if paper:
            assert tuple(bb.grid_sizes) == (16, 8, 4, 0)
            # Our ImageNet run's checkpoint, as tools/train.py names it.
            in1k = f'work_dirs/transcnn-{bb.arch}_8xb128_in1k/epoch_300.pth'
            assert bb.init_cfg == dict(
                type='Pretrained', checkpoint=in1k, prefix='backbone.')
        else:
            # Released windows, level-1 pooling 16/8/4; the authors' file
            # by URL (tests/test_headline_configs.py loads it).
            assert tuple(bb.grid_sizes) == (8, 8, 8, 0)
            assert tuple(bb.pool_ratios) == (16, 8, 4, 0)
            assert bb.init_cfg.checkpoint.startswith('https://')
        assert bb.norm_cfg.type == 'SyncBN' and bb.norm_eval is False
    assert cfg.model.pretrained is None
    assert cfg.model.test_cfg.mode == 'whole'

    model = MODELS.build(cfg.model)  # init_cfg is not applied: no file read
    assert isinstance(model.backbone, TransCNN)
    channels = model.backbone.num_features
    if 'fpn' in name_of(path):
        assert list(cfg.model.neck.in_channels) == channels
    else:
        assert list(cfg.model.decode_head.in_channels) == channels
        assert cfg.model.auxiliary_head.in_channels == channels[2]

    # A size that is not a multiple of the grids or of 32, as whole-image
    # testing gives: the logits come out at stride 4 for all 150 classes.
    model.eval()
    x = torch.rand(1, 3, 100, 150)
    with torch.no_grad():
        feats = model.backbone(x)
        logits = model(x, mode='tensor')
    assert isinstance(feats, tuple) and len(feats) == 4
    assert [f.shape[1] for f in feats] == channels
    assert [f.shape[2:] for f in feats] == [(25, 38), (13, 19), (7, 10),
                                            (4, 5)]
    assert logits.shape == (1, 150, 25, 38)
    build_optim_wrapper(model, cfg.optim_wrapper)


def test_fpn_follows_pvt_protocol():
    cfg = Config.fromfile(
        osp.join(REPO_DIR, 'configs', 'segmentation',
                 'fpn_transcnn-small_8xb4-40k_ade20k-512x512.py'))
    optim = cfg.optim_wrapper.optimizer
    assert (optim.type, optim.lr, optim.weight_decay) == ('AdamW', 2e-4, 1e-4)
    (poly, ) = cfg.param_scheduler
    assert (poly.type, poly.power, poly.eta_min, poly.end) == ('PolyLR', 0.9,
                                                               0., 40000)
    assert cfg.train_cfg.max_iters == 40000
    assert cfg.train_dataloader.batch_size * 8 == 32
    assert cfg.auto_scale_lr.base_batch_size == 32
    steps = [t.type for t in cfg.test_dataloader.dataset.pipeline]
    assert 'ResizeToMultiple' in steps


def test_upernet_follows_mmseg_swin_protocol():
    from mmseg.registry import MODELS
    from mmengine.optim import build_optim_wrapper

    cfg = load_mmseg_config(
        osp.join(REPO_DIR, 'configs', 'segmentation',
                 'upernet_transcnn-small_8xb2-160k_ade20k-512x512.py'))
    optim = cfg.optim_wrapper.optimizer
    assert (optim.type, optim.lr, optim.weight_decay) == ('AdamW', 6e-5, 0.01)
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.end) == ('LinearLR', 1500)
    assert (poly.type, poly.begin, poly.end) == ('PolyLR', 1500, 160000)
    assert cfg.train_cfg.max_iters == 160000
    assert cfg.train_dataloader.batch_size * 8 == 16
    # No weight decay on the backbone's BN layers, as Swin's norms.
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    bn_weight = next(
        m.weight for m in model.backbone.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    decay = {id(p): g['weight_decay'] for g in
             wrapper.optimizer.param_groups for p in g['params']}
    assert decay[id(bn_weight)] == 0.
    assert decay[id(model.decode_head.conv_seg.weight)] == 0.01


def test_imagenet_checkpoint_loads_into_512_grids(tmp_path):
    """The classifier's file (ImageNet grids 8/4/2) fills the 16/8/4 model."""
    from mmseg.registry import MODELS

    classifier = TransCNN(arch='small', grid_sizes=(8, 4, 2, 0),
                          out_indices=(3, ))
    # Distinct values, so a tensor left at its initial value shows.
    state = {f'backbone.{k}': v + 1. if v.is_floating_point() else v
             for k, v in classifier.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(1000, 512)
    path = str(tmp_path / 'in1k.pth')
    torch.save({'meta': {}, 'state_dict': state}, path)

    cfg = load_mmseg_config(
        osp.join(REPO_DIR, 'configs', 'paper_arch',
                 'fpn_transcnn-paper-small_8xb4-40k_ade20k-512x512.py'))
    cfg.model.backbone.init_cfg.checkpoint = path
    model = MODELS.build(cfg.model)
    model.backbone.init_weights()
    loaded = model.backbone.state_dict()
    for key, value in state.items():
        if key.startswith('backbone.'):
            assert torch.equal(loaded[key[len('backbone.'):]], value), key


def test_upernet_trains_decode_and_auxiliary_heads():
    """One loss/backward step: the aux head reads the stride-16 map."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    cfg = load_mmseg_config(
        osp.join(REPO_DIR, 'configs', 'segmentation',
                 'upernet_transcnn-small_8xb2-160k_ade20k-512x512.py'))
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.train()
    samples = []
    for _ in range(2):
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, 150, (1, 64, 64)))
        sample.set_metainfo(dict(img_shape=(64, 64), pad_shape=(64, 64)))
        samples.append(sample)
    losses = model.loss(torch.rand(2, 3, 64, 64), samples)
    assert set(losses) >= {'decode.loss_ce', 'aux.loss_ce'}
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert all(p.grad is not None for p in model.backbone.parameters()
               if p.requires_grad)


# -- tiny dataset -------------------------------------------------------------
def files_of(root):
    return sorted(
        osp.relpath(p, root)
        for p in glob.glob(osp.join(root, '**', '*.*'), recursive=True))


def test_tiny_ade_layout_and_labels(tmp_path):
    root = str(tmp_path / 'ade')
    make_tiny_ade.make_tiny_ade(root, num_train=6, num_val=2, size=64,
                                seed=0)
    assert files_of(root) == sorted(
        [f'annotations/training/ADE_train_{i:08d}.png' for i in range(1, 7)] +
        [f'images/training/ADE_train_{i:08d}.jpg' for i in range(1, 7)] +
        [f'annotations/validation/ADE_val_{i:08d}.png' for i in (1, 2)] +
        [f'images/validation/ADE_val_{i:08d}.jpg' for i in (1, 2)])
    seen, widths = set(), set()
    for ann in glob.glob(osp.join(root, 'annotations', '*', '*.png')):
        img = ann.replace('annotations', 'images').replace('.png', '.jpg')
        label = Image.open(ann)
        assert label.mode == 'L'
        assert label.size == Image.open(img).size
        values = set(np.unique(np.asarray(label)).tolist())
        assert values <= set(make_tiny_ade.CLASSES.values())
        # Sky and grass fill every background; objects stand on them.
        assert {3, 10} <= values and len(values) >= 3
        seen |= values
        widths.add(label.size[0])
    assert len(seen) >= 5
    assert len(widths) > 1  # several aspect ratios


def test_tiny_ade_is_deterministic_by_seed(tmp_path):
    def contents(root):
        return {f: open(osp.join(root, f), 'rb').read()
                for f in files_of(root)}

    kwargs = dict(num_train=3, num_val=1, size=48)
    make_tiny_ade.make_tiny_ade(str(tmp_path / 'a'), seed=3, **kwargs)
    make_tiny_ade.make_tiny_ade(str(tmp_path / 'b'), seed=3, **kwargs)
    make_tiny_ade.make_tiny_ade(str(tmp_path / 'c'), seed=4, **kwargs)
    # More images do not change the first ones.
    make_tiny_ade.make_tiny_ade(
        str(tmp_path / 'd'), seed=3, num_train=5, num_val=1, size=48)
    a, b, c = (contents(str(tmp_path / n)) for n in 'abc')
    assert a == b
    assert a != c
    d = contents(str(tmp_path / 'd'))
    assert all(d[f] == a[f] for f in a)


def test_tiny_ade_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='size must be an int >= 32'):
        make_tiny_ade.make_tiny_ade(str(tmp_path), size=16)
    with pytest.raises(ValueError, match='num_train'):
        make_tiny_ade.make_tiny_ade(str(tmp_path), num_train=0)


def test_ade20k_dataset_reads_tiny_ade(tmp_path):
    from mmseg.registry import DATASETS

    root = str(tmp_path / 'ade')
    make_tiny_ade.make_tiny_ade(root, num_train=2, num_val=1, size=64)
    cfg = load_mmseg_config(TINY_CONFIG)
    dataset_cfg = cfg.train_dataloader.dataset
    dataset_cfg.data_root = root
    dataset = DATASETS.build(dataset_cfg)
    assert len(dataset) == 2
    sample = dataset[0]['data_samples']
    gt = sample.gt_sem_seg.data
    # Random resize and crop to at most the tiny crop (the data
    # preprocessor pads to 128x128 later).
    assert max(gt.shape[-2:]) <= 128
    # reduce_zero_label: ADE value k -> class k - 1, 'other' (0) -> 255.
    assert set(gt.unique().tolist()) <= {1, 2, 4, 9, 20, 255}


# -- end to end ---------------------------------------------------------------
def tool_env():
    env = dict(os.environ)
    # One thread: these runs are too small to gain from more, and on a
    # loaded machine OpenMP threads waiting for a core made a training
    # iteration ~8x slower with 2 threads than with 1 (measured: 0.56 s vs
    # 2.3-5.4 s per iteration of the tiny config, load average 5 on 2 cores).
    env['OMP_NUM_THREADS'] = '1'
    env['PYTHONWARNINGS'] = 'ignore'
    return env


def run(cmd, cwd):
    proc = subprocess.run([sys.executable] + cmd, cwd=cwd, env=tool_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def read_scalars(work_dir):
    (path, ) = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(path) as f:
        return [json.loads(line) for line in f]


E2E_ITERS = 10


@pytest.fixture(scope='module')
def tiny_run(module_tmp):
    """Train a config inheriting the tiny one, as a downstream user would."""
    root = module_tmp('seg')
    data = str(root / 'tiny_ade')
    make_tiny_ade.make_tiny_ade(data, num_train=8, num_val=4, size=128)

    # An "ImageNet" checkpoint as mmpretrain writes it: the backbone under
    # 'backbone.', plus a classifier the loader must leave out.
    backbone = TransCNN(arch='small')
    backbone.init_weights()
    state = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(1000, 512)
    pretrained = str(root / 'in1k.pth')
    torch.save({'meta': {}, 'state_dict': state}, pretrained)

    config = str(root / 'my_tiny_seg.py')
    with open(config, 'w') as f:
        f.write(f"""_base_ = [{TINY_CONFIG!r}]
model = dict(backbone=dict(init_cfg=dict(
    _delete_=True, type='Pretrained', checkpoint={pretrained!r},
    prefix='backbone.')))
max_iters = {E2E_ITERS}
# A few iterations must show learning: a larger step than the 40k-iteration
# recipe's, and the raw loss of every iteration in the log.
optim_wrapper = dict(optimizer=dict(lr=1e-3))
log_processor = dict(window_size=1)
param_scheduler = [dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0,
                        end=max_iters, by_epoch=False)]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
# The tools after training need the weights only.
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval=max_iters,
                                     save_optimizer=False))
""")
    work_dir = str(root / 'work')
    out = run([
        TRAIN, config, '--work-dir', work_dir, '--cfg-options',
        f'train_dataloader.dataset.data_root={data}',
        f'val_dataloader.dataset.data_root={data}'
    ], cwd=str(root))
    return dict(root=str(root), data=data, config=config, work_dir=work_dir,
                pretrained=pretrained, train_log=out)


@pytest.mark.slow
def test_train_tool_trains_from_pretrained_backbone(tiny_run):
    log = tiny_run['train_log']
    n = len(TransCNN(arch='small').state_dict())
    assert f'loaded {n}/{n} backbone tensors from {tiny_run["pretrained"]}' \
        in log
    assert osp.isfile(osp.join(tiny_run['work_dir'], f'iter_{E2E_ITERS}.pth'))
    losses = [r['loss'] for r in read_scalars(tiny_run['work_dir'])
              if 'loss' in r]
    assert len(losses) == E2E_ITERS and np.isfinite(losses).all()
    # ln(150) ~ 5.0 at the start; a few AdamW steps must bring it down.
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5, losses


@pytest.fixture(scope='module')
def after_training(tiny_run, module_tmp):
    """tools/test.py (mIoU, --out maps) and demo/seg_demo.py on the trained
    checkpoint, side by side. Name -> (directory, future of the output)."""
    checkpoint = osp.join(tiny_run['work_dir'], f'iter_{E2E_ITERS}.pth')
    dirs = {name: module_tmp(name) for name in ('test', 'demo')}
    image = osp.join(tiny_run['data'], 'images', 'validation',
                     'ADE_val_00000001.jpg')
    commands = {
        'test': [
            TEST, tiny_run['config'], checkpoint,
            '--work-dir', str(dirs['test'] / 'eval'),
            '--out', str(dirs['test'] / 'preds'), '--cfg-options',
            f'test_dataloader.dataset.data_root={tiny_run["data"]}'],
        'demo': [
            DEMO, tiny_run['config'], checkpoint, image,
            '--out-file', str(dirs['demo'] / 'vis' / 'mask.png'),
            '--device', 'cpu'],
    }
    results = side_by_side({
        name: functools.partial(run, cmd, cwd=str(dirs[name]))
        for name, cmd in commands.items()})
    return {name: (dirs[name], results[name]) for name in commands}


@pytest.mark.slow
def test_test_tool_reports_miou_and_writes_maps(tiny_run, after_training):
    data = tiny_run['data']
    test_dir, out = after_training['test']
    assert 'mIoU' in out.result()
    (path, ) = glob.glob(str(test_dir / 'eval' / '*' / '*.json'))
    with open(path) as f:
        metrics = json.load(f)
    assert 0. <= metrics['mIoU'] <= 100. and metrics['aAcc'] > 0.
    # Same weights, same images: the validation at the end of training
    # gave the same numbers.
    (val, ) = [r for r in read_scalars(tiny_run['work_dir']) if 'mIoU' in r]
    assert metrics['mIoU'] == pytest.approx(val['mIoU'])
    # --out: one prediction map per validation image, at the image's size.
    preds = str(test_dir / 'preds')
    names = sorted(os.listdir(preds))
    assert names == [f'ADE_val_{i:08d}.png' for i in range(1, 5)]
    for name in names:
        image = osp.join(data, 'images', 'validation',
                         name.replace('.png', '.jpg'))
        assert Image.open(osp.join(preds, name)).size == \
            Image.open(image).size


@pytest.mark.slow
def test_demo_writes_coloured_mask(tiny_run, after_training):
    from mmseg.datasets import ADE20KDataset

    image = osp.join(tiny_run['data'], 'images', 'validation',
                     'ADE_val_00000001.jpg')
    demo_dir, out = after_training['demo']
    out_file = str(demo_dir / 'vis' / 'mask.png')
    assert f'wrote {out_file}' in out.result()
    mask = Image.open(out_file)
    assert mask.mode == 'RGB' and mask.size == Image.open(image).size
    # Opacity 1: every pixel is the ADE20K palette colour of its class.
    palette = {tuple(c) for c in ADE20KDataset.METAINFO['palette']}
    colours = {tuple(c) for c in np.unique(
        np.asarray(mask).reshape(-1, 3), axis=0)}
    assert colours and colours <= palette


def test_demo_rejects_bad_arguments(tmp_path):
    proc = subprocess.run([
        sys.executable, DEMO, TINY_CONFIG, str(tmp_path / 'missing.pth'),
        str(tmp_path / 'x.jpg'), '--out-file', str(tmp_path / 'o.png')
    ], env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 2
    assert 'checkpoint file not found' in proc.stdout
