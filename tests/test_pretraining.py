"""ImageNet pretraining with mmpretrain and the hand-off to detection.

- every config under configs/imagenet/ (and the tiny one) builds with
  mmpretrain's own classifier, neck and head, its pipelines run, and its
  optimizer leaves norms and biases undecayed;
- the recipe says what §4.1/§4.2 say;
- a classifier checkpoint initialises a detection backbone through
  ``init_cfg=dict(type='Pretrained', prefix='backbone.')`` with every key
  loaded, and a wrong or partial checkpoint is refused, naming the keys;
- tools/model_converters/publish_model.py strips and hashes checkpoints;
- 224-trained weights load strictly into a model built for 384;
- end to end (slow): tools/train.py and tools/test.py on tiny synthetic data,
  then a RetinaNet from configs/paper_arch/retinanet_transcnn-paper-small_*
  starts from that
  checkpoint.
"""
import copy
import functools
import glob
import hashlib
import json
import os
import os.path as osp
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import CheckpointLoader
from mmengine.utils import import_modules_from_strings

import mmtranscnn  # noqa: F401  (registers TransCNN)
import mmtranscnn.safe_checkpoints  # noqa: F401  (mmengine files, torch 2.6+)
from mmtranscnn.models import TransCNN, load_backbone_checkpoint

from tool_modules import load_tool

REPO_DIR = osp.dirname(osp.dirname(osp.abspath(__file__)))
IMAGENET_DIR = osp.join(REPO_DIR, 'configs', 'imagenet')
SMALL = osp.join(IMAGENET_DIR, 'transcnn-small_8xb128_in1k.py')
BASE = osp.join(IMAGENET_DIR, 'transcnn-base_8xb128_in1k.py')
ABLATION = osp.join(IMAGENET_DIR, 'transcnn-base_8xb64-100e_in1k.py')
FINETUNE_384 = osp.join(IMAGENET_DIR, 'transcnn-base_8xb64_in1k-384px.py')
TINY = osp.join(REPO_DIR, 'configs', 'tiny', 'transcnn-small_tiny-imagenet.py')
RETINANET_SMALL = osp.join(REPO_DIR, 'configs', 'paper_arch',
                           'retinanet_transcnn-paper-small_fpn_1x_coco.py')
TRAIN = osp.join(REPO_DIR, 'tools', 'train.py')
TEST = osp.join(REPO_DIR, 'tools', 'test.py')
RUN_TIMEOUT = 240  # seconds per tool run (a loaded 2-core CI machine)

# config -> (arch, grid sizes, num_classes, crop size)
CONFIGS = {
    SMALL: ('small', (8, 4, 2, 0), 1000, 224),
    BASE: ('base', (8, 4, 2, 0), 1000, 224),
    ABLATION: ('base', (8, 4, 2, 0), 1000, 224),
    FINETUNE_384: ('base', (12, 6, 3, 0), 1000, 384),
    TINY: ('small', (8, 4, 2, 0), 6, 64),
}


make_tiny = load_tool('tools/data/make_tiny_imagenet.py')
publish_model = load_tool('tools/model_converters/publish_model.py')


@functools.lru_cache(maxsize=None)
def _load_config(path):
    return Config.fromfile(path)


def load_config(path):
    """A fresh copy of a parsed config (parsing is cached)."""
    return copy.deepcopy(_load_config(path))


def build_classifier(cfg):
    """Build ``cfg.model`` as the Runner does, in a fresh mmpretrain scope."""
    import_modules_from_strings(**cfg.custom_imports)
    from mmpretrain.registry import MODELS
    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') is not None:
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        return MODELS.build(model_cfg)


