"""Export through mmdeploy to ONNX Runtime, and compare with PyTorch.

``tools/deployment/deploy.py`` is the command line for these functions;
docs/deployment.md describes the route.

mmdeploy 1.3.1 (its last release) needs four things that today's stack
no longer gives it, and a fifth for segmentors at any input size:

* **the TorchScript exporter.** mmdeploy calls ``torch.onnx.export``
  without ``dynamo=``, and from torch 2.9 on that means the dynamo
  exporter, which runs none of mmdeploy's rewriters (every model fails,
  mmdet's own RetinaNet-R50 too). :func:`torchscript_onnx_export` makes
  ``dynamo=False`` the default while it is active.
* **checkpoints torch >= 2.6 loads.** Checkpoints of the shipped configs
  load as they are (:mod:`mmtranscnn.engine.weights_only`); other mmengine
  checkpoints hold objects that ``torch.load(weights_only=True)`` refuses.
  :func:`safe_checkpoint_loading` reads them with the allow-list of
  :mod:`mmtranscnn.utils.checkpoint_safety` while it is active.
* **attention with a mask.** mmdeploy replaces
  ``F.scaled_dot_product_attention`` by its own version, written before
  torch could export the function; with a boolean mask (H-MHSA masks
  padded tokens) it stops with "Boolean value of Tensor with more than one
  value is ambiguous", and it reads ``scale`` as a divisor where torch
  multiplies. The TorchScript exporter has its own translation of the
  function from opset 14 on; :func:`torch_attention` sets
  mmdeploy's rewrite aside.
* **RoIAlign.** mmdeploy writes mmcv's RoIAlign (Mask R-CNN, Faster
  R-CNN) as ONNX ``RoiAlign`` with a helper that torch no longer has
  (``torch.onnx.symbolic_opset9._cast_Long``: "cannot import name");
  :func:`roi_align_for_onnxruntime` writes the same operator without it.
* **mmseg's Upsample.** Semantic FPN's head doubles its maps with mmseg's
  ``Upsample``, which turns the size into Python ints: the traced graph
  then resizes every input to the traced image's map sizes (6% error at
  128x179 after a trace at 128x128). :func:`mmseg_upsample_by_scale`
  resizes by the scale factor instead, which ONNX keeps dynamic (the same
  sizes, ``floor(size * scale)``, and the same sampling positions).

Importing this module changes nothing: :func:`export_to_onnx` and
:func:`compare_with_pytorch` apply all five for the duration of the call
and leave torch, mmengine and mmdeploy as they found them. Nothing here is
imported by ``import mmtranscnn``.

The comparison runs the exported graph in ONNX Runtime and the model in
PyTorch. Backbone and neck (``extract_feat``) run as PyTorch runs them,
outside any rewriting; the rest runs as the graph was traced from it: the
model patched by mmdeploy's rewriters, eagerly, inside mmdeploy's rewriter
context, so that the post-processing of the graph (e.g. the detector's NMS
with the deploy config's thresholds, which differs from mmdet's in which
boxes it keeps at the margins) is part of both. Each output is compared as
described in :func:`compare_outputs`.
"""
import contextlib
import functools
import inspect
import os.path as osp
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence

import numpy as np
import torch

#: The relative error :func:`compare_with_pytorch` accepts by default.
DEFAULT_RTOL = 1e-4

DETECTION_OUTPUTS = ('dets', 'labels')


@contextlib.contextmanager
def torchscript_onnx_export() -> Iterator[bool]:
    """While active, ``torch.onnx.export`` defaults to ``dynamo=False``.

    A call that passes ``dynamo`` keeps its choice. On a torch whose
    ``export`` has no ``dynamo`` argument (< 2.5), or defaults it to False
    already (< 2.9), nothing is changed.

    Yields:
        bool: whether the default was changed.
    """
    original = torch.onnx.export
    parameter = inspect.signature(original).parameters.get('dynamo')
    if parameter is None or parameter.default is False:
        yield False
        return

    @functools.wraps(original)
    def export(*args, **kwargs):
        kwargs.setdefault('dynamo', False)
        return original(*args, **kwargs)

    torch.onnx.export = export
    try:
        yield True
    finally:
        torch.onnx.export = original


