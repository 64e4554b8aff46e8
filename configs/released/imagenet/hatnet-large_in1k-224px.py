# HAT-Net-Large (HAT_Net.py, journal version), the authors' released
# ImageNet-1k checkpoint
# HAT-Net_Large.pth: 84.2% top-1 as published, 224x224.
#   python tools/model_converters/hatnet2mmtranscnn.py \
#       checkpoints/HAT-Net_Large.pth checkpoints/hatnet-large_in1k.pth
#   python tools/test.py configs/released/imagenet/hatnet-large_in1k-224px.py \
#       checkpoints/hatnet-large_in1k.pth
_base_ = './_base_/released_in1k-224px.py'

model = dict(
    backbone=dict(arch='hatnet-large'),
    head=dict(in_channels=640))
