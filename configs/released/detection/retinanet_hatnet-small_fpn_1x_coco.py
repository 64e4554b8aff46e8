# RetinaNet on COCO with HAT-Net-Small (HAT_Net.py, the authors' journal
# version) started from their released ImageNet file, downloaded on first
# use into torch.hub's cache (/hub/checkpoints/HAT-Net_Small.pth;
# see ../../_base_/models/hatnet-small.py):
#
#   bash tools/dist_train.sh \
#       configs/released/detection/retinanet_hatnet-small_fpn_1x_coco.py 8
#
# Data, detector and schedule (§4.4) are those of
# ../../retinanet_transcnn_base.py; only the backbone changes.
_base_ = [
    '../../retinanet_transcnn_base.py',
    '../../_base_/models/hatnet-small.py',
]

model = dict(
    backbone=dict(
        _delete_=True,  # replaces the TransCNN backbone
        **_base_.hatnet_small,
        # Fine-tuning as in the TransCNN config (norm_eval concerns
        # BatchNorm only; HAT-Net's GroupNorm has no running statistics).
        drop_path_rate=0.1,
        norm_eval=True,
        frozen_stages=-1),
    neck=dict(in_channels=_base_.hatnet_small_channels))
