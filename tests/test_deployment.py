"""Deployment: mmdeploy to ONNX Runtime, and checkpoints any tool loads.

- tools/deployment/deploy.py exports the tiny RetinaNet, Mask R-CNN and
  Semantic FPN segmentor (randomly initialised) through mmdeploy with the
  deploy configs of configs/deploy/, then runs the graphs in ONNX Runtime
  and the models in PyTorch on the traced image and on images of other
  sizes: the detector pads them to a multiple of 32, the segmentor takes
  sizes whose feature maps need padding inside H-MHSA; every output agrees
  within a relative error of 1e-4.
- The deploy tool refuses a checkpoint whose pickle would run a command.
- What the tool sets up for mmdeploy (tools/deployment/mmdeploy_compat.py)
  is registered through mmdeploy's public calls, for ONNX Runtime only,
  and ``import mmtranscnn`` imports nothing of mmdeploy, onnx or
  onnxruntime.
- A checkpoint written by a shipped config (a tiny RetinaNet trained for
  two iterations by mmdet's own tools/train.py) loads with nothing extra
  on the command line and no import of ours in: torch.load with its
  defaults, mmdet's own tools/test.py, DetInferencer and mmdeploy; mmdet's
  tools/train.py --resume continues it with its logged history.
- The tool's comparison (tools/deployment/compare.py) fails where the
  graph differs from PyTorch.

The runs are independent processes, side by side (tests/side_by_side.py).
"""
import functools
import importlib.util
import os
import os.path as osp
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from side_by_side import side_by_side
from test_detection import (TINY_MASK_RCNN, TINY_RETINANET, read_scalars,
                            read_test_metrics, run, shapes, shapes_data,
                            tool_env, write_derived_config)
from tool_modules import load_tool

assert shapes_data  # a fixture of this module too (the shapes data)

TESTS_DIR = osp.dirname(osp.abspath(__file__))
REPO_DIR = osp.dirname(TESTS_DIR)
DEPLOY_TOOLS = osp.join(REPO_DIR, 'tools', 'deployment')
DEPLOY = osp.join(DEPLOY_TOOLS, 'deploy.py')
DEPLOY_CFG = osp.join(REPO_DIR, 'configs', 'deploy')
DETECTION_DEPLOY = osp.join(DEPLOY_CFG, 'detection_onnxruntime_dynamic.py')
SEGMENTATION_DEPLOY = osp.join(DEPLOY_CFG,
                               'segmentation_onnxruntime_dynamic.py')
INSTANCE_DEPLOY = osp.join(DEPLOY_CFG, 'instance-seg_onnxruntime_dynamic.py')
TINY_FPN = osp.join(REPO_DIR, 'configs', 'tiny',
                    'fpn_transcnn-small_1xb2-40it_tiny-ade-128x128.py')
MMDET_TOOLS = osp.join(
    importlib.util.find_spec('mmdet').submodule_search_locations[0], '.mim',
    'tools')
RTOL = 1e-4

# RetinaNet as the tiny config builds it (grids 8/4/2). Its test pipeline
# resizes to fit 160x160 and pads to a multiple of 32: (120, 160) becomes
# 128x160, (200, 100) 160x96, (150, 97) 160x128.
RETINANET_TRACED = (160, 160)
RETINANET_OTHERS = ((120, 160), (200, 100), (150, 97))
# Mask R-CNN (the same backbone and resize): RoIAlign and NMS as standard
# ONNX operators, masks of the paired detections compared too.
MASK_RCNN_OTHERS = ((120, 160), )

# Semantic FPN at any size: the test pipeline resizes (shorter side 128)
# without rounding to a multiple of 32, as a caller with other inputs
# would. The traced 128x128 needs no padding (stage maps 32/16/8 with grids
# 8/4/2); 128x179, 179x128 and 128x150 need it at every stage.
FPN_CONFIG = f"""
_base_ = {TINY_FPN!r}
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='PackSegInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
"""
FPN_TRACED = (128, 128)
FPN_OTHERS = ((100, 140), (140, 100), (64, 75))