def randomise_bn_stats(model, seed=0):
    """Non-default BN statistics, so 'equal after loading' means loaded."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(
                torch.randn(module.running_mean.shape, generator=gen))
            module.running_var.copy_(
                torch.rand(module.running_var.shape, generator=gen) + 0.5)
    return model


def save_checkpoint(model, path):
    """An mmengine-style checkpoint (meta + state_dict) of ``model``."""
    state_dict = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({'meta': {'epoch': 300}, 'state_dict': state_dict}, path)
    return state_dict


def assert_loaded(module, state_dict, prefix):
    """Every tensor of ``module`` equals ``state_dict[prefix + name]`` and
    every ``prefix`` tensor of the file has a place in ``module``."""
    own = module.state_dict()
    expected = {k[len(prefix):] for k in state_dict if k.startswith(prefix)}
    assert set(own) == expected
    for key, value in own.items():
        assert torch.equal(value, state_dict[prefix + key]), key


@pytest.fixture(scope='module')
def tiny_data(module_tmp):
    root = module_tmp('tiny_imagenet')
    counts = make_tiny.make_tiny_imagenet(
        str(root), train_per_class=4, val_per_class=2)
    return str(root), counts


@pytest.fixture(scope='module')
def small_checkpoint(module_tmp):
    """A TransCNN-Small classifier checkpoint built from the real config."""
    torch.manual_seed(0)
    model = randomise_bn_stats(build_classifier(load_config(SMALL)))
    path = str(module_tmp('ckpt') / 'small_in1k.pth')
    return path, save_checkpoint(model, path)


# ------------------------------------------------------------ configs ----
def test_every_imagenet_config_is_tested():
    on_disk = set(glob.glob(osp.join(IMAGENET_DIR, '*.py')))
    assert on_disk and on_disk <= set(CONFIGS), sorted(on_disk - set(CONFIGS))


def _tiny_dataset(cfg, split_cfg, data_root):
    """The config's data set on the tiny data (pipeline untouched)."""
    from mmpretrain.registry import DATASETS
    dataset_cfg = copy.deepcopy(cfg[split_cfg].dataset)
    dataset_cfg.update(
        data_root=data_root, classes=tuple(make_tiny.class_names(6)))
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        return DATASETS.build(dataset_cfg)


@pytest.mark.parametrize(
    'path', list(CONFIGS), ids=[osp.basename(p) for p in CONFIGS])
def test_config_builds(path, tiny_data):
    from mmengine.optim import build_optim_wrapper
    from mmpretrain.models import (GlobalAveragePooling, ImageClassifier,
                                   LinearClsHead)
    arch, grid_sizes, num_classes, crop = CONFIGS[path]
    cfg = load_config(path)
    assert cfg.default_scope == 'mmpretrain'
    assert cfg.custom_imports.imports == ['mmtranscnn']
    if path == FINETUNE_384:  # its checkpoint does not exist here
        cfg.model.backbone.init_cfg = None
        cfg.model.head.init_cfg = None
    model = build_classifier(cfg)

    assert type(model) is ImageClassifier
    assert type(model.backbone) is TransCNN
    assert model.backbone.arch_settings == dict(
        TransCNN.arch_zoo[arch], stem_channels=16)
    assert model.backbone.grid_sizes == tuple(
        (g, ) if g else () for g in grid_sizes)
    assert type(model.neck) is GlobalAveragePooling
    assert type(model.head) is LinearClsHead
    assert (model.head.in_channels, model.head.num_classes) == (512,
                                                                num_classes)
    # Mixup/CutMix produce labels over the head's classes.
    augments = model.data_preprocessor.batch_augments
    assert [type(a).__name__ for a in augments.augments] == ['Mixup', 'CutMix']
    assert model.data_preprocessor.num_classes == num_classes

    model.eval()
    with torch.no_grad():
        scores = model(torch.randn(2, 3, 64, 64), mode='tensor')
    assert scores.shape == (2, num_classes)

    # The pipelines run and give the crop size of the config.
    data_root, _ = tiny_data
    for split in ('train_dataloader', 'val_dataloader'):
        sample = _tiny_dataset(cfg, split, data_root)[0]
        assert tuple(sample['inputs'].shape) == (3, crop, crop), split

    # No weight decay on 1-d tensors (norms, biases); decay elsewhere.
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = cfg.optim_wrapper.optimizer.weight_decay
    groups = optim_wrapper.optimizer.param_groups
    assert {type(optim_wrapper.optimizer).__name__} == {'AdamW'}
    for group in groups:
        for param in group['params']:
            assert group['weight_decay'] == (0 if param.ndim == 1 else decay)
        assert group['lr'] == cfg.optim_wrapper.optimizer.lr
    assert sum(len(g['params']) for g in groups) == len(
        list(model.parameters()))


