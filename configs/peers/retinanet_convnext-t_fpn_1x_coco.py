# RetinaNet with a ConvNeXt-T backbone: a peer for the speed and memory
# comparison (tools/analysis_tools/benchmark.py, model name 'ConvNeXt-T').
#
# mmdet ships ConvNeXt only in Mask R-CNN / Cascade R-CNN configs; this one
# puts the backbone those configs build (mmpretrain's ConvNeXt, arch 'tiny',
# the four stage maps without global pooling) into mmdet's RetinaNet
# R-50-FPN 1x, so that every RetinaNet of the comparison differs only in its
# backbone and FPN inputs.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

# mmpretrain's models register ConvNeXt under the 'mmpretrain' scope.
custom_imports = dict(
    imports=['mmpretrain.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmpretrain.ConvNeXt',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        gap_before_final_norm=False,
        layer_scale_init_value=1.0,
        # Stochastic depth as mmdet's ConvNeXt-T detection configs; it only
        # acts in training.
        drop_path_rate=0.4,
        # No ImageNet checkpoint is named here: the benchmark measures
        # randomly initialised models. To train, set
        # init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')
        # to an mmpretrain ConvNeXt-T ImageNet-1k checkpoint.
        init_cfg=None),
    # ConvNeXt-T's stage widths (strides 4/8/16/32); RetinaNet starts at
    # stride 8 and adds P6/P7 on top.
    neck=dict(in_channels=[96, 192, 384, 768], start_level=1))

# AdamW as mmdet's ConvNeXt configs train it (not the base's SGD).
optim_wrapper = dict(
    optimizer=dict(
        _delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999),
        weight_decay=0.05))