REPORT_LINE = re.compile(
    r'^(ok|FAILED)\s+(\S+) input (\d+)x(\d+) (\S+): relative error (\S+) '
    r'\(at most \S+\), (\d+) mismatches; (.*)$', re.M)


def write_image(path, size, seed):
    """A shapes scene of ``size`` (height, width) as a PNG."""
    image, _ = shapes.render_scene(np.random.default_rng(seed),
                                   (size[1], size[0]), 3)
    Image.fromarray(image).save(path)
    return str(path)


def random_checkpoint(config, path):
    """The model of ``config``, randomly initialised, saved to ``path``.

    The classifiers get weights of std 0.3 instead of their 0.01: with
    those, RetinaNet's scores all lie within 1e-6 of 0.0103 (below the 0.05
    threshold: nothing to compare) and Mask R-CNN's within 1e-3 of each
    other (ties, whose order NMS may settle either way).
    """
    from mmtranscnn.engine import setup_codebase
    cfg = Config.fromfile(config)
    setup_codebase(cfg)
    from mmengine.registry import MODELS
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    for name, module in model.named_modules():
        if name.endswith(('retina_cls', 'fc_cls')):
            torch.nn.init.normal_(module.weight, std=0.3)
            torch.nn.init.normal_(module.bias, mean=-2., std=.5)
    torch.save({'state_dict': model.state_dict()}, path)
    return str(path)


class RunsACommand:
    """Unpickled, runs ``touch <marker>`` (``os.system``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


def malicious_checkpoint(path, marker):
    """A checkpoint whose pickle runs a command when it is loaded."""
    torch.save({'state_dict': {}, 'meta': RunsACommand(marker)}, path)
    return str(path)


def deploy_run(deploy_cfg, config, checkpoint, traced, others, work_dir,
               extra=()):
    """tools/deployment/deploy.py; returns (exit code, output)."""
    cmd = [sys.executable, DEPLOY, deploy_cfg, config, checkpoint, traced,
           '--work-dir', str(work_dir), *extra]
    if others:
        cmd += ['--test-img', *others]
    proc = subprocess.run(cmd, cwd=str(work_dir), env=tool_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600)
    return proc.returncode, proc.stdout


# A fresh interpreter that imports nothing of ours itself and passes
# nothing extra: torch's default loader, DetInferencer and mmdeploy read
# the trained checkpoint (the config's custom_imports import mmtranscnn,
# as in any user's process), and torch's allow-list stays torch's own.
LOAD_ANYWHERE = """
import sys
import torch
checkpoint, config, image, deploy_cfg = sys.argv[1:5]
saved = torch.load(checkpoint, map_location='cpu')['state_dict']
print('torch.load: ok')

def same_weights(model):
    state = model.state_dict()
    return all(torch.equal(state[k], v) for k, v in saved.items()
               if not k.startswith('data_preprocessor'))

from mmdet.apis import DetInferencer
inferencer = DetInferencer(model=config, weights=checkpoint, device='cpu',
                           show_progress=False)
result = inferencer(image, return_datasamples=True, no_save_vis=True,
                    no_save_pred=True)
print('DetInferencer:', len(result['predictions'][0].pred_instances),
      'detections, same weights:', same_weights(inferencer.model))

from mmdeploy.apis.utils import build_task_processor
from mmdeploy.utils import load_config
deploy, model_cfg = load_config(deploy_cfg, config)
model = build_task_processor(model_cfg, deploy, 'cpu').build_pytorch_model(
    checkpoint)
print('mmdeploy: same weights:', same_weights(model))

from mmengine.logging import HistoryBuffer
print('HistoryBuffer allowed:',
      HistoryBuffer in torch.serialization.get_safe_globals())
