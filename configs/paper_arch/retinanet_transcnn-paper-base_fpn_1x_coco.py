# RetinaNet with TransCNN-Base as Table 1 and our reading of §3 define it
# (arch='base'), on COCO with the data, detector and schedule of
# ../retinanet_transcnn_base.py.
#
# Not the headline config (../retinanet_transcnn_base.py, which starts from
# the authors' released weights): no released file has this network, so
# it needs your own ImageNet-1k pretraining first, whose output the
# backbone's init_cfg names (../_base_/models/transcnn-paper-base.py):
#
#   bash tools/dist_train.sh configs/imagenet/transcnn-base_8xb128_in1k.py 8
#   bash tools/dist_train.sh \
#       configs/paper_arch/retinanet_transcnn-paper-base_fpn_1x_coco.py 8
_base_ = [
    '../retinanet_transcnn_base.py',
    '../_base_/models/transcnn-paper-base.py',
]

model = dict(
    backbone=dict(
        _delete_=True,  # replaces the released backbone
        **_base_.transcnn_paper_base,
        # Fine-tuning as in the headline config.
        drop_path_rate=0.1,
        norm_eval=True,
        frozen_stages=-1),
    neck=dict(in_channels=_base_.transcnn_paper_base_channels))
