# HAT-Net-Small (HAT_Net.py, journal version), the authors' released
# ImageNet-1k checkpoint
# HAT-Net_Small.pth: 82.6% top-1 as published, 224x224.
#   python tools/model_converters/hatnet2mmtranscnn.py \
#       checkpoints/HAT-Net_Small.pth checkpoints/hatnet-small_in1k.pth
#   python tools/test.py configs/released/imagenet/hatnet-small_in1k-224px.py \
#       checkpoints/hatnet-small_in1k.pth
_base_ = './_base_/released_in1k-224px.py'

model = dict(
    backbone=dict(arch='hatnet-small'),
    head=dict(in_channels=512))
