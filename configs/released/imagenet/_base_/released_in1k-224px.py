# ImageNet-1k evaluation of an authors' released checkpoint with mmpretrain.
#
# The released files hold the authors' key names; convert one first, then
# evaluate (the config of each preset names its file):
#   python tools/model_converters/hatnet2mmtranscnn.py \
#       checkpoints/HAT-Net_Small.pth checkpoints/hatnet-small_in1k.pth
#   python tools/test.py configs/released/imagenet/hatnet-small_in1k-224px.py \
#       checkpoints/hatnet-small_in1k.pth
#
# The authors' evaluation (their code follows PVT's, i.e. DeiT's): resize the
# short side to int(S * 256 / 224) with bicubic interpolation, center crop S,
# ImageNet mean/std on RGB; S = 224 for HAT-Net, 256 for the first version.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/default_runtime.py',
]

# Registers type='TransCNN' in mmpretrain's registry.
custom_imports = dict(imports=['mmtranscnn'], allow_failed_imports=False)
# Checkpoints that torch.load(weights_only=True) reads as they are, so that
# mmdet's/mmseg's/mmpretrain's own tools, their inferencers and mmdeploy
# load them on torch >= 2.6 (see mmtranscnn/engine/weights_only.py).
default_hooks = dict(
    weights_only_checkpoint=dict(
        type='mmtranscnn.WeightsOnlyCheckpointHook'))
default_scope = 'mmpretrain'

img_size = 224
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='TransCNN',
        # The preset's own grid settings (level-0 windows and pooling
        # ratios) are those the weights were trained with at this size.
        arch='hatnet-small',
        out_indices=(3, )),
    # The released classifier: global average pooling, then one linear
    # layer (its dropout 0.2 acts in training only).
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=512,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, 5)))

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='ResizeEdge',
        scale=int(img_size * 256 / 224),
        edge='short',
        backend='pillow',
        interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=img_size),
    dict(type='PackInputs'),
]
val_dataloader = dict(batch_size=64, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_cfg = dict()
test_cfg = dict()

# Evaluation only: no training parts.
train_dataloader = None
