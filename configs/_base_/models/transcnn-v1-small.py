# Backbone: TransCNN-Small of the authors' first release (TransCNN.py), which
# has Table 1's Base layout (channels 64/128/256/512, depths 3/4/8/3, kernels
# 5/3/5/3, expansions 4/4/6/6; 26.5M parameters, ImageNet top-1 83.1% at
# 256x256), started from their released ImageNet file.
#
# Settings for dense prediction (COCO at 800x1333, ADE20K at 512x512 crops):
# - grid_sizes: the level-0 windows 8/8/8 of ImageNet training, so attention
#   stays inside windows of the size the weights learnt; maps that are not
#   multiples are padded and the padding masked;
# - pool_ratios: §4.4 doubles the ImageNet grids for COCO (8/4/2 -> 16/8/4);
#   with the released network's separate level-1 pooling ratio that is
#   16/8/4, which keeps the pooled key map small (13x21 tokens in every
#   stage at 800x1333, 8x8 at 512x512). Stage 5 attends globally (0).
# Neither holds weights, so the released file loads strictly.
#
# The file is downloaded on first use into torch.hub's cache,
# $TORCH_HOME/hub/checkpoints/TransCNN-Small.pth (default
# ~/.cache/torch/hub/checkpoints/), and read from there afterwards. Offline,
# put the file there by hand or point model.backbone.init_cfg.checkpoint at
# a local copy. Its keys carry no prefix (prefix=None); the loader
# recognises the released layout and renames them.
#
# A variable, not `model = dict(backbone=...)`: mmdet's and mmseg's model
# bases already define `model`, and mmengine refuses a key that two bases of
# one config define. A config lists this file in `_base_` and writes
#     model = dict(backbone=dict(_delete_=True, **_base_.transcnn_v1_small,
#                                <task settings>),
#                  neck=dict(in_channels=_base_.transcnn_v1_small_channels))
transcnn_v1_small = dict(
    type='TransCNN',
    arch='transcnn-v1-small',
    grid_sizes=(8, 8, 8, 0),
    pool_ratios=(16, 8, 4, 0),
    out_indices=(0, 1, 2, 3),
    init_cfg=dict(
        type='Pretrained',
        checkpoint='https://github.com/yun-liu/TransCNN/releases/download/'
        'v1.0/TransCNN-Small.pth',
        prefix=None))
# Channels of the four stage outputs (strides 4/8/16/32).
transcnn_v1_small_channels = [64, 128, 256, 512]
