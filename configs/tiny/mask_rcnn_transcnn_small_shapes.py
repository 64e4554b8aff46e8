# Mask R-CNN + TransCNN-Small on the synthetic "shapes" data (boxes and
# masks of 4 classes, 160x160 images), for a CPU.
#
#   python tools/data/make_shapes_coco.py --out data/shapes
#   python tools/train.py configs/tiny/mask_rcnn_transcnn_small_shapes.py
#
# It inherits configs/paper_arch/mask_rcnn_transcnn-paper-small_fpn_1x_coco.py
# (Table 1's Small as we read §3) and changes what
# retinanet_transcnn_small_shapes.py changes (see there for why the backbone
# trains from scratch with BN statistics of its own): the data (4 classes,
# 160x160, 8 per batch, no workers), the grid sizes, init_cfg=None,
# norm_eval=False, drop_path_rate=0., gradient clipping, auto_scale_lr for
# 8 images and logging; its own lr is 1e-3 (instead of 1e-4), with 50
# warm-up iterations and cosine decay over 12 epochs.
_base_ = '../paper_arch/mask_rcnn_transcnn-paper-small_fpn_1x_coco.py'

data_root = 'data/shapes/'
metainfo = dict(
    classes=('circle', 'rectangle', 'triangle', 'ring'),
    palette=[(220, 20, 60), (0, 110, 255), (255, 170, 0), (0, 170, 85)])
img_scale = (160, 160)

model = dict(
    backbone=dict(
        grid_sizes=(8, 4, 2, 0),  # 5x5 second-level maps at 160x160
        init_cfg=None,
        norm_eval=False,
        drop_path_rate=0.),
    roi_head=dict(
        bbox_head=dict(num_classes=4), mask_head=dict(num_classes=4)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
]
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=50),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs,
         eta_min_ratio=0.01, convert_to_iter_based=True)
]
optim_wrapper = dict(optimizer=dict(lr=1e-3), clip_grad=dict(max_norm=10.))
auto_scale_lr = dict(base_batch_size=8)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
log_processor = dict(window_size=10)
