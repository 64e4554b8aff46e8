# Mask R-CNN on COCO (§4.4 schedule: AdamW 1e-4, 12 epochs, lr / 10 after
# epochs 8 and 11, batch 16) with the backbone
# HAT-Net-Small (HAT_Net.py, the journal version), started from the
# authors' released ImageNet file
# HAT-Net_Small.pth as downloaded (README, "Released ImageNet weights"):
#
#   wget -P checkpoints \
#       https://github.com/yun-liu/HAT-Net/releases/download/v2.0/HAT-Net_Small.pth
#   bash tools/dist_train.sh configs/released/detection/mask_rcnn_hatnet-small_fpn_1x_coco.py 8
#
# Data, detector and schedule are those of ../../mask_rcnn_transcnn_base.py.
_base_ = '../../mask_rcnn_transcnn_base.py'

pretrained = 'checkpoints/HAT-Net_Small.pth'

model = dict(
    backbone=dict(
        arch='hatnet-small',
        # Level-0 windows per stage: the same windows 8/7/7 as at 224x224
        # (attention inside the windows the weights learnt); maps that are not multiples
        # are padded and the padding masked. Pooling ratios of level 1: §4.4
        # doubles the ImageNet setting (8/4/2 -> 16/8/4), which keeps the
        # pooled key map small at 800x1333 (13x21 tokens in every stage).
        # Neither holds weights: the released file loads strictly.
        grid_sizes=(8, 7, 7, 0),
        pool_ratios=(16, 8, 4, 0),
        # The released keys carry no prefix; the loader recognises the
        # file's layout.
        init_cfg=dict(checkpoint=pretrained, prefix=None)),
    neck=dict(in_channels=[64, 128, 320, 512]))
