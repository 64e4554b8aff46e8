# UperNet with TransCNN-Base as Table 1 and our reading of §3 define it
# (arch='base'), on ADE20K with the protocol of
# ../segmentation/upernet_transcnn-base_8xb2-160k_ade20k-512x512.py.
#
# Not the headline config (../segmentation/upernet_transcnn-base_*, which
# starts from the authors' released weights): no released file has this
# network, so it needs your own ImageNet-1k pretraining first, whose output
# the backbone's init_cfg names (../_base_/models/transcnn-paper-base.py):
#
#   bash tools/dist_train.sh configs/imagenet/transcnn-base_8xb128_in1k.py 8
#   bash tools/dist_train.sh \
#       configs/paper_arch/upernet_transcnn-paper-base_8xb2-160k_ade20k-512x512.py 8
#
# 512x512 crops give 128/64/32/16 maps at strides 4/8/16/32: G0 = 16/8/4
# (§4.4) merges every stage to an 8x8 token map at level 1, close to the
# 7x7 maps of ImageNet pretraining (G0 = 8/4/2 at 224).
_base_ = [
    '../segmentation/upernet_transcnn-base_8xb2-160k_ade20k-512x512.py',
    '../_base_/models/transcnn-paper-base.py',
]

model = dict(
    backbone=dict(
        _delete_=True,  # replaces the released backbone
        **_base_.transcnn_paper_base,
        drop_path_rate=0.3,
        # SyncBN, as in the base file.
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False),
    decode_head=dict(in_channels=_base_.transcnn_paper_base_channels),
    auxiliary_head=dict(in_channels=_base_.transcnn_paper_base_channels[2]))