def test_recipe_is_the_papers():
    small = load_config(SMALL)
    # §4.1: AdamW (0.9, 0.999), wd 0.05, 128 x 8 images, lr 8e-4 for them.
    optimizer = small.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.betas,
            optimizer.weight_decay) == ('AdamW', 8e-4, (0.9, 0.999), 0.05)
    assert small.train_dataloader.batch_size == 128
    assert small.auto_scale_lr.base_batch_size == 8 * 128
    assert small.train_cfg.max_epochs == 300
    # Warm-up (5 epochs, DeiT), then a cosine that ends with training.
    warmup, cosine = small.param_scheduler
    assert (warmup.type, warmup.end) == ('LinearLR', 5)
    assert (cosine.type, cosine.begin) == ('CosineAnnealingLR', 5)
    assert 'end' not in cosine  # the Runner sets it to max_epochs
    # Label smoothing 0.1, Mixup/CutMix, drop path 0.1, grid sizes 8/4/2.
    head = small.model.head
    assert (head.loss.type, head.loss.label_smooth_val) == ('LabelSmoothLoss',
                                                            0.1)
    assert small.model.backbone.drop_path_rate == 0.1
    assert tuple(small.model.backbone.grid_sizes) == (8, 4, 2, 0)
    # Evaluation: resize 256 (224/256 ratio), center crop 224, top-1/top-5.
    test_steps = {s.type: s for s in small.test_dataloader.dataset.pipeline}
    assert test_steps['ResizeEdge'].scale == 256
    assert test_steps['CenterCrop'].crop_size == 224
    assert tuple(small.val_evaluator.topk) == (1, 5)

    # Base differs from Small in the architecture only.
    base = load_config(BASE).to_dict()
    small_dict = small.to_dict()
    small_dict['model']['backbone']['arch'] = 'base'
    assert base == small_dict

    # §4.2 ablations: 100 epochs, half the batch and half the lr.
    ablation = load_config(ABLATION)
    assert ablation.model.backbone.arch == 'base'
    assert ablation.train_cfg.max_epochs == 100
    assert ablation.train_dataloader.batch_size == 64
    assert ablation.optim_wrapper.optimizer.lr == 4e-4
    assert ablation.auto_scale_lr.base_batch_size == 8 * 64


# ------------------------------------------------- hand-off to detection ----
def test_classifier_checkpoint_initialises_detection_backbone(
        small_checkpoint):
    path, state_dict = small_checkpoint
    # A detection backbone: other grid sizes, other outputs, frozen BN.
    backbone = TransCNN(
        arch='small',
        grid_sizes=(16, 8, 4, 0),
        out_indices=(1, 2, 3),
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    backbone.init_weights()
    assert_loaded(backbone, state_dict, 'backbone.')

    report = load_backbone_checkpoint(
        TransCNN(arch='small'), path, prefix='backbone.')
    assert len(report.loaded) == len(backbone.state_dict())
    assert report.missing == report.unexpected == report.mismatched == []


def test_wrong_arch_checkpoint_is_refused(small_checkpoint):
    path, _ = small_checkpoint
    backbone = TransCNN(
        arch='base',
        init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    with pytest.raises(RuntimeError, match='missing in the file: .*stages'):
        backbone.init_weights()


def test_partial_checkpoint_is_refused_and_reported(small_checkpoint,
                                                    tmp_path):
    _, state_dict = small_checkpoint
    partial = dict(state_dict)
    dropped = 'backbone.stages.3.1.irb.project.conv.weight'
    if dropped not in partial:  # robust to renamed modules
        dropped = sorted(k for k in partial if k.startswith('backbone.'))[-1]
    del partial[dropped]
    reshaped = sorted(k for k in partial if k.endswith('running_mean') and
                      k.startswith('backbone.'))[0]
    partial[reshaped] = torch.zeros(3)
    path = str(tmp_path / 'partial.pth')
    torch.save({'state_dict': partial}, path)

    key = dropped[len('backbone.'):]
    with pytest.raises(RuntimeError) as info:
        TransCNN(arch='small', init_cfg=dict(
            type='Pretrained', checkpoint=path,
            prefix='backbone.')).init_weights()
    message = str(info.value)
    assert f'missing in the file: {key}' in message
    assert 'shape differs: ' + reshaped[len('backbone.'):] in message

    # strict=False on purpose: the rest loads, the report names both keys.
    backbone = TransCNN(arch='small')
    report = load_backbone_checkpoint(
        backbone, path, prefix='backbone.', strict=False)
    assert report.missing == [key]
    assert report.mismatched == [reshaped[len('backbone.'):]]
    own = backbone.state_dict()
    for name in report.loaded:
        assert torch.equal(own[name], state_dict['backbone.' + name])


# --------------------------------------------------------- publishing ----
def _training_checkpoint(state_dict, path):
    """What a Runner writes, with the entries publishing must drop."""
    full = dict(state_dict)
    full['data_preprocessor.mean'] = torch.zeros(3)
    torch.save(
        {
            'meta': {'epoch': 300, 'dataset_meta': {'classes': ('a', 'b')}},
            'state_dict': full,
            'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-5}]},
            'param_schedulers': [{'last_epoch': 300}],
            'message_hub': {'log_scalars': {}},
        }, path)


def test_publish_model_strips_and_hashes(small_checkpoint, tmp_path):
    path, state_dict = small_checkpoint
    train_ckpt = str(tmp_path / 'epoch_300.pth')
    _training_checkpoint(state_dict, train_ckpt)

    final = publish_model.publish(train_ckpt, str(tmp_path / 'small.pth'))
    match = re.fullmatch(r'small-([0-9a-f]{8})\.pth', osp.basename(final))
    assert match
    with open(final, 'rb') as f:
        assert hashlib.sha256(f.read()).hexdigest()[:8] == match.group(1)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(final).st_mode & 0o777 == 0o666 & ~umask  # not 0600
    published = torch.load(final, weights_only=True)
    assert set(published) == {'meta', 'state_dict'}
    assert published['meta']['dataset_meta'] == {'classes': ('a', 'b')}
    assert published['state_dict'].keys() == state_dict.keys()
    # Only the final file is left (the temporary one was renamed).
    assert sorted(os.listdir(tmp_path)) == sorted(
        ['epoch_300.pth', osp.basename(final)])

    # Backbone only: keys keep their prefix, so the detector's init_cfg is
    # the same for either file.
    publish_model.main([train_ckpt, str(tmp_path / 'bb.pth'),
                        '--backbone-only'])
    (bb_file, ) = glob.glob(str(tmp_path / 'bb-*.pth'))
    bb = torch.load(bb_file, weights_only=True)['state_dict']
    assert bb.keys() == {k for k in state_dict if k.startswith('backbone.')}
    backbone = TransCNN(arch='small', grid_sizes=(16, 8, 4, 0), init_cfg=dict(
        type='Pretrained', checkpoint=bb_file, prefix='backbone.'))
    backbone.init_weights()
    assert_loaded(backbone, state_dict, 'backbone.')
    assert os.path.getsize(bb_file) < os.path.getsize(final)

    with pytest.raises(KeyError, match="no key starts with 'trunk.'"):
        publish_model.publish(train_ckpt, str(tmp_path / 'x.pth'),
                              backbone_only=True, prefix='trunk.')
    with pytest.raises(ValueError, match='must differ'):
        publish_model.publish(train_ckpt, train_ckpt)


# ---------------------------------------------- other resolutions (384) ----
def test_224_weights_load_strictly_at_384(small_checkpoint):
    _, state_dict = small_checkpoint
    cfg = load_config(SMALL)
    cfg.model.backbone.grid_sizes = (12, 6, 3, 0)
    model = build_classifier(cfg)
    # Grid sizes hold no weights: nothing missing, nothing left over.
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 384, 384), stage='neck')
        scores = model.head(feats)
    assert scores.shape == (1, 1000)
    assert torch.isfinite(scores).all()