@contextlib.contextmanager
def safe_checkpoint_loading() -> Iterator[None]:
    """While active, mmengine loads its checkpoints with the allow-list of
    :mod:`mmtranscnn.utils.checkpoint_safety`; afterwards its loaders are
    the ones it had before."""
    from mmengine.runner.checkpoint import CheckpointLoader

    from mmtranscnn.utils.checkpoint_safety import \
        enable_safe_checkpoint_loading
    # mmengine replaces the table by a sorted copy on every registration:
    # the table object itself is put back, with its entries.
    table = CheckpointLoader._schemes
    entries = list(table.items())
    enable_safe_checkpoint_loading()
    try:
        yield
    finally:
        table.clear()
        table.update(entries)
        CheckpointLoader._schemes = table


SDPA = 'torch.nn.functional.scaled_dot_product_attention'


@contextlib.contextmanager
def torch_attention() -> Iterator[None]:
    """While active, mmdeploy leaves ``F.scaled_dot_product_attention``
    alone: its default rewrite (for every backend) is set aside, and the
    TorchScript exporter writes torch's own translation (opset 14 on).

    Setting the rewrite aside, rather than registering one that calls
    torch's function, also keeps mmdeploy from replacing the function
    where a class holds it as an attribute (H-MHSA's ``attention``): the
    Python function it would put there binds as a method.
    """
    from mmdeploy.core import FUNCTION_REWRITER
    records = FUNCTION_REWRITER._registry._rewrite_records
    saved = records.get(SDPA)
    if saved is not None:
        records[SDPA] = [r for r in saved if r['_checkers']]
    try:
        yield
    finally:
        if saved is not None:
            records[SDPA] = saved


@contextlib.contextmanager
def _scoped_rewriter(rewriter, name: str, backend: str,
                     function) -> Iterator[None]:
    """``function`` registered with mmdeploy's ``rewriter`` (FUNCTION_ or
    SYMBOLIC_REWRITER) for ``name`` and ``backend`` while active; mmdeploy
    prefers a backend's own record to its default one."""
    register = getattr(rewriter, 'register_rewriter', None) or \
        rewriter.register_symbolic
    records = rewriter._registry._rewrite_records
    existed = name in records
    register(name, backend=backend)(function)
    ours = records[name][-1]
    try:
        yield
    finally:
        records[name] = [r for r in records[name] if r is not ours]
        if not existed and not records[name]:
            del records[name]


def _roi_align_symbolic(g, input, rois, output_size, spatial_scale,
                        sampling_ratio, pool_mode, aligned):
    """mmcv's RoIAlign as ONNX ``RoiAlign``, as mmdeploy writes it for ONNX
    Runtime, with plain ``g.op`` calls. ``rois`` is (K, 5): batch index,
    x1, y1, x2, y2."""
    from mmdeploy.core import SYMBOLIC_REWRITER
    from mmdeploy.utils import get_ir_config
    opset = get_ir_config(SYMBOLIC_REWRITER.get_context().cfg).get(
        'opset_version', 11)

    def columns(*index):
        return g.op('Gather', rois,
                    g.op('Constant', value_t=torch.tensor(index)), axis_i=1)

    first = columns(0)
    squeezed = (g.op('Squeeze', first, axes_i=[1]) if opset < 13 else
                g.op('Squeeze', first,
                     g.op('Constant', value_t=torch.tensor([1]))))
    batch_indices = g.op('Cast', squeezed, to_i=7)  # INT64
    boxes = columns(1, 2, 3, 4)
    attributes = dict(output_height_i=output_size[0],
                      output_width_i=output_size[1],
                      spatial_scale_f=spatial_scale,
                      sampling_ratio_i=sampling_ratio, mode_s=pool_mode)
    if opset >= 16:
        attributes['coordinate_transformation_mode_s'] = (
            'half_pixel' if aligned else 'output_half_pixel')
    elif aligned:
        # Before opset 16 ONNX's RoiAlign has no pixel offset: shift.
        boxes = g.op('Add', boxes, g.op(
            'Constant',
            value_t=torch.tensor([-0.5 / spatial_scale], dtype=torch.float)))
    return g.op('RoiAlign', input, boxes, batch_indices, **attributes)


