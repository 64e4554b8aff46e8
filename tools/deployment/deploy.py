"""Export a model to ONNX Runtime with mmdeploy and check it against PyTorch.

    python tools/deployment/deploy.py DEPLOY_CFG MODEL_CFG CHECKPOINT IMAGE \\
        [--test-img IMG ...] [--work-dir DIR]

1. exports MODEL_CFG with CHECKPOINT through mmdeploy (``torch2onnx``)
   into ``DIR/end2end.onnx`` (the deploy config's ``save_file``), tracing
   IMAGE;
2. runs the graph in ONNX Runtime and the model in PyTorch on IMAGE and
   every --test-img (images of other sizes show whether the graph holds at
   any size), and prints how far each output is from PyTorch's;
3. exits with status 1 when an output differs by more than --rtol
   (relative to the output's largest magnitude) or a detection or class
   label has no counterpart.

What mmdeploy 1.3.1 needs on today's torch (the TorchScript exporter, and
loading of mmengine checkpoints on torch >= 2.6) is applied inside this
process only; see mmtranscnn/deployment.py. Deploy configs for detection,
instance segmentation and semantic segmentation are in configs/deploy/.
"""
import argparse
import os.path as osp
import sys

DEFAULT_WORK_DIR = 'work_dirs/deploy'


def parse_args(argv=None):
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
        '--rtol', type=float, default=None,
        help='largest relative error accepted (default: 1e-4)')
    parser.add_argument(
        '--skip-check', action='store_true',
        help='export only, compare nothing')
    parser.add_argument('--device', default='cpu',
                        help='device PyTorch runs on (default: cpu)')
    parser.add_argument(
        '--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
        help='override settings of the model config, e.g. '
        'model.test_cfg.score_thr=0.3')
    parser.add_argument(
        '--deploy-options', nargs='+', default=[], metavar='KEY=VALUE',
        help='override settings of the deploy config, e.g. '
        'codebase_config.with_argmax=False')
    args = parser.parse_args(argv)
    if args.rtol is not None and not args.rtol > 0:
        parser.error(f'--rtol must be a positive number, got {args.rtol}')
    return args


def parse_options(options, field):
    """``KEY=VALUE`` strings as a dict, values read as mmengine reads them
    on the command line."""
    from mmengine.config import DictAction
    parsed = {}
    for option in options:
        if '=' not in option:
            raise SystemExit(f'{field}: {option!r} is not KEY=VALUE')
        key, value = option.split('=', 1)
        parsed[key] = DictAction._parse_iterable(value)
    return parsed


def load_configs(args):
    from mmengine.config import Config
    for path, what in ((args.deploy_cfg, 'deploy_cfg'),
                       (args.model_cfg, 'model_cfg')):
        if not osp.isfile(path):
            raise SystemExit(f'{what}: no file {path!r}')
    deploy_cfg = Config.fromfile(args.deploy_cfg)
    model_cfg = Config.fromfile(args.model_cfg)
    deploy_cfg.merge_from_dict(parse_options(args.deploy_options,
                                             '--deploy-options'))
    model_cfg.merge_from_dict(parse_options(args.cfg_options,
                                            '--cfg-options'))
    return deploy_cfg, model_cfg


def print_report(comparisons) -> bool:
    """One line per image and output; returns whether all passed."""
    for comparison in comparisons:
        h, w = comparison.input_shape
        for out in comparison.outputs:
            verdict = 'ok' if out.passed(comparison.rtol) else 'FAILED'
            print(f'{verdict:6} {comparison.image} input {h}x{w} '
                  f'{out.name}: relative error {out.rel_error:.2e} '
                  f'(at most {comparison.rtol:g}), {out.mismatches} '
                  f'mismatches; {out.note}', flush=True)
    return all(c.passed for c in comparisons)


def main(argv=None):
    args = parse_args(argv)
    for path in [args.img, args.checkpoint] + args.test_img:
        if not osp.isfile(path):
            raise SystemExit(f'no file {path!r}')
    from mmtranscnn import deployment
    deploy_cfg, model_cfg = load_configs(args)
    onnx_file = deployment.export_to_onnx(
        deploy_cfg, model_cfg, args.checkpoint, args.img, args.work_dir,
        device=args.device)
    print(f'exported: {onnx_file}', flush=True)
    if args.skip_check:
        return 0
    rtol = args.rtol if args.rtol is not None else deployment.DEFAULT_RTOL
    comparisons = deployment.compare_with_pytorch(
        deploy_cfg, model_cfg, args.checkpoint, onnx_file,
        [args.img] + args.test_img, rtol=rtol, device=args.device)
    if print_report(comparisons):
        print(f'ONNX Runtime agrees with PyTorch on {len(comparisons)} '
              'image(s)')
        return 0
    print('ONNX Runtime differs from PyTorch (see FAILED above)')
    return 1


if __name__ == '__main__':
    sys.exit(main())
