# RetinaNet with TransCNN-Base on COCO (paper §4.4, Table 4), started from
# the authors' released ImageNet weights.
#
#   bash tools/dist_train.sh configs/retinanet_transcnn_base.py 8
#
# Backbone: the authors' released "TransCNN-Small" (first version,
# arch='transcnn-v1-small'), which has Table 1's Base layout, the network
# the paper calls TransCNN-Base in Table 4. Its ImageNet file is downloaded
# on first use into torch.hub's cache ($TORCH_HOME/hub/checkpoints/); see
# ./_base_/models/transcnn-v1-small.py for the file, the grid settings and
# what to do offline. For Table 1's Base as we read §3 (arch='base', your
# own ImageNet pretraining) use
# paper_arch/retinanet_transcnn-paper-base_fpn_1x_coco.py.
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
    './_base_/models/transcnn-v1-small.py',
]
custom_imports = dict(imports=['mmtranscnn'], allow_failed_imports=False)
# Checkpoints that torch.load(weights_only=True) reads as they are, so that
# mmdet's/mmseg's/mmpretrain's own tools, their inferencers and mmdeploy
# load them on torch >= 2.6 (see mmtranscnn/engine/weights_only.py).
default_hooks = dict(
    weights_only_checkpoint=dict(
        type='mmtranscnn.WeightsOnlyCheckpointHook'))

model = dict(
    backbone=dict(
        _delete_=True,  # replaces mmdet's ResNet-50
        **_base_.transcnn_v1_small,
        drop_path_rate=0.1,  # as PVT's detection backbones
        # TransCNN uses BatchNorm. With 2 images per GPU the batch statistics
        # are too noisy to learn from, so BN keeps the ImageNet running
        # statistics (eval mode) while its affine weights still train, as
        # mmdet does for ResNet; it also behaves the same whatever the
        # number of GPUs. SyncBN (norm_cfg=dict(type='SyncBN'),
        # norm_eval=False) is the alternative on GPUs (it syncs only on
        # accelerators). All stages are fine-tuned, as in PVT.
        norm_eval=True,
        frozen_stages=-1),
    # FPN on the four stages; RetinaNet starts at stride 8 (start_level=1
    # in mmdet's base) and adds P6/P7 on top.
    neck=dict(in_channels=_base_.transcnn_v1_small_channels))
