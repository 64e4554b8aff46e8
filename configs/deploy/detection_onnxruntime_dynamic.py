# mmdet detectors (RetinaNet, Faster R-CNN, ...) with a TransCNN backbone to
# ONNX Runtime, at any input size:
#
#   python tools/deployment/deploy.py \
#       configs/deploy/detection_onnxruntime_dynamic.py \
#       configs/retinanet_transcnn_base.py CHECKPOINT IMAGE
#
# The graph ends in boxes with scores, `dets` (batch, num_dets, 5: x1, y1,
# x2, y2, score) in the input image's pixels after the test pipeline's
# resize, and their class indices, `labels` (batch, num_dets).
_base_ = ['./_base_onnxruntime.py']

onnx_config = dict(
    output_names=['dets', 'labels'],
    dynamic_axes=dict(
        input={0: 'batch', 2: 'height', 3: 'width'},
        dets={0: 'batch', 1: 'num_dets'},
        labels={0: 'batch', 1: 'num_dets'}))
# Post-processing inside the graph. The detector's own test_cfg (score_thr,
# nms iou_threshold, max_per_img, nms_pre) takes precedence where it sets
# them, as in PyTorch; these are the values for what it leaves out.
codebase_config = dict(
    type='mmdet',
    task='ObjectDetection',
    model_type='end2end',
    post_processing=dict(
        score_threshold=0.05,
        confidence_threshold=0.005,
        iou_threshold=0.5,
        max_output_boxes_per_class=200,
        pre_top_k=5000,
        keep_top_k=100,
        background_label_id=-1))
