# Backbone: HAT-Net-Small of the authors' journal release (HAT_Net.py;
# 25.7M parameters, ImageNet top-1 82.6% at 224x224), started from their
# released ImageNet file. It normalises with GroupNorm(1, C) (its style's
# default), so batch size does not matter; do not set a norm_cfg.
#
# Dense-prediction settings as in transcnn-v1-small.py: the level-0 windows
# of ImageNet training (8/7/7) and level-1 pooling ratios 16/8/4 (§4.4
# doubles the ImageNet 8/4/2). Downloaded on first use into
# $TORCH_HOME/hub/checkpoints/HAT-Net_Small.pth.
hatnet_small = dict(
    type='TransCNN',
    arch='hatnet-small',
    grid_sizes=(8, 7, 7, 0),
    pool_ratios=(16, 8, 4, 0),
    out_indices=(0, 1, 2, 3),
    init_cfg=dict(
        type='Pretrained',
        checkpoint='https://github.com/yun-liu/HAT-Net/releases/download/'
        'v2.0/HAT-Net_Small.pth',
        prefix=None))
hatnet_small_channels = [64, 128, 320, 512]
