# Semantic FPN with TransCNN-Small on ADE20K, started from the authors'
# released ImageNet weights: the protocol of
# ./fpn_transcnn-base_8xb4-40k_ade20k-512x512.py with a smaller backbone.
#
#   bash tools/dist_train.sh \
#       configs/segmentation/fpn_transcnn-small_8xb4-40k_ade20k-512x512.py 8
#
# Backbone: the authors' released TransCNN-Tiny (first version,
# arch='transcnn-v1-tiny'), the released network closest to Table 1's Small
# (13.3M parameters against 13.1M; same channels and kernels, depths
# 2/2/4/2 and expansions 4/4/4/4 instead of 2/2/2/2 and 4/4/6/5; see
# ../_base_/models/transcnn-v1-tiny.py). For Table 1's Small as we read §3
# (your own ImageNet pretraining) use
# ../paper_arch/fpn_transcnn-paper-small_8xb4-40k_ade20k-512x512.py.
_base_ = [
    './fpn_transcnn-base_8xb4-40k_ade20k-512x512.py',
    '../_base_/models/transcnn-v1-tiny.py',
]

model = dict(
    backbone=dict(
        _delete_=True,  # replaces the Base config's backbone
        **_base_.transcnn_v1_tiny,
        # PVT's segmentation backbones all use stochastic depth 0.1.
        drop_path_rate=0.1,
        # SyncBN, as in the base file.
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False),
    neck=dict(in_channels=_base_.transcnn_v1_tiny_channels))
