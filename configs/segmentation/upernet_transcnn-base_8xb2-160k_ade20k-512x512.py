# UperNet with TransCNN-Base on ADE20K, 512x512 crops, 8 GPUs x 2 images,
# 160k iterations, started from the authors' released ImageNet weights.
#
#   bash tools/dist_train.sh \
#       configs/segmentation/upernet_transcnn-base_8xb2-160k_ade20k-512x512.py 8
#
# Backbone: the authors' released "TransCNN-Small" (first version,
# arch='transcnn-v1-small'), which has Table 1's Base layout, the network
# the paper calls TransCNN-Base; downloaded on first use into torch.hub's
# cache ($TORCH_HOME/hub/checkpoints/). See
# ../_base_/models/transcnn-v1-small.py. For Table 1's Base as we read §3
# (your own ImageNet pretraining) use
# ../paper_arch/upernet_transcnn-paper-base_8xb2-160k_ade20k-512x512.py.
#
# Protocol: mmseg's UperNet protocol, as in its Swin configs
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
    '../_base_/models/transcnn-v1-small.py',
]

# Registers type='TransCNN' in mmseg's registry.
custom_imports = dict(imports=['mmtranscnn'], allow_failed_imports=False)
# Checkpoints that torch.load(weights_only=True) reads as they are, so that
# mmdet's/mmseg's/mmpretrain's own tools, their inferencers and mmdeploy
# load them on torch >= 2.6 (see mmtranscnn/engine/weights_only.py).
default_hooks = dict(
    weights_only_checkpoint=dict(
        type='mmtranscnn.WeightsOnlyCheckpointHook'))

crop_size = (512, 512)
# SyncBN in backbone and heads: 2 images per GPU are far too few for BN
# statistics, SyncBN uses all 16. norm_eval=False: they keep updating.
# On one process mmengine turns SyncBN into BN by itself.
norm_cfg = dict(type='SyncBN', requires_grad=True)

model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        _delete_=True,  # replaces mmseg's Swin
        **_base_.transcnn_v1_small,
        # 26.5M parameters, Swin-T's size class: mmseg's Swin-T value.
        drop_path_rate=0.3,
        norm_cfg=norm_cfg,
        norm_eval=False),
    decode_head=dict(
        in_channels=_base_.transcnn_v1_small_channels,
        num_classes=150,
        norm_cfg=norm_cfg),
    # Auxiliary FCN head on stage 4 (stride 16).
    auxiliary_head=dict(
        in_channels=_base_.transcnn_v1_small_channels[2],
        in_index=2,
        num_classes=150,
        norm_cfg=norm_cfg),
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
