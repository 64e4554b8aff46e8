# Mask R-CNN with TransCNN-Small on COCO, started from the authors' released
# ImageNet weights: the Base config with a smaller backbone; same data,
# detector and schedule.
#
#   bash tools/dist_train.sh configs/mask_rcnn_transcnn_small.py 8
#
# Backbone: the authors' released TransCNN-Tiny (first version,
# arch='transcnn-v1-tiny'), the released network closest to Table 1's Small
# (13.3M parameters against 13.1M; same channels and kernels, depths
# 2/2/4/2 and expansions 4/4/4/4 instead of 2/2/2/2 and 4/4/6/5; see
# ./_base_/models/transcnn-v1-tiny.py). For Table 1's Small as we read §3
# (your own ImageNet pretraining) use
# paper_arch/mask_rcnn_transcnn-paper-small_fpn_1x_coco.py.
_base_ = [
    './mask_rcnn_transcnn_base.py',
    './_base_/models/transcnn-v1-tiny.py',
]

model = dict(
    backbone=dict(
        _delete_=True,  # replaces the Base config's backbone
        **_base_.transcnn_v1_tiny,
        # Fine-tuning as in the Base config.
        drop_path_rate=0.1,
        norm_eval=True,
        frozen_stages=-1),
    neck=dict(in_channels=_base_.transcnn_v1_tiny_channels))