def test_384_config_starts_from_224_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = randomise_bn_stats(build_classifier(load_config(BASE)))
    path = str(tmp_path / 'base_in1k.pth')
    state_dict = save_checkpoint(source, path)

    cfg = load_config(FINETUNE_384)
    cfg.model.backbone.init_cfg.checkpoint = path
    cfg.model.head.init_cfg.checkpoint = path
    model = build_classifier(cfg)
    model.init_weights()
    # Backbone (strict loader) and classifier both come from the file.
    assert_loaded(model.backbone, state_dict, 'backbone.')
    assert_loaded(model.head, state_dict, 'head.')


# -------------------------------------------------------------- tiny data ----
@pytest.mark.parametrize('layout', make_tiny.LAYOUTS)
def test_tiny_imagenet_layouts(layout, tmp_path):
    from mmpretrain.datasets import ImageNet
    root = str(tmp_path)
    counts = make_tiny.make_tiny_imagenet(
        root, num_classes=5, train_per_class=3, val_per_class=2, size=40,
        layout=layout)
    assert counts == {'train': 15, 'val': 10}
    names = make_tiny.class_names(5)
    assert osp.isdir(osp.join(root, 'train', names[0]))
    assert osp.isdir(osp.join(root, 'val', names[0])) == (layout == 'folders')
    assert osp.exists(osp.join(root, 'meta', 'val.txt')) == (
        layout == 'annfile')
    for split, count in counts.items():
        dataset = ImageNet(data_root=root, split=split, classes=names)
        assert len(dataset) == count
        for info in dataset:
            assert names[info['gt_label']] in osp.basename(info['img_path'])

    with pytest.raises(ValueError, match='num_classes must be an int in'):
        make_tiny.make_tiny_imagenet(root, num_classes=9)
    with pytest.raises(ValueError, match='layout must be one of'):
        make_tiny.make_tiny_imagenet(root, layout='coco')