"""


@pytest.fixture(scope='module')
def runs(shapes_data, module_tmp):
    """Every run of this module; name -> finished future (``.result()``
    gives the output or raises what the run raised)."""
    d = {name: module_tmp(name) for name in
         ('train', 'resume', 'deploy_retinanet', 'deploy_mask_rcnn',
          'deploy_fpn', 'deploy_malicious')}
    # A shipped config's checkpoint: two iterations of the tiny RetinaNet
    # on the shapes data (test_detection.py's derived config) by mmdet's
    # own tools/train.py, one epoch, then resumed for a second into another
    # directory (the runs that read the first epoch's file go on meanwhile).
    trained = write_derived_config(d['train'], TINY_RETINANET, shapes_data,
                                   epochs=1)
    work = d['train'] / 'work'
    checkpoint = str(work / 'epoch_1.pth')
    scene = write_image(d['train'] / 'scene.png', (64, 64), 5)

    det_config = TINY_RETINANET
    mask_images = [write_image(d['deploy_mask_rcnn'] / f'{h}x{w}.png',
                               (h, w), i)
                   for i, (h, w) in enumerate((RETINANET_TRACED, ) +
                                              MASK_RCNN_OTHERS)]
    det_images = [write_image(d['deploy_retinanet'] / f'{h}x{w}.png',
                              (h, w), i)
                  for i, (h, w) in enumerate((RETINANET_TRACED, ) +
                                             RETINANET_OTHERS)]
    fpn_config = d['deploy_fpn'] / 'fpn.py'
    fpn_config.write_text(FPN_CONFIG)
    fpn_images = [write_image(d['deploy_fpn'] / f'{h}x{w}.png', (h, w), i)
                  for i, (h, w) in enumerate((FPN_TRACED, ) + FPN_OTHERS)]

    def deploy(name, deploy_cfg, config, images, extra=()):
        ckpt = random_checkpoint(str(config), d[name] / 'random.pth')
        return deploy_run(deploy_cfg, str(config), ckpt, images[0],
                          images[1:], d[name], extra)

    malicious = malicious_checkpoint(d['deploy_malicious'] / 'evil.pth',
                                     d['deploy_malicious'] / 'ran')

    python = [sys.executable]
    calls = {
        'train': functools.partial(run, python + [
            osp.join(MMDET_TOOLS, 'train.py'), trained, '--work-dir',
            str(work)], cwd=d['train']),
        'mmdet_test': functools.partial(run, python + [
            osp.join(MMDET_TOOLS, 'test.py'), trained, checkpoint,
            '--work-dir', str(d['train'] / 'test')], cwd=d['train']),
        'load_anywhere': functools.partial(run, python + [
            '-c', textwrap.dedent(LOAD_ANYWHERE), checkpoint, trained,
            scene, DETECTION_DEPLOY], cwd=d['train']),
        'resume': functools.partial(run, python + [
            osp.join(MMDET_TOOLS, 'train.py'), trained, '--work-dir',
            str(d['resume']), '--resume', checkpoint, '--cfg-options',
            'train_cfg.max_epochs=2', 'train_cfg.val_interval=2'],
            cwd=d['train']),
        'deploy_retinanet': functools.partial(
            deploy, 'deploy_retinanet', DETECTION_DEPLOY, det_config,
            det_images),
        'deploy_mask_rcnn': functools.partial(
            deploy, 'deploy_mask_rcnn', INSTANCE_DEPLOY, TINY_MASK_RCNN,
            mask_images),
        'deploy_fpn': functools.partial(
            deploy, 'deploy_fpn', SEGMENTATION_DEPLOY, fpn_config,
            fpn_images,
            ('--deploy-options', 'codebase_config.with_argmax=False')),
        'deploy_malicious': functools.partial(
            deploy_run, DETECTION_DEPLOY, det_config, malicious,
            det_images[0], [], d['deploy_malicious'], ('--skip-check', )),
    }
    after = dict(mmdet_test='train', load_anywhere='train', resume='train')
    return dict(dirs=d, work=work, checkpoint=checkpoint,
                futures=side_by_side(calls, after))


def report(output):
    """{(image file name, output name): (ok, rel error, mismatches,
    (height, width), note)} from the tool's report lines."""
    found = {}
    for ok, image, h, w, name, err, wrong, note in REPORT_LINE.findall(
            output):
        found[(osp.basename(image), name)] = (
            ok == 'ok', float(err), int(wrong), (int(h), int(w)), note)
    return found


