# Backbone: TransCNN-Tiny of the authors' first release (TransCNN.py),
# started from their released ImageNet file: the released network closest to
# Table 1's Small. Table 1's Small (13.1M parameters; depths 2/2/2/2,
# expansions 4/4/6/5) was not released; TransCNN-Tiny has its channels
# (64/128/256/512), kernels (5/3/5/3) and size (13.3M parameters, ImageNet
# top-1 80.4% at 256x256) with depths 2/2/4/2 and expansions 4/4/4/4.
# HAT-Net-Tiny (12.7M) is further off: channels 48/96/240/384, GroupNorm.
#
# Dense-prediction settings, download and cache as in transcnn-v1-small.py
# (level-0 windows 8/8/8 as trained, level-1 pooling ratios 16/8/4 from
# §4.4; file $TORCH_HOME/hub/checkpoints/TransCNN-Tiny.pth).
transcnn_v1_tiny = dict(
    type='TransCNN',
    arch='transcnn-v1-tiny',
    grid_sizes=(8, 8, 8, 0),
    pool_ratios=(16, 8, 4, 0),
    out_indices=(0, 1, 2, 3),
    init_cfg=dict(
        type='Pretrained',
        checkpoint='https://github.com/yun-liu/TransCNN/releases/download/'
        'v1.0/TransCNN-Tiny.pth',
        prefix=None))
transcnn_v1_tiny_channels = [64, 128, 256, 512]
