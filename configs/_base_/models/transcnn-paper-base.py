# Backbone: TransCNN-Base as Table 1 and our reading of §3 define it
# (arch='base'). No released weights have this network: it starts from
# your own ImageNet-1k pretraining with
# configs/imagenet/transcnn-base_8xb128_in1k.py; tools/train.py leaves the
# checkpoint at the path below (point model.backbone.init_cfg.checkpoint at
# your file). The file is loaded strictly: a missing or wrong file stops
# training with a message. To train from scratch on purpose, set
# model.backbone.init_cfg=None.
#
# grid_sizes: §4.4's G0 = 16/8/4 for stages 2-4 (ImageNet uses 8/4/2 at
# 224x224); stage 5 attends globally. Each level pools by its grid (Eq. 8).
# Grid sizes hold no weights: the ImageNet checkpoint loads unchanged.
transcnn_paper_base = dict(
    type='TransCNN',
    arch='base',
    grid_sizes=(16, 8, 4, 0),
    out_indices=(0, 1, 2, 3),
    init_cfg=dict(
        type='Pretrained',
        checkpoint='work_dirs/transcnn-base_8xb128_in1k/epoch_300.pth',
        prefix='backbone.'))
transcnn_paper_base_channels = [64, 128, 256, 512]