@contextlib.contextmanager
def roi_align_for_onnxruntime() -> Iterator[None]:
    """While active, mmcv's RoIAlign is written by
    :func:`_roi_align_symbolic` when the backend is ONNX Runtime."""
    from mmdeploy.core import SYMBOLIC_REWRITER
    with _scoped_rewriter(SYMBOLIC_REWRITER, 'mmcv.ops.roi_align.__self__',
                          'onnxruntime', _roi_align_symbolic):
        yield


def _upsample_by_scale(self, x):
    """mmseg's ``Upsample.forward`` with the scale factor passed on to
    ``F.interpolate`` rather than turned into a size of Python ints."""
    from mmdeploy.core import FUNCTION_REWRITER
    if self.size:
        return FUNCTION_REWRITER.get_context().origin_func(self, x)
    return torch.nn.functional.interpolate(
        x, scale_factor=self.scale_factor, mode=self.mode,
        align_corners=self.align_corners)


@contextlib.contextmanager
def mmseg_upsample_by_scale() -> Iterator[None]:
    """While active, mmseg's ``Upsample`` resizes by its scale factor when
    the backend is ONNX Runtime (see the module's notes)."""
    from mmdeploy.core import FUNCTION_REWRITER
    with _scoped_rewriter(FUNCTION_REWRITER,
                          'mmseg.models.utils.Upsample.forward',
                          'onnxruntime', _upsample_by_scale):
        yield


def import_rewrite_targets() -> None:
    """Import every module mmdeploy's function rewriters name, now.

    mmdeploy's rewriter context imports them when it is entered; a module
    that registers a function with ``torch.fx.wrap`` on import (torchvision
    does) then grows torch's table of wrapped functions, which is a dict
    in today's torch, and mmdeploy's exit, written for a list, fails with
    ``KeyError: -1``. Imported before, they register nothing new inside.
    """
    from mmdeploy.core import FUNCTION_REWRITER
    from mmdeploy.core.rewriters.rewriter_utils import import_function
    for path in list(FUNCTION_REWRITER._registry._rewrite_records):
        try:
            import_function(path)
        except Exception:  # a codebase that is not installed: never used
            pass


@contextlib.contextmanager
def export_environment() -> Iterator[None]:
    """All of the above: what mmdeploy 1.3.1 needs on today's stack."""
    with torchscript_onnx_export(), safe_checkpoint_loading(), \
            torch_attention(), roi_align_for_onnxruntime(), \
            mmseg_upsample_by_scale():
        import_rewrite_targets()  # ours included
        yield


def _load_configs(deploy_cfg, model_cfg):
    """The two configs (paths or Configs), after checking that mmdeploy,
    onnx and onnxruntime are installed in their ranges."""
    from mmtranscnn.utils.versions import check_deploy_versions
    check_deploy_versions()
    from mmdeploy.utils import load_config
    return load_config(deploy_cfg, model_cfg)


def export_to_onnx(deploy_cfg, model_cfg, checkpoint: Optional[str],
                   image, work_dir: str, device: str = 'cpu') -> str:
    """Export a model with mmdeploy's ``torch2onnx``.

    Args:
        deploy_cfg (str | Config): an mmdeploy deploy config (e.g.
            ``configs/deploy/detection_onnxruntime_dynamic.py``).
        model_cfg (str | Config): the model's config.
        checkpoint (str, optional): its weights; None keeps the model's
            initialisation.
        image (str | np.ndarray): the image traced through the model (the
            graph has dynamic height and width when the deploy config says
            so; this image only fixes what the trace runs through).
        work_dir (str): where the ONNX file is written.
        device (str): the device the model runs on. Default: 'cpu'.

    Returns:
        str: the ONNX file (``onnx_config.save_file`` in ``work_dir``).
    """
    from mmdeploy.apis import torch2onnx
    from mmdeploy.utils import get_onnx_config

    deploy_cfg, model_cfg = _load_configs(deploy_cfg, model_cfg)
    save_file = get_onnx_config(deploy_cfg)['save_file']
    with export_environment():
        torch2onnx(image, work_dir, save_file, deploy_cfg, model_cfg,
                   checkpoint, device)
    return osp.join(work_dir, save_file)


