# RetinaNet with a TransCNN-Small backbone on COCO: the Base config with the
# Small architecture and its ImageNet checkpoint; same data and schedule.
#
#   bash tools/dist_train.sh configs/retinanet_transcnn_small.py 8
_base_ = './retinanet_transcnn_base.py'

# Our ImageNet-1k checkpoint of TransCNN-Small (configs/imagenet/).
pretrained = 'work_dirs/transcnn-small_8xb128_in1k/epoch_300.pth'

model = dict(
    backbone=dict(
        arch='small',
        grid_sizes=(16, 8, 4, 0),  # §4.4 (per stage; 0 = plain attention)
        init_cfg=dict(checkpoint=pretrained)))
