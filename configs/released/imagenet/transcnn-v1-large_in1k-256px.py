# TransCNN-Large (TransCNN.py, first version), the authors' released
# ImageNet-1k checkpoint
# TransCNN-Large.pth: 84.2% top-1 as published, 256x256.
#   python tools/model_converters/hatnet2mmtranscnn.py \
#       checkpoints/TransCNN-Large.pth checkpoints/transcnn-v1-large_in1k.pth
#   python tools/test.py configs/released/imagenet/transcnn-v1-large_in1k-256px.py \
#       checkpoints/transcnn-v1-large_in1k.pth
_base_ = './_base_/released_in1k-256px.py'

model = dict(
    backbone=dict(arch='transcnn-v1-large'),
    head=dict(in_channels=768))
