# Mask R-CNN on COCO (§4.4 schedule: AdamW 1e-4, 12 epochs, lr / 10 after
# epochs 8 and 11, batch 16) with the backbone
# TransCNN-Small of the first version (TransCNN.py; Table 1's Base
# layout), started from the authors' released ImageNet file
# TransCNN-Small.pth as downloaded (README, "Released ImageNet weights"):
#
#   wget -P checkpoints \
#       https://github.com/yun-liu/TransCNN/releases/download/v1/TransCNN-Small.pth
#   bash tools/dist_train.sh configs/released/detection/mask_rcnn_transcnn-v1-small_fpn_1x_coco.py 8
#
# Data, detector and schedule are those of ../../mask_rcnn_transcnn_base.py.
_base_ = '../../mask_rcnn_transcnn_base.py'

pretrained = 'checkpoints/TransCNN-Small.pth'

model = dict(
    backbone=dict(
        arch='transcnn-v1-small',
        # Level-0 windows per stage: the same windows 8/8/8 as at 256x256
        # (attention inside the windows the weights learnt); maps that are not multiples
        # are padded and the padding masked. Pooling ratios of level 1: §4.4
        # doubles the ImageNet setting (8/4/2 -> 16/8/4), which keeps the
        # pooled key map small at 800x1333 (13x21 tokens in every stage).
        # Neither holds weights: the released file loads strictly.
        grid_sizes=(8, 8, 8, 0),
        pool_ratios=(16, 8, 4, 0),
        # The released keys carry no prefix; the loader recognises the
        # file's layout.
        init_cfg=dict(checkpoint=pretrained, prefix=None)),
    neck=dict(in_channels=[64, 128, 256, 512]))
