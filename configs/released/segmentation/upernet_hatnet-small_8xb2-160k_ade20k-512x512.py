# UperNet on ADE20K (512x512, protocol of
# ../../segmentation/upernet_transcnn-base_8xb2-160k_ade20k-512x512.py)
# with the backbone HAT-Net-Small (HAT_Net.py, the journal version),
# started from the authors' released ImageNet file HAT-Net_Small.pth as
# downloaded:
#
#   wget -P checkpoints \
#       https://github.com/yun-liu/HAT-Net/releases/download/v2.0/HAT-Net_Small.pth
#   bash tools/dist_train.sh configs/released/segmentation/upernet_hatnet-small_8xb2-160k_ade20k-512x512.py 8
_base_ = '../../segmentation/upernet_transcnn-base_8xb2-160k_ade20k-512x512.py'

pretrained = 'checkpoints/HAT-Net_Small.pth'

model = dict(
    backbone=dict(
        arch='hatnet-small',
        # 512x512 crops give 128/64/32/16 maps. Level-0 windows 8/7/7 as
        # in ImageNet training; level-1 pooling ratios 16/8/4 give an 8x8
        # pooled key map in every stage (close to ImageNet's). No weights:
        # the released file loads strictly.
        grid_sizes=(8, 7, 7, 0),
        pool_ratios=(16, 8, 4, 0),
        # HAT-Net normalises with GroupNorm(1, C) (its style's default),
        # not the SyncBN of the base file: batch size does not matter.
        norm_cfg=None,
        # The released keys carry no prefix; the loader recognises the
        # file's layout.
        init_cfg=dict(checkpoint=pretrained, prefix=None)),
    decode_head=dict(in_channels=[64, 128, 320, 512]),
    auxiliary_head=dict(in_channels=320))