# -- comparing --------------------------------------------------------------
class OutputError(NamedTuple):
    """How far one output of the backend is from PyTorch's.

    Attributes:
        name: the output's name in the graph.
        rel_error: the largest absolute difference divided by the largest
            absolute value of PyTorch's output (0 for equal outputs); for
            detections, the largest of the boxes', scores' and masks'.
        mismatches: integer values (class labels) that differ, and
            detections of either side without a counterpart.
        note: what was compared, in words.
    """
    name: str
    rel_error: float
    mismatches: int
    note: str

    def passed(self, rtol: float) -> bool:
        """Whether the output agrees within ``rtol`` and nothing is
        missing or mislabelled."""
        return self.mismatches == 0 and self.rel_error <= rtol


class Comparison(NamedTuple):
    """The backend against PyTorch on one image.

    Attributes:
        image: the image's name (its path, or ``array<i>``).
        input_shape: the model input's (height, width) after the test
            pipeline and the data preprocessor.
        outputs: one :class:`OutputError` per output or output group.
        rtol: the relative error accepted.
    """
    image: str
    input_shape: tuple
    outputs: List[OutputError]
    rtol: float

    @property
    def passed(self) -> bool:
        return all(out.passed(self.rtol) for out in self.outputs)


def _relative(diff: float, scale: float) -> float:
    return diff / scale if scale > 0 else diff


def _compare_arrays(name: str, ref: np.ndarray,
                    out: np.ndarray) -> OutputError:
    """Elementwise: integer outputs must be equal, float outputs are
    compared relative to the largest magnitude of ``ref``."""
    if ref.shape != out.shape:
        return OutputError(name, float('inf'), max(ref.size, out.size),
                           f'shape {out.shape} against {ref.shape}')
    if ref.dtype.kind in 'biu':
        wrong = int((ref != out).sum())
        return OutputError(name, 0., wrong,
                           f'{wrong} of {ref.size} values differ')
    ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
    diff = float(np.abs(ref64 - out64).max()) if ref.size else 0.
    scale = float(np.abs(ref64).max()) if ref.size else 0.
    return OutputError(name, _relative(diff, scale), 0,
                       f'max |diff| {diff:.3g} of max |value| {scale:.3g}')


def _match_detections(ref_dets: np.ndarray, ref_labels: np.ndarray,
                      out_dets: np.ndarray, out_labels: np.ndarray,
                      tol_score: float) -> List[tuple]:
    """Pairs (i, j) of a reference and a backend detection: the same
    label, the closest box among those whose scores agree within
    ``tol_score``, in order of decreasing reference score. Detections whose
    scores are equal within the tolerance may come in either order, so a
    pairing by position alone would be wrong."""
    pairs = []
    free = list(range(len(out_dets)))
    for i in np.argsort(-ref_dets[:, 4], kind='stable'):
        best, best_diff = None, None
        for j in free:
            if out_labels[j] != ref_labels[i] or \
                    abs(out_dets[j, 4] - ref_dets[i, 4]) > tol_score:
                continue
            diff = float(np.abs(out_dets[j, :4] - ref_dets[i, :4]).max())
            if best is None or diff < best_diff:
                best, best_diff = j, diff
        if best is not None:
            free.remove(best)
            pairs.append((int(i), best))
    return pairs


