# RetinaNet with a TransCNN-Base backbone on COCO (paper §4.4, Table 4).
#
#   bash tools/dist_train.sh configs/retinanet_transcnn_base.py 8
#
# Everything but the backbone comes from mmdet's own configs: RetinaNet with
# FPN, COCO train2017 / val2017 with shorter side 800 and longer side at most
# 1333, random flip, 2 images per GPU. The schedule (AdamW, 12 epochs) is in
# ./_base_/schedules/transcnn_coco_adamw_1x.py.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
    './_base_/schedules/transcnn_coco_adamw_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmtranscnn'], allow_failed_imports=False)

# Our ImageNet-1k checkpoint of TransCNN-Base (train one with the ImageNet
# configs under configs/imagenet/). Point this at your file; a missing file
# stops training with a message saying how to get one. To train from scratch
# on purpose, set model.backbone.init_cfg=None.
pretrained = 'work_dirs/transcnn-base_8xb128_in1k/epoch_300.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='TransCNN',
        arch='base',
        # H-MHSA grid size G0 per stage (strides 4/8/16/32); 0 = plain
        # attention. (16, 8, 4, 0) is §4.4's COCO setting (ImageNet uses
        # (8, 4, 2, 0) at 224x224). Grid sizes hold no weights, so the
        # ImageNet checkpoint loads into any choice here.
        grid_sizes=(16, 8, 4, 0),
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,  # as PVT's detection backbones
        # TransCNN uses BatchNorm. With 2 images per GPU the batch statistics
        # are too noisy to learn from, so BN keeps the ImageNet running
        # statistics (eval mode) while its affine weights still train, as
        # mmdet does for ResNet; it also behaves the same whatever the
        # number of GPUs. SyncBN (norm_cfg=dict(type='SyncBN'),
        # norm_eval=False) is the alternative on GPUs (it syncs only on
        # accelerators). All stages are fine-tuned, as in PVT.
        norm_eval=True,
        frozen_stages=-1,
        init_cfg=dict(
            type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    # FPN on the four stages; RetinaNet starts at stride 8 (start_level=1
    # in mmdet's base) and adds P6/P7 on top.
    neck=dict(in_channels=[64, 128, 256, 512]))
