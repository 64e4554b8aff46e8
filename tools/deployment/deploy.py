"""Export a model to ONNX Runtime with mmdeploy and check it against PyTorch.

    python tools/deployment/deploy.py DEPLOY_CFG MODEL_CFG CHECKPOINT IMAGE \\
        [--test-img IMG ...] [--work-dir DIR]

1. exports MODEL_CFG with CHECKPOINT through mmdeploy (``torch2onnx``)
   into ``DIR/end2end.onnx`` (the deploy config's ``save_file``), tracing
   IMAGE;
2. runs the graph in ONNX Runtime and the model in PyTorch on IMAGE and
   every --test-img (images of other sizes show whether the graph holds at
   any size), and prints how far each output is from PyTorch's
   (``compare.py`` says how);
3. exits with status 1 when an output differs by more than --rtol or a
   detection or class label has no counterpart.

Both sides get the same input: the image through the model config's test
pipeline and data preprocessor, as mmdeploy prepares it. On the PyTorch
side, backbone and neck run as built; the rest runs eagerly, patched by
mmdeploy's rewriters inside their context, the code the graph was traced
from. So the post-processing of the graph (e.g. the detector's NMS with the
deploy config's thresholds, which keeps other boxes at the margins than
mmdet's) is part of both.

What mmdeploy 1.3.1 needs on today's torch is set up in this process only
(``mmdeploy_compat.py``). Deploy configs for detection, instance
segmentation and semantic segmentation are in configs/deploy/.
"""
import argparse
import copy
import importlib.util
import os.path as osp
import sys

import compare

DEFAULT_WORK_DIR = 'work_dirs/deploy'
DEFAULT_RTOL = 1e-4
DEPLOY_PACKAGES = ('mmdeploy', 'onnx', 'onnxruntime')


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description='Export to ONNX Runtime with mmdeploy and compare with '
        'PyTorch')
    parser.add_argument('deploy_cfg', help='mmdeploy deploy config, e.g. '
                        'configs/deploy/detection_onnxruntime_dynamic.py')
    parser.add_argument('model_cfg', help='the model\'s config')
    parser.add_argument('checkpoint', help='the model\'s checkpoint')
    parser.add_argument('img', help='image traced through the model')
    parser.add_argument(
        '--test-img', nargs='+', default=[],
        help='more images to compare on (default: only IMG)')
    parser.add_argument(
        '--work-dir', default=DEFAULT_WORK_DIR,
        help=f'where the ONNX file goes (default: {DEFAULT_WORK_DIR})')
    parser.add_argument(
        '--rtol', type=float, default=DEFAULT_RTOL,
        help=f'largest relative error accepted (default: {DEFAULT_RTOL})')
    parser.add_argument(
        '--skip-check', action='store_true',
        help='export only, compare nothing')
    parser.add_argument('--device', default='cpu',
                        help='device PyTorch runs on (default: cpu)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
        help='override settings of the model config, e.g. '
        'model.test_cfg.score_thr=0.3')
    parser.add_argument(
        '--deploy-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
        help='override settings of the deploy config, e.g. '
        'codebase_config.with_argmax=False')
    args = parser.parse_args(argv)
    if not args.rtol > 0:
        parser.error(f'--rtol must be a positive number, got {args.rtol}')
    return args


def load_configs(args):
    """The deploy and model configs, with the command line's options."""
    from mmengine.config import Config
    deploy_cfg = Config.fromfile(args.deploy_cfg)
    model_cfg = Config.fromfile(args.model_cfg)
    deploy_cfg.merge_from_dict(args.deploy_options or {})
    model_cfg.merge_from_dict(args.cfg_options or {})
    return deploy_cfg, model_cfg


def check_inputs(args):
    """Stop, naming the first file that does not exist or the package of
    the ``deploy`` extra that is not installed."""
    for path in [args.deploy_cfg, args.model_cfg, args.checkpoint, args.img
                 ] + args.test_img:
        if not osp.isfile(path):
            raise SystemExit(f'no file {path!r}')
    for name in DEPLOY_PACKAGES:
        if importlib.util.find_spec(name) is None:
            raise SystemExit(f'{name} is not installed: pip install '
                             '"mmtranscnn[deploy]" (or -e ".[deploy]")')


def model_inputs(task, model, deploy_cfg, image):
    """``(data, inputs)``: the image through the model config's test
    pipeline and data preprocessor, as mmdeploy prepares it."""
    from mmdeploy.utils import get_input_shape
    data, inputs = task.create_input(
        image, get_input_shape(deploy_cfg),
        data_preprocessor=model.data_preprocessor)
    if isinstance(inputs, (list, tuple)):
        (inputs, ) = inputs
    return data, inputs


