# UperNet with TransCNN-Small on ADE20K, 512x512 crops, 8 GPUs x 2 images,
# 160k iterations: mmseg's UperNet protocol, as in its Swin configs
# (configs/swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-
# 512x512.py): AdamW lr 6e-5, betas (0.9, 0.999), weight decay 0.01 (none on
# norm layers), 1500 iterations of linear warm-up from lr x 1e-6, then
# poly decay (power 1.0, as there) to 0 at 160k; auxiliary FCN head on
# stage 4 (stride 16) with loss weight 0.4; whole-image test.
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]

# Registers type='TransCNN' in mmseg's registry.
custom_imports = dict(imports=['mmtranscnn'], allow_failed_imports=False)

# Our ImageNet-1k checkpoint: where tools/train.py leaves it for
# configs/imagenet/transcnn-small_8xb128_in1k.py. Point this at your file;
# it is loaded strictly (a wrong or missing file stops training).
pretrained = 'work_dirs/transcnn-small_8xb128_in1k/epoch_300.pth'

crop_size = (512, 512)
# SyncBN in backbone and heads: 2 images per GPU are far too few for BN
# statistics, SyncBN uses all 16. norm_eval=False: they keep updating.
# On one process mmengine turns SyncBN into BN by itself.
norm_cfg = dict(type='SyncBN', requires_grad=True)

model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        _delete_=True,
        type='TransCNN',
        arch='small',
        # 512x512 crops: 128/64/32/16 maps at strides 4/8/16/32. G0 = 16/8/4
        # (the paper's dense-prediction setting, §4.4) gives 8x8 level-1 token
        # maps, close to ImageNet's 7x7, at about the least attention cost
        # (see the Semantic FPN config); stage 5 attends globally.
        grid_sizes=(16, 8, 4, 0),
        out_indices=(0, 1, 2, 3),
        # mmseg's Swin-T/S/B UperNet configs use 0.3 for 28M-88M models; the
        # 13M Small gets less regularisation (not tuned).
        drop_path_rate=0.2,
        norm_cfg=norm_cfg,
        norm_eval=False,
        init_cfg=dict(
            type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    decode_head=dict(
        in_channels=[64, 128, 256, 512], num_classes=150, norm_cfg=norm_cfg),
    auxiliary_head=dict(
        in_channels=256, in_index=2, num_classes=150, norm_cfg=norm_cfg),
    # Whole image, shorter side 512 (mmseg's Swin protocol): the top level
    # of H-MHSA then sees the whole image, which sliding windows would cut.
    test_cfg=dict(mode='whole'))

train_dataloader = dict(batch_size=2)  # x 8 GPUs = 16
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    # Swin exempts its norms (and position tables, which TransCNN has not)
    # from weight decay; norm_decay_mult covers every BN/LN layer by type.
    paramwise_cfg=dict(norm_decay_mult=0.0))
param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0,
        end=1500),
    dict(
        type='PolyLR',
        power=1.0,
        eta_min=0.0,
        begin=1500,
        end=160000,
        by_epoch=False),
]
# 160k iterations, validation and a checkpoint every 16k (schedule_160k).

# The lr above is for 8 x 2 images; --auto-scale-lr rescales it linearly.
auto_scale_lr = dict(enable=False, base_batch_size=16)
