# mmseg segmentors (Semantic FPN, UperNet) with a TransCNN backbone to ONNX
# Runtime, at any input size:
#
#   python tools/deployment/deploy.py \
#       configs/deploy/segmentation_onnxruntime_dynamic.py \
#       configs/segmentation/fpn_transcnn-small_8xb4-40k_ade20k-512x512.py \
#       CHECKPOINT IMAGE
#
# The graph runs the whole image at once (mmseg's mode='whole'; a config
# that tests with sliding windows exports its whole-image forward) and
# returns `output` (batch, 1, height, width), the class of every pixel of
# the input. With with_argmax=False it returns the class scores instead,
# (batch, classes, height, width).
_base_ = ['./_base_onnxruntime.py']

onnx_config = dict(
    output_names=['output'],
    dynamic_axes=dict(
        input={0: 'batch', 2: 'height', 3: 'width'},
        output={0: 'batch', 2: 'height', 3: 'width'}))
codebase_config = dict(type='mmseg', task='Segmentation', with_argmax=True)