def pytorch_outputs(task, model, deploy_cfg, images):
    """PyTorch's outputs on each image (see the module's notes).

    Args:
        task: mmdeploy's task processor of the model.
        model: the model as built, in eval mode.
        deploy_cfg (Config): the deploy config.
        images (list[str]): the image files.

    Returns:
        list[tuple]: (the model's input tensor, {output name: array}) per
        image.
    """
    import torch
    from mmdeploy.core import RewriterContext, patch_model
    from mmdeploy.utils import IR, get_backend

    backend = get_backend(deploy_cfg).value
    onnx_cfg = deploy_cfg.onnx_config
    # patch_model changes the model it patches.
    patched = patch_model(copy.deepcopy(model), cfg=deploy_cfg,
                          backend=backend, ir=IR.ONNX)
    prepared = []
    with torch.no_grad():
        for image in images:
            data, inputs = model_inputs(task, model, deploy_cfg, image)
            prepared.append((data, inputs, model.extract_feat(inputs)))
    results = []
    # Entered once for all images: entering takes about a second.
    context = RewriterContext(cfg=deploy_cfg, backend=backend, ir=IR.ONNX,
                              opset=onnx_cfg.get('opset_version', 11))
    with context, torch.no_grad():
        for data, inputs, features in prepared:
            # The heads get the features of the model as built.
            patched.extract_feat = lambda *args, _f=features, **kw: _f
            out = patched(inputs, data_samples=data['data_samples'],
                          mode='predict')
            out = (out, ) if isinstance(out, torch.Tensor) else out
            results.append((inputs, {
                name: value.cpu().numpy()
                for name, value in zip(onnx_cfg.output_names, out)}))
    return results


def onnxruntime_results(session, deploy_cfg, inputs, ref, rtol):
    """ONNX Runtime's outputs on ``inputs`` against PyTorch's ``ref``.

    Args:
        session (ORTWrapper): mmdeploy's ONNX Runtime session of the graph.
        deploy_cfg (Config): the deploy config.
        inputs (Tensor): the model's input.
        ref (dict): PyTorch's outputs by name.
        rtol (float): the relative error accepted.

    Returns:
        list[compare.Result]: a failure when ONNX Runtime cannot run the
        graph at this size (the other images are still compared).
    """
    onnx_cfg = deploy_cfg.onnx_config
    try:
        out = session({onnx_cfg.input_names[0]: inputs.cpu()})
    except Exception as error:  # ONNX Runtime's own error types
        first = str(error).strip().splitlines()[0][:300]
        return [compare.Result('onnxruntime', float('inf'), 1,
                               f'ONNX Runtime failed: {first}')]
    out = {name: out[name].cpu().numpy() for name in onnx_cfg.output_names}
    return compare.compare_outputs(ref, out, rtol)


def check(deploy_cfg, model_cfg, args, onnx_file):
    """Compare ONNX Runtime with PyTorch on every image, printing one line
    per image and output; returns whether all agree."""
    from mmdeploy.apis.utils import build_task_processor
    from mmdeploy.backend.onnxruntime import ORTWrapper
    task = build_task_processor(model_cfg, deploy_cfg, args.device)
    model = task.build_pytorch_model(args.checkpoint).eval()
    images = [args.img] + args.test_img
    references = pytorch_outputs(task, model, deploy_cfg, images)
    session = ORTWrapper(onnx_file, 'cpu',
                         list(deploy_cfg.onnx_config.output_names))
    agree = True
    for image, (inputs, ref) in zip(images, references):
        h, w = inputs.shape[2:]
        for r in onnxruntime_results(session, deploy_cfg, inputs, ref,
                                     args.rtol):
            verdict = 'ok' if r.passed(args.rtol) else 'FAILED'
            print(f'{verdict:6} {image} input {h}x{w} {r.name}: relative '
                  f'error {r.rel_error:.2e} (at most {args.rtol:g}), '
                  f'{r.mismatches} mismatches; {r.note}', flush=True)
            agree = agree and r.passed(args.rtol)
    return agree


def main(argv=None):
    args = parse_args(argv)
    check_inputs(args)
    import mmdeploy_compat
    mmdeploy_compat.setup()
    from mmdeploy.apis import torch2onnx
    deploy_cfg, model_cfg = load_configs(args)
    save_file = deploy_cfg.onnx_config.save_file
    torch2onnx(args.img, args.work_dir, save_file, deploy_cfg, model_cfg,
               args.checkpoint, args.device)
    onnx_file = osp.join(args.work_dir, save_file)
    print(f'exported: {onnx_file}', flush=True)
    if args.skip_check:
        return 0
    if check(deploy_cfg, model_cfg, args, onnx_file):
        print('ONNX Runtime agrees with PyTorch on '
              f'{1 + len(args.test_img)} image(s)')
        return 0
    print('ONNX Runtime differs from PyTorch (see FAILED above)')
    return 1


if __name__ == '__main__':
    sys.exit(main())
