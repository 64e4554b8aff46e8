"""Train a model from an OpenMMLab config (mmdet, mmseg or mmpretrain).

Examples::

    python tools/train.py configs/retinanet_transcnn_small.py
    bash tools/dist_train.sh configs/retinanet_transcnn_base.py 8
    python tools/train.py CONFIG --resume            # latest in work_dir
    python tools/train.py CONFIG --resume CKPT.pth   # that checkpoint

The codebase comes from the config's ``default_scope``. Distributed runs use
NCCL through mmengine on GPUs and gloo on CPU-only machines.
"""
import argparse
import warnings

from mmengine.config import Config

from mmtranscnn.engine import (add_run_options, build_runner,
                               keep_freed_memory_for_cpu_run, merge_train_args,
                               parse_run_args, setup_codebase,
                               setup_cpu_distributed, teardown_distributed)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint, or, without a path, from '
        'the latest checkpoint in the work directory')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='mixed precision training: fp16 autocast with dynamic loss '
        'scaling on GPUs, bfloat16 autocast on CPU-only machines')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the learning rate by the actual total batch size '
        '(needs auto_scale_lr.base_batch_size in the config)')
    # Accepted so that existing command lines still run: the CPU speed-up
    # it switched off is gone (the model as built is the fast one).
    parser.add_argument('--no-cpu-speedups', action='store_true',
                        help=argparse.SUPPRESS)
    add_run_options(parser, example='train_cfg.max_iters=10')
    args = parse_run_args(parser, argv)
    if args.no_cpu_speedups:
        warnings.warn('--no-cpu-speedups does nothing any more: every run '
                      'trains the model as built', FutureWarning)
    return args


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    merge_train_args(cfg, args)
    setup_codebase(cfg)
    setup_cpu_distributed(cfg)  # no-op on GPUs or without a launcher
    keep_freed_memory_for_cpu_run()  # no-op with CUDA
    runner = build_runner(cfg)
    runner.train()
    teardown_distributed()


if __name__ == '__main__':
    main()