def compare_detections(ref: Dict[str, np.ndarray],
                       out: Dict[str, np.ndarray],
                       rtol: float) -> OutputError:
    """``dets`` (B, N, 5), ``labels`` (B, N) and, if present, ``masks``
    (B, N, h, w) of the backend against PyTorch's.

    Each PyTorch detection is paired with a backend detection of the same
    label whose score agrees within ``rtol`` (relative to the highest
    score), the one with the closest box. Boxes are then compared
    relative to the largest box coordinate, scores relative to the highest
    score, masks relative to the largest mask value. A detection of either
    side without a counterpart counts as a mismatch.
    """
    worst, missing, count = 0., 0, 0
    for b in range(ref['dets'].shape[0]):
        rd, rl = ref['dets'][b].astype(np.float64), ref['labels'][b]
        od, ol = out['dets'][b].astype(np.float64), out['labels'][b]
        score_scale = float(np.abs(rd[:, 4]).max()) if len(rd) else 1.
        box_scale = float(np.abs(rd[:, :4]).max()) if len(rd) else 1.
        pairs = _match_detections(rd, rl, od, ol, rtol * score_scale)
        missing += len(rd) + len(od) - 2 * len(pairs)
        count += len(rd)
        for i, j in pairs:
            worst = max(
                worst,
                _relative(float(np.abs(rd[i, :4] - od[j, :4]).max()),
                          box_scale),
                _relative(abs(rd[i, 4] - od[j, 4]), score_scale))
        if 'masks' in ref and pairs:
            rm = ref['masks'][b][[i for i, _ in pairs]].astype(np.float64)
            om = out['masks'][b][[j for _, j in pairs]].astype(np.float64)
            worst = max(worst, _relative(float(np.abs(rm - om).max()),
                                         float(np.abs(rm).max())))
    names = '+'.join(k for k in ('dets', 'labels', 'masks') if k in ref)
    return OutputError(names, worst, missing,
                       f'{count} detections, {missing} without a '
                       'counterpart of the same label and score')


def output_groups(names: Sequence[str]) -> List[str]:
    """The names :func:`compare_outputs` reports for outputs ``names``:
    one for the detections (``dets+labels``, ``+masks`` with masks), one
    for each other output."""
    if not set(DETECTION_OUTPUTS) <= set(names):
        return list(names)
    grouped = DETECTION_OUTPUTS + ('masks', )
    return (['+'.join(n for n in grouped if n in names)] +
            [n for n in names if n not in grouped])