def deploy_result(runs, name):
    code, output = runs['futures'][name].result()
    assert 'exported: ' in output, output[-5000:]
    assert osp.isfile(runs['dirs'][name] / 'end2end.onnx')
    return code, output, report(output)


def assert_agree(lines, size, outputs):
    """Each output on the image of ``size`` agrees within RTOL."""
    name = f'{size[0]}x{size[1]}.png'
    for output in outputs:
        ok, err, wrong, shape, _ = lines[(name, output)]
        assert ok and err <= RTOL and wrong == 0, (name, output, err,
                                                   wrong, shape)
    return shape


# -- RetinaNet ----------------------------------------------------------------
def test_retinanet_onnx_equals_pytorch_at_the_traced_size(runs):
    code, output, lines = deploy_result(runs, 'deploy_retinanet')
    # 160x160 after the detector's resize and padding.
    assert assert_agree(lines, RETINANET_TRACED, ['dets+labels']) == \
        (160, 160)
    note = lines[('160x160.png', 'dets+labels')][-1]
    count = int(re.match(r'(\d+) detections', note).group(1))
    assert count > 10, note  # something to compare


def test_retinanet_onnx_equals_pytorch_at_the_other_padded_sizes(runs):
    code, output, lines = deploy_result(runs, 'deploy_retinanet')
    shapes_seen = {assert_agree(lines, size, ['dets+labels'])
                   for size in RETINANET_OTHERS}
    assert shapes_seen == {(128, 160), (160, 96), (160, 128)}
    assert code == 0 and 'ONNX Runtime agrees with PyTorch on 4 image(s)' \
        in output, output[-3000:]


# -- Mask R-CNN ---------------------------------------------------------------
def test_mask_rcnn_onnx_equals_pytorch(runs):
    code, output, lines = deploy_result(runs, 'deploy_mask_rcnn')
    shapes_seen = {assert_agree(lines, size, ['dets+labels+masks'])
                   for size in (RETINANET_TRACED, ) + MASK_RCNN_OTHERS}
    assert shapes_seen == {(160, 160), (128, 160)}
    note = lines[('160x160.png', 'dets+labels+masks')][-1]
    assert int(re.match(r'(\d+) detections', note).group(1)) > 10, note
    assert code == 0, output[-3000:]


# -- Semantic FPN -------------------------------------------------------------
def test_fpn_onnx_equals_pytorch_at_the_traced_size(runs):
    code, output, lines = deploy_result(runs, 'deploy_fpn')
    assert assert_agree(lines, FPN_TRACED, ['output']) == (128, 128)


def test_fpn_onnx_equals_pytorch_at_sizes_that_need_padding(runs):
    code, output, lines = deploy_result(runs, 'deploy_fpn')
    shapes_seen = {assert_agree(lines, size, ['output'])
                   for size in FPN_OTHERS}
    assert shapes_seen == {(128, 179), (179, 128), (128, 150)}
    assert code == 0, output[-3000:]


# -- a shipped config's checkpoint, anywhere ----------------------------------
def test_checkpoint_loads_in_mmdets_own_test_tool(runs):
    runs['futures']['train'].result()
    runs['futures']['mmdet_test'].result()
    metrics = read_test_metrics(runs['dirs']['train'] / 'test')
    assert 0 <= metrics['coco/bbox_mAP'] <= 1


