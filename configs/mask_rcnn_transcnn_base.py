# Mask R-CNN with TransCNN-Base on COCO (paper §4.4, Tables 4 and 5),
# started from the authors' released ImageNet weights.
#
#   bash tools/dist_train.sh configs/mask_rcnn_transcnn_base.py 8
#
# Backbone: the authors' released "TransCNN-Small" (first version,
# arch='transcnn-v1-small'), which has Table 1's Base layout, the network
# the paper calls TransCNN-Base. Its ImageNet file is downloaded on first
# use into torch.hub's cache ($TORCH_HOME/hub/checkpoints/); see
# ./_base_/models/transcnn-v1-small.py. For Table 1's Base as we read §3
# (your own ImageNet pretraining) use
# paper_arch/mask_rcnn_transcnn-paper-base_fpn_1x_coco.py.
#
# Everything but the backbone comes from mmdet's own configs: Mask R-CNN with
# FPN, COCO instance train2017 / val2017 with shorter side 800 and longer
# side at most 1333, random flip, 2 images per GPU. The schedule (AdamW, 12
# epochs) is in ./_base_/schedules/transcnn_coco_adamw_1x.py.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
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
        # BN keeps the ImageNet statistics (2 images per GPU are too few to
        # estimate them) while its affine weights train; see
        # retinanet_transcnn_base.py. All stages are fine-tuned, as in PVT.
        norm_eval=True,
        frozen_stages=-1),
    # FPN on the four stages (P2-P5, plus P6 by max-pooling).
    neck=dict(in_channels=_base_.transcnn_v1_small_channels))
