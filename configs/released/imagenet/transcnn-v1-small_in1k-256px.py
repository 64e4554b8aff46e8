# TransCNN-Small (TransCNN.py, first version), the authors' released
# ImageNet-1k checkpoint
# TransCNN-Small.pth: 83.1% top-1 as published, 256x256.
#   python tools/model_converters/hatnet2mmtranscnn.py \
#       checkpoints/TransCNN-Small.pth checkpoints/transcnn-v1-small_in1k.pth
#   python tools/test.py configs/released/imagenet/transcnn-v1-small_in1k-256px.py \
#       checkpoints/transcnn-v1-small_in1k.pth
_base_ = './_base_/released_in1k-256px.py'

model = dict(
    backbone=dict(arch='transcnn-v1-small'),
    head=dict(in_channels=512))