def test_checkpoint_loads_with_torch_defaults_detinferencer_and_mmdeploy(
        runs):
    out = runs['futures']['load_anywhere'].result()
    assert 'torch.load: ok' in out
    assert re.search(r'DetInferencer: \d+ detections, same weights: True',
                     out), out[-3000:]
    assert 'mmdeploy: same weights: True' in out, out[-3000:]
    # Nobody added mmengine's globals to torch's allow-list: the file
    # needs none.
    assert 'HistoryBuffer allowed: False' in out, out[-3000:]


def test_resume_continues_the_run_with_its_history(runs):
    from mmtranscnn.engine.weights_only import from_weights_only
    out = runs['futures']['resume'].result()
    assert 'resumed epoch: 1, iter: 2' in out, out[-3000:]
    resumed = runs['dirs']['resume']
    iters = [s['iter'] for s in read_scalars(resumed) if 'loss' in s]
    assert iters == [3, 4]
    # The message hub came back: the loss history of the first run and
    # of the resumed one are both in the new checkpoint.
    checkpoint = torch.load(resumed / 'epoch_2.pth', map_location='cpu',
                            weights_only=True)
    hub = from_weights_only(checkpoint['message_hub'])
    assert hub['log_scalars']['train/loss'].data[0].shape == (4, )


def test_malicious_checkpoint_is_refused(runs):
    code, output = runs['futures']['deploy_malicious'].result()
    assert code != 0 and 'exported: ' not in output, output[-3000:]
    assert 'Weights only load failed' in output, output[-3000:]
    assert not (runs['dirs']['deploy_malicious'] / 'ran').exists()


# -- the check itself ---------------------------------------------------------
@pytest.fixture(scope='module')
def compare():
    """tools/deployment/compare.py (it imports numpy only)."""
    return load_tool('tools/deployment/compare.py', '_deploy_compare')


def test_comparison_fails_where_outputs_differ(compare):
    ref = dict(output=np.linspace(-2, 2, 12, dtype=np.float32))
    near = dict(output=ref['output'] * (1 + 5e-5))
    far = dict(output=ref['output'] + np.float32(1e-3))
    (good, ) = compare.compare_outputs(ref, near, RTOL)
    (bad, ) = compare.compare_outputs(ref, far, RTOL)
    assert good.passed(RTOL) and not bad.passed(RTOL)
    assert bad.rel_error == pytest.approx(1e-3 / 2, rel=1e-3)
    labels = dict(output=np.array([[1, 2, 3]]))
    (wrong, ) = compare.compare_outputs(
        labels, dict(output=np.array([[1, 2, 4]])), RTOL)
    assert wrong.mismatches == 1 and not wrong.passed(RTOL)


def detections(rows, labels):
    return dict(dets=np.array([rows], np.float32),
                labels=np.array([labels], np.int64))


def test_detections_are_paired_by_label_score_and_box(compare):
    ref = detections([[0, 0, 10, 10, .9], [5, 5, 20, 20, .9],
                      [1, 1, 4, 4, .3]], [0, 1, 2])
    # The same detections, two equal scores in the other order.
    swapped = detections([[5, 5, 20, 20, .9], [0, 0, 10, 10, .9],
                          [1, 1, 4, 4, .3]], [1, 0, 2])
    (same, ) = compare.compare_outputs(ref, swapped, RTOL)
    assert same.passed(RTOL) and same.rel_error == 0
    # A box moved by 0.01 px (of 20), a label changed, one missing.
    moved = detections([[5, 5, 20.01, 20, .9], [0, 0, 10, 10, .9],
                        [1, 1, 4, 4, .3]], [1, 0, 2])
    relabelled = detections([[5, 5, 20, 20, .9], [0, 0, 10, 10, .9],
                             [1, 1, 4, 4, .3]], [1, 0, 1])
    missing = detections([[5, 5, 20, 20, .9], [0, 0, 10, 10, .9]], [1, 0])
    for out, wrong in ((moved, 0), (relabelled, 2), (missing, 1)):
        (result, ) = compare.compare_outputs(ref, out, RTOL)
        assert not result.passed(RTOL) and result.mismatches == wrong


