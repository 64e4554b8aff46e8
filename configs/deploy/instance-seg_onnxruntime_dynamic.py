# Mask R-CNN with a TransCNN backbone to ONNX Runtime, at any input size.
# Besides `dets` and `labels` (see detection_onnxruntime_dynamic.py) the
# graph returns each detection's mask logits at the mask head's resolution,
# `masks` (batch, num_dets, 28, 28); they are pasted into the image outside
# the graph (export_postprocess_mask=False), as mmdeploy does for ONNX
# Runtime. See docs/deployment.md for which operators this needs.
_base_ = ['./detection_onnxruntime_dynamic.py']

onnx_config = dict(
    output_names=['dets', 'labels', 'masks'],
    dynamic_axes=dict(
        masks={0: 'batch', 1: 'num_dets', 2: 'height', 3: 'width'}))
codebase_config = dict(post_processing=dict(export_postprocess_mask=False))
