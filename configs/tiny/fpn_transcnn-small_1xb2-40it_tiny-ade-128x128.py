# The Semantic FPN TransCNN-Small config, shrunk to run on a laptop CPU in
# about a minute: the tiny ADE-layout dataset of tools/data/make_tiny_ade.py,
# 128x128 crops, 40 iterations at 2 images, no loader workers, the grid
# sizes for 128x128, a random backbone (no ImageNet checkpoint), seed 0, and
# logging every 10 iterations. Everything else (model, heads, SyncBN, which
# mmengine turns into BN on a single process, optimizer and lr, poly
# schedule, whole-image test) is the real config's.
#
#   python tools/data/make_tiny_ade.py data/tiny_ade
#   python tools/train.py configs/tiny/fpn_transcnn-small_1xb2-40it_tiny-ade-128x128.py
#   python tools/test.py configs/tiny/fpn_transcnn-small_1xb2-40it_tiny-ade-128x128.py \
#       work_dirs/fpn_transcnn-small_1xb2-40it_tiny-ade-128x128/iter_40.pth
_base_ = '../paper_arch/fpn_transcnn-paper-small_8xb4-40k_ade20k-512x512.py'

# ------------------------------------------------------------------ data ----
data_root = 'data/tiny_ade'
crop_size = (128, 128)
# The real pipelines with every size divided by 4 (512 -> 128).
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(
        type='RandomResize',
        scale=(512, 128),
        ratio_range=(0.5, 2.0),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
# No worker processes: on 2 cores they only add start-up time.
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

# ----------------------------------------------------------------- model ----
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        # 128x128 crops give 32/16/8/4 maps: the ImageNet grids (8, 4, 2)
        # merge them to 4x4 level-1 token maps.
        grid_sizes=(8, 4, 2, 0),
        # No ImageNet checkpoint on a laptop: random initialisation. To
        # start from one, inherit this config with
        # init_cfg=dict(_delete_=True, type='Pretrained', checkpoint=PATH,
        # prefix='backbone.') (as tests/test_segmentation.py does).
        init_cfg=None))

# -------------------------------------------------------------- schedule ----
max_iters = 40
param_scheduler = [
    dict(
        type='PolyLR',
        power=0.9,
        eta_min=0.0,
        begin=0,
        end=max_iters,
        by_epoch=False)
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_iters))
randomness = dict(seed=0)