def test_masks_of_paired_detections_are_compared(compare):
    masks = np.linspace(0, 1, 2 * 4 * 4, dtype=np.float32).reshape(
        1, 2, 4, 4)
    ref = dict(detections([[0, 0, 10, 10, .9], [5, 5, 20, 20, .8]], [0, 1]),
               masks=masks)
    # The detections in the other order, their masks with them.
    out = dict(detections([[5, 5, 20, 20, .8], [0, 0, 10, 10, .9]], [1, 0]),
               masks=masks[:, ::-1].copy())
    (same, ) = compare.compare_outputs(ref, out, RTOL)
    assert same.name == 'dets+labels+masks' and same.rel_error == 0
    out['masks'][0, 0, 0, 0] += 0.01
    (moved, ) = compare.compare_outputs(ref, out, RTOL)
    assert moved.rel_error == pytest.approx(0.01) and not moved.passed(RTOL)


def test_tool_names_a_missing_file(tmp_path):
    proc = subprocess.run(
        [sys.executable, DEPLOY, DETECTION_DEPLOY, TINY_RETINANET,
         str(tmp_path / 'none.pth'), str(tmp_path / 'none.png')],
        capture_output=True, text=True, env=tool_env(), timeout=120)
    assert proc.returncode != 0 and 'none.pth' in proc.stderr


# -- what the tool sets up for mmdeploy ---------------------------------------
# In a fresh interpreter: the set-up is for the tool's whole process.
COMPAT = '''
import sys, torch
sys.path.insert(0, sys.argv[1])
import mmdeploy_compat
mmdeploy_compat.setup()
mmdeploy_compat.setup()  # once per process: nothing registered twice
from mmcv.ops.roi_align import RoIAlignFunction
from mmdeploy.core import RewriterContext
from mmseg.models.utils import Upsample
export = torch.onnx.export
for backend in ('onnxruntime', 'tensorrt'):
    with RewriterContext(cfg=dict(), backend=backend, opset=17):
        print(backend, torch.onnx.export.__name__,
              RoIAlignFunction.symbolic.__name__, Upsample.forward.__name__)
print('restored:', torch.onnx.export is export)
print('allow-list:', len(torch.serialization.get_safe_globals()))
'''


def test_rewrites_apply_to_onnxruntime_only():
    proc = subprocess.run([sys.executable, '-c', COMPAT, DEPLOY_TOOLS],
                          capture_output=True, text=True, env=tool_env(),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert 'onnxruntime torchscript_export roi_align_symbolic ' \
        'upsample_by_scale' in lines
    # Other backends keep mmdeploy's own rewrites (ours of the exporter
    # applies to all).
    assert 'tensorrt torchscript_export roi_align_default forward' in lines
    assert 'restored: True' in lines
    assert int(lines[-1].split()[-1]) > 0  # mmengine's globals allowed
    assert 'multiple valid rewriters' not in proc.stderr


def test_import_mmtranscnn_imports_no_deployment_package():
    code = ('import mmtranscnn, sys; print(sorted(m for m in sys.modules if '
            "m.split('.')[0] in ('mmdeploy', 'onnx', 'onnxruntime')))")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, env=tool_env(), timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == '[]', \
        proc.stdout + proc.stderr[-3000:]


def test_no_private_state_of_the_openmmlab_packages_is_written():
    """The deployment code registers through public calls only."""
    private = re.compile(r'\._schemes|_models_dict|_rewrite_records|'
                         r'\._registry\b')
    paths = [osp.join(DEPLOY_TOOLS, name) for name in
             os.listdir(DEPLOY_TOOLS) if name.endswith('.py')]
    paths.append(osp.join(REPO_DIR, 'tools', 'analysis_tools',
                          'onnxruntime_benchmark.py'))
    for path in paths:
        with open(path) as f:
            assert not private.search(f.read()), path