def compare_outputs(ref: Dict[str, np.ndarray], out: Dict[str, np.ndarray],
                    rtol: float = DEFAULT_RTOL) -> List[OutputError]:
    """Every output of the backend against PyTorch's.

    Detections (``dets`` and ``labels``, with ``masks`` if present) are
    compared by :func:`compare_detections`; any other output elementwise:
    float outputs by their largest difference relative to PyTorch's
    largest magnitude, integer outputs (a segmentor's classes) must be
    equal.

    Args:
        ref: PyTorch's outputs by name.
        out: the backend's outputs by name.
        rtol: the relative error accepted; detections are paired by scores
            that agree within it. Default: 1e-4.

    Returns:
        list[OutputError]: one entry per output (one for the detections).
    """
    if set(ref) != set(out):
        raise KeyError(f'the backend returned {sorted(out)}, PyTorch '
                       f'{sorted(ref)}')
    results = []
    grouped = set(DETECTION_OUTPUTS) <= set(ref)
    if grouped:
        results.append(compare_detections(ref, out, rtol))
    for name in ref:
        if grouped and name in DETECTION_OUTPUTS + ('masks', ):
            continue
        results.append(_compare_arrays(name, ref[name], out[name]))
    return results


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def compare_with_pytorch(deploy_cfg, model_cfg, checkpoint: Optional[str],
                         onnx_file: str, images: Sequence,
                         rtol: float = DEFAULT_RTOL,
                         device: str = 'cpu') -> List[Comparison]:
    """Run the ONNX file in ONNX Runtime and the model in PyTorch on each
    image, and compare their outputs (:func:`compare_outputs`).

    Both get the same input: the image through the model config's test
    pipeline and data preprocessor, as mmdeploy prepares it. PyTorch runs
    the model patched by mmdeploy's rewriters inside their context, the
    function the graph was traced from.

    Args:
        deploy_cfg (str | Config): the deploy config of the export.
        model_cfg (str | Config): the model's config.
        checkpoint (str, optional): the weights that were exported.
        onnx_file (str): the exported graph.
        images (Sequence[str | np.ndarray]): the images, e.g. of sizes
            other than the traced one.
        rtol (float): the relative error accepted. Default: 1e-4.
        device (str): where PyTorch runs. Default: 'cpu'.

    Returns:
        list[Comparison]: one per image.
    """
    from mmdeploy.apis.utils import build_task_processor
    from mmdeploy.backend.onnxruntime import ORTWrapper
    from mmdeploy.core import RewriterContext, patch_model
    from mmdeploy.utils import (IR, Backend, get_backend, get_input_shape,
                                get_onnx_config)

    deploy_cfg, model_cfg = _load_configs(deploy_cfg, model_cfg)
    backend = get_backend(deploy_cfg)
    if backend != Backend.ONNXRUNTIME:
        raise ValueError(f'backend_config.type must be \'onnxruntime\' to '
                         f'compare, got {backend.value!r}')
    onnx_cfg = get_onnx_config(deploy_cfg)
    input_name = onnx_cfg['input_names'][0]
    output_names = list(onnx_cfg['output_names'])
    task = build_task_processor(model_cfg, deploy_cfg, device)
    with safe_checkpoint_loading():
        # patch_model changes the model it patches: one model for each.
        model = task.build_pytorch_model(checkpoint).eval()
        patched = patch_model(task.build_pytorch_model(checkpoint).eval(),
                              cfg=deploy_cfg, backend=backend.value,
                              ir=IR.ONNX)
    # PyTorch's inputs and backbone + neck features of every image first:
    # mmdeploy's rewriter context is entered once (entering it takes about
    # a second).
    prepared = []
    for index, image in enumerate(images):
        data, inputs = task.create_input(
            image, get_input_shape(deploy_cfg),
            data_preprocessor=getattr(model, 'data_preprocessor', None))
        if isinstance(inputs, (list, tuple)):
            (inputs, ) = inputs
        with torch.no_grad():
            features = model.extract_feat(inputs)
        name = image if isinstance(image, str) else f'array{index}'
        prepared.append((name, data, inputs, features))
    references = []
    import_rewrite_targets()
    # (mmseg's Upsample runs as written here: the graph's version of it is
    # compared with the original.)
    with torch_attention(), RewriterContext(
            cfg=deploy_cfg, backend=backend.value, ir=IR.ONNX,
            opset=onnx_cfg.get('opset_version', 11)), torch.no_grad():
        for name, data, inputs, features in prepared:
            # The patched model's extract_feat gives PyTorch's features.
            patched.extract_feat = lambda *args, _f=features, **kwargs: _f
            try:
                ref = patched(inputs, data_samples=data['data_samples'],
                              mode='predict')
            finally:
                del patched.extract_feat
            if isinstance(ref, torch.Tensor):
                ref = (ref, )
            references.append(
                {n: _as_numpy(v) for n, v in zip(output_names, ref)})
    session = ORTWrapper(onnx_file, 'cpu', output_names)
    results = []
    for (name, _, inputs, _), ref in zip(prepared, references):
        try:
            out = session({input_name: inputs.cpu()})
        except Exception as error:  # ONNX Runtime's own error types
            # The graph does not run at this size: a failure of this image,
            # the other images are still compared.
            first = str(error).strip().splitlines()[0][:300]
            errors = [OutputError(group, float('inf'), 1,
                                  f'ONNX Runtime failed: {first}')
                      for group in output_groups(output_names)]
        else:
            out = {n: _as_numpy(out[n]) for n in output_names}
            errors = compare_outputs(ref, out, rtol)
        results.append(Comparison(name, tuple(inputs.shape[2:]), errors,
                                  rtol))
    return results
