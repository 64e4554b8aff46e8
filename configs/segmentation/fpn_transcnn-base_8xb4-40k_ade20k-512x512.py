# Semantic FPN with TransCNN-Base on ADE20K: PVT's Semantic FPN protocol,
# exactly as the Small config (8 GPUs x 4, 40k iterations, AdamW lr 2e-4,
# wd 1e-4, poly 0.9, whole-image test); only the backbone changes.
_base_ = './fpn_transcnn-small_8xb4-40k_ade20k-512x512.py'

# Our ImageNet-1k checkpoint (configs/imagenet/transcnn-base_8xb128_in1k.py).
pretrained = 'work_dirs/transcnn-base_8xb128_in1k/epoch_300.pth'

model = dict(
    backbone=dict(
        arch='base',
        # Same grids as Small: they follow the input size, not the depth.
        grid_sizes=(16, 8, 4, 0),
        # PVT keeps 0.1 for every size of its segmentation backbones.
        drop_path_rate=0.1,
        init_cfg=dict(checkpoint=pretrained)))
