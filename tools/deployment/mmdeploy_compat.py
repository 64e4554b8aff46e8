"""What mmdeploy 1.3.1 needs on torch 2.6 to 2.14, for one tool process.

``tools/deployment/deploy.py`` and
``tools/analysis_tools/onnxruntime_benchmark.py`` call :func:`setup` at
start-up. It changes only their own process, through public calls:

* **checkpoints.** torch >= 2.6 loads with ``weights_only=True``; mmengine
  checkpoints hold a few objects beyond tensors (the message hub's
  ``HistoryBuffer``, numpy values). :func:`setup` adds exactly those to
  torch's allow-list (:func:`mmtranscnn.utils.allow_checkpoint_globals`);
  a file with any other global, e.g. one that would run a command, is
  still refused. mmengine's loaders stay its own.
* **the TorchScript exporter.** mmdeploy calls ``torch.onnx.export``
  without ``dynamo=``; from torch 2.9 on that means the dynamo exporter,
  which runs none of mmdeploy's rewriters. A rewrite of ``torch.onnx.export``
  (active inside mmdeploy's rewriter context only) passes ``dynamo=False``.
* **RoIAlign.** mmdeploy's symbolic for mmcv's RoIAlign (Mask R-CNN,
  Faster R-CNN) imports ``torch.onnx.symbolic_opset9._cast_Long``, which
  torch no longer has. For ONNX Runtime, :func:`roi_align_symbolic` writes
  the same ONNX ``RoiAlign`` with plain ``g.op`` calls.
* **mmseg's Upsample.** Semantic FPN's head doubles its maps with mmseg's
  ``Upsample``, which turns the output size into Python ints, so the traced
  graph resizes every input to the traced image's sizes. While exporting
  for ONNX Runtime, :func:`upsample_by_scale` resizes by the scale factor,
  which the graph keeps dynamic (the same sizes, ``floor(size * scale)``).
* **torch.fx's table.** mmdeploy's rewriter context imports the modules
  its rewrites name; one that registers functions with ``torch.fx.wrap``
  on import (torchvision does) grows torch's table of wrapped functions, a
  dict in today's torch, and mmdeploy's exit, written for a list, fails
  with ``KeyError: -1``. :func:`setup` imports torchvision before.

mmdeploy picks, for each rewritten function, a record registered for the
current backend over its default one (``RewriterRegistry.get_records``);
mmdeploy 1.3.1 registers RoIAlign's symbolic for the default backend only,
so the ``onnxruntime`` records here take its place for ONNX Runtime and
leave every other backend as mmdeploy has it.

mmdeploy's default rewrite of ``F.scaled_dot_product_attention`` (which
fails on boolean masks) does not reach H-MHSA: the module holds torch's
function inside a static method, where mmdeploy's replacement (of the
references that dicts and lists hold) does not look.
"""
import functools

import torch
import torch.nn.functional as F

EXPORT = 'torch.onnx.export'
ROI_ALIGN = 'mmcv.ops.roi_align.__self__'  # mmcv's RoIAlignFunction
UPSAMPLE = 'mmseg.models.utils.Upsample.forward'
ONNX_INT64 = 7  # onnx.TensorProto.INT64


def origin_func(path: str):
    """The function that mmdeploy's rewriter context replaced.

    Args:
        path: the name the rewrite is registered for.
    """
    from mmdeploy.core import FUNCTION_REWRITER
    return FUNCTION_REWRITER.get_context(path).origin_func


def torchscript_export(*args, **kwargs):
    """``torch.onnx.export`` with the TorchScript exporter unless the
    caller chose: only it runs mmdeploy's rewriters."""
    kwargs.setdefault('dynamo', False)
    return origin_func(EXPORT)(*args, **kwargs)


def upsample_by_scale(self, x):
    """mmseg's ``Upsample.forward``; while exporting, by scale factor.

    Outside an export (the PyTorch side of the deploy tool's check) mmseg's
    own code runs, so the check compares the graph with it.

    Args:
        self (Upsample): the module.
        x (Tensor): its input, (N, C, H, W).
    """
    if self.size or not torch.onnx.is_in_onnx_export():
        return origin_func(UPSAMPLE)(self, x)
    return F.interpolate(x, scale_factor=self.scale_factor, mode=self.mode,
                         align_corners=self.align_corners)


def roi_align_symbolic(g, input, rois, output_size, spatial_scale,
                       sampling_ratio, pool_mode, aligned):
    """mmcv's RoIAlign as ONNX ``RoiAlign``.

    Args:
        g: the graph being built.
        input: feature map (N, C, H, W).
        rois: (K, 5) boxes: batch index, x1, y1, x2, y2.
        output_size, spatial_scale, sampling_ratio, pool_mode, aligned:
            mmcv's RoIAlign settings.
    """
    from mmdeploy.core import SYMBOLIC_REWRITER
    from mmdeploy.utils import get_ir_config
    opset = get_ir_config(SYMBOLIC_REWRITER.get_context().cfg).get(
        'opset_version', 11)

    def columns(index):
        # A scalar index drops the axis: (K, ) for the batch index.
        return g.op('Gather', rois,
                    g.op('Constant', value_t=torch.tensor(index)), axis_i=1)

    batch_indices = g.op('Cast', columns(0), to_i=ONNX_INT64)
    boxes = columns([1, 2, 3, 4])
    attributes = dict(output_height_i=output_size[0],
                      output_width_i=output_size[1],
                      spatial_scale_f=spatial_scale,
                      sampling_ratio_i=sampling_ratio, mode_s=pool_mode)
    if opset >= 16:
        attributes['coordinate_transformation_mode_s'] = (
            'half_pixel' if aligned else 'output_half_pixel')
    elif aligned:
        # RoiAlign before opset 16 has no half-pixel offset: shift the boxes.
        boxes = g.op('Add', boxes, g.op(
            'Constant', value_t=torch.tensor([-0.5 / spatial_scale])))
    return g.op('RoiAlign', input, boxes, batch_indices, **attributes)


@functools.lru_cache(maxsize=None)  # once per process
def setup() -> None:
    """Everything of the module's notes, for the whole process: mmengine's
    checkpoint globals allowed, torchvision imported, the rewrites of this
    module registered with mmdeploy."""
    from mmdeploy.core import FUNCTION_REWRITER, SYMBOLIC_REWRITER

    from mmtranscnn.utils import allow_checkpoint_globals
    allow_checkpoint_globals()
    try:
        import torchvision  # noqa: F401  (see the module's notes)
    except ImportError:
        pass
    FUNCTION_REWRITER.register_rewriter(EXPORT)(torchscript_export)
    FUNCTION_REWRITER.register_rewriter(UPSAMPLE, backend='onnxruntime')(
        upsample_by_scale)
    SYMBOLIC_REWRITER.register_symbolic(ROI_ALIGN, backend='onnxruntime')(
        roi_align_symbolic)
