# HAT-Net-Tiny (HAT_Net.py, journal version), the authors' released
# ImageNet-1k checkpoint
# HAT-Net_Tiny.pth: 79.8% top-1 as published, 224x224.
#   python tools/model_converters/hatnet2mmtranscnn.py \
#       checkpoints/HAT-Net_Tiny.pth checkpoints/hatnet-tiny_in1k.pth
#   python tools/test.py configs/released/imagenet/hatnet-tiny_in1k-224px.py \
#       checkpoints/hatnet-tiny_in1k.pth
_base_ = './_base_/released_in1k-224px.py'

model = dict(
    backbone=dict(arch='hatnet-tiny'),
    head=dict(in_channels=384))
