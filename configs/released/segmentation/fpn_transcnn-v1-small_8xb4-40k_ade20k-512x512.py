# Semantic FPN on ADE20K (512x512, protocol of
# ../../segmentation/fpn_transcnn-base_8xb4-40k_ade20k-512x512.py)
# with the backbone TransCNN-Small of the first version (TransCNN.py; Table
# 1's Base
# layout),
# started from the authors' released ImageNet file TransCNN-Small.pth as
# downloaded:
#
#   wget -P checkpoints \
#       https://github.com/yun-liu/TransCNN/releases/download/v1/TransCNN-Small.pth
#   bash tools/dist_train.sh configs/released/segmentation/fpn_transcnn-v1-small_8xb4-40k_ade20k-512x512.py 8
_base_ = '../../segmentation/fpn_transcnn-base_8xb4-40k_ade20k-512x512.py'

pretrained = 'checkpoints/TransCNN-Small.pth'

model = dict(
    backbone=dict(
        arch='transcnn-v1-small',
        # 512x512 crops give 128/64/32/16 maps. Level-0 windows 8/8/8 as
        # in ImageNet training; level-1 pooling ratios 16/8/4 give an 8x8
        # pooled key map in every stage (close to ImageNet's). No weights:
        # the released file loads strictly.
        grid_sizes=(8, 8, 8, 0),
        pool_ratios=(16, 8, 4, 0),
        # SyncBN as in the base file (BN keys, same weights).
        # The released keys carry no prefix; the loader recognises the
        # file's layout.
        init_cfg=dict(checkpoint=pretrained, prefix=None)),
    neck=dict(in_channels=[64, 128, 256, 512]))