# ------------------------------------------------------------ end to end ----
def _run_tool(args, cwd):
    env = dict(os.environ)
    for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR',
                'MASTER_PORT'):
        env.pop(key, None)
    env['PYTHONPATH'] = os.pathsep.join(
        [REPO_DIR] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, (
        f'{args[0]} exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}'
        f'\nSTDERR:\n{proc.stderr[-3000:]}')
    return proc


def _scalars(work_dir):
    (path, ) = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_pretrain_evaluate_then_detect(tmp_path):
    """tiny ImageNet -> tools/train.py -> tools/test.py -> RetinaNet init
    (from the training checkpoint and from its published backbone)."""
    # The tiny config reads data/tiny_imagenet relative to the working
    # directory, as in the README.
    make_tiny.make_tiny_imagenet(
        str(tmp_path / 'data' / 'tiny_imagenet'), train_per_class=4,
        val_per_class=2)
    work_dir = str(tmp_path / 'pretrain')
    # 24 images, batch 8: 3 iterations an epoch, 2 epochs, one evaluation.
    _run_tool([
        TRAIN, TINY, '--work-dir', work_dir, '--cfg-options',
        'train_dataloader.batch_size=8', 'train_cfg.max_epochs=2',
        'default_hooks.logger.interval=1'
    ], cwd=str(tmp_path))
    checkpoint = osp.join(work_dir, 'epoch_2.pth')
    assert osp.isfile(checkpoint)
    train_log = _scalars(work_dir)
    lrs = [entry['lr'] for entry in train_log if 'lr' in entry]
    # Warm-up during the first epoch, then the cosine, whose length follows
    # max_epochs (2 here, not the 300 of the recipe): by the last iteration
    # it is far down from its peak.
    assert len(lrs) == 6
    peak = lrs.index(max(lrs))
    assert 1 <= peak <= 3
    assert lrs[:peak + 1] == sorted(lrs[:peak + 1])
    assert lrs[peak:] == sorted(lrs[peak:], reverse=True)
    assert lrs[-1] < 0.3 * lrs[peak]
    assert any('accuracy/top1' in entry for entry in train_log)

    test_dir = str(tmp_path / 'test')
    # tools/test.py evaluates the checkpoint while this process starts a
    # detector from it (the evaluation is a process of its own).
    with ThreadPoolExecutor(max_workers=1) as pool:
        evaluation = pool.submit(
            _run_tool, [TEST, TINY, checkpoint, '--work-dir', test_dir,
                        '--out', str(tmp_path / 'preds.pkl')],
            cwd=str(tmp_path))

        # Detection starts from that checkpoint through the real config.
        from mmdet.registry import MODELS as DET_MODELS
        # A real Runner checkpoint (message hub, numpy scalars): mmengine's
        # loader reads it with weights_only=True after the opt-in above.
        state_dict = CheckpointLoader.load_checkpoint(
            checkpoint, map_location='cpu')['state_dict']
        det_cfg = load_config(RETINANET_SMALL)
        assert det_cfg.model.backbone.init_cfg.prefix == 'backbone.'
        det_cfg.model.backbone.init_cfg.checkpoint = checkpoint
        import_modules_from_strings(**det_cfg.custom_imports)
        with DefaultScope.overwrite_default_scope('mmdet'):
            detector = DET_MODELS.build(det_cfg.model)
        detector.init_weights()
        assert_loaded(detector.backbone, state_dict, 'backbone.')

        # The same through a published backbone-only file.
        published = publish_model.publish(
            checkpoint, str(tmp_path / 'transcnn-small_tiny.pth'),
            backbone_only=True)
        backbone_cfg = copy.deepcopy(det_cfg.model.backbone)
        backbone_cfg.init_cfg.checkpoint = published
        backbone = TransCNN(**{k: v for k, v in backbone_cfg.items()
                               if k != 'type'})
        backbone.init_weights()
        assert_loaded(backbone, state_dict, 'backbone.')

    evaluation.result()
    (metrics_file, ) = glob.glob(osp.join(test_dir, '*', '*.json'))
    with open(metrics_file) as f:
        metrics = json.load(f)
    assert 0 <= metrics['accuracy/top1'] <= metrics['accuracy/top5'] <= 100
    assert osp.getsize(str(tmp_path / 'preds.pkl')) > 0
