# UperNet on ADE20K (512x512) with HAT-Net-Small (HAT_Net.py, the authors'
# journal version) started from their released ImageNet file, downloaded on
# first use into torch.hub's cache
# (/hub/checkpoints/HAT-Net_Small.pth; see
# ../../_base_/models/hatnet-small.py):
#
#   bash tools/dist_train.sh \
#       configs/released/segmentation/upernet_hatnet-small_8xb2-160k_ade20k-512x512.py 8
#
# The protocol is that of
# ../../segmentation/upernet_transcnn-base_8xb2-160k_ade20k-512x512.py;
# only the backbone changes.
_base_ = [
    '../../segmentation/upernet_transcnn-base_8xb2-160k_ade20k-512x512.py',
    '../../_base_/models/hatnet-small.py',
]

model = dict(
    backbone=dict(
        _delete_=True,  # replaces the TransCNN backbone
        **_base_.hatnet_small,
        drop_path_rate=0.3,
        # GroupNorm(1, C), HAT-Net's own, instead of the base file's
        # SyncBN: batch size does not matter.
        norm_eval=False),
    decode_head=dict(in_channels=_base_.hatnet_small_channels),
    auxiliary_head=dict(in_channels=_base_.hatnet_small_channels[2]))
