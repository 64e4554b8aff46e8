"""Test (and evaluate) a checkpoint with an OpenMMLab config.

Examples::

    python tools/test.py CONFIG CHECKPOINT
    python tools/test.py CONFIG CHECKPOINT --out results.pkl
    bash tools/dist_test.sh CONFIG CHECKPOINT 8

``--out`` and ``--show-dir`` behave as in the config's codebase (mmdet,
mmseg or mmpretrain, from ``default_scope``): mmseg writes prediction maps
into the directory ``--out``, the others pickle the predictions.
"""
import argparse

from mmengine.config import Config

from mmtranscnn.engine import (add_run_options, build_runner,
                               merge_test_args, parse_run_args,
                               prepare_prediction_dump, setup_codebase,
                               setup_cpu_distributed, teardown_distributed)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='the dir to save logs and evaluation metrics')
    parser.add_argument(
        '--out',
        help='dump predictions: a .pkl file (mmdet, mmpretrain, mmengine '
        'configs) or a directory of prediction maps (mmseg configs)')
    parser.add_argument(
        '--tta',
        action='store_true',
        help='test-time augmentation with the config\'s tta_model and '
        'tta_pipeline')
    parser.add_argument(
        '--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory for painted predictions, read as the config\'s '
        'codebase reads it: mmdet under work_dir/<timestamp>/, mmpretrain '
        'as given (relative to the current directory), mmseg as the '
        'visualizer\'s save_dir')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='seconds per --show window')
    add_run_options(parser, example='test_dataloader.batch_size=1')
    return parse_run_args(parser, argv)


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    merge_test_args(cfg, args)
    setup_codebase(cfg)
    setup_cpu_distributed(cfg)  # no-op on GPUs or without a launcher
    dump_metric = prepare_prediction_dump(cfg, args.out)
    # The model as built: it folds BN into convs at inference itself.
    runner = build_runner(cfg)
    if dump_metric is not None:
        runner.test_evaluator.metrics.append(dump_metric)
    runner.test()
    teardown_distributed()


if __name__ == '__main__':
    main()
