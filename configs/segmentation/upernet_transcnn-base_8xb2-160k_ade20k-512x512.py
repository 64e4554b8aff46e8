# UperNet with TransCNN-Base on ADE20K: mmseg's UperNet 160k protocol,
# exactly as the Small config; only the backbone changes.
_base_ = './upernet_transcnn-small_8xb2-160k_ade20k-512x512.py'

# Our ImageNet-1k checkpoint (configs/imagenet/transcnn-base_8xb128_in1k.py).
pretrained = 'work_dirs/transcnn-base_8xb128_in1k/epoch_300.pth'

model = dict(
    backbone=dict(
        arch='base',
        grid_sizes=(16, 8, 4, 0),
        # 26.7M parameters, Swin-T's size class: mmseg's Swin-T value.
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint=pretrained)))
