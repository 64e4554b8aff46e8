# HAT-Net-Medium (HAT_Net.py, journal version), the authors' released
# ImageNet-1k checkpoint
# HAT-Net_Medium.pth: 84.0% top-1 as published, 224x224.
#   python tools/model_converters/hatnet2mmtranscnn.py \
#       checkpoints/HAT-Net_Medium.pth checkpoints/hatnet-medium_in1k.pth
#   python tools/test.py configs/released/imagenet/hatnet-medium_in1k-224px.py \
#       checkpoints/hatnet-medium_in1k.pth
_base_ = './_base_/released_in1k-224px.py'

model = dict(
    backbone=dict(arch='hatnet-medium'),
    head=dict(in_channels=512))
