"""The main job: train RetinaNet-TransCNN on the CPU and show what it learned.

    python tools/main_job.py            # what scripts/setup.sh ends with

1. generates the synthetic COCO-format "shapes" dataset into data/shapes
   (skipped when it is already there; tools/data/make_shapes_coco.py);
2. trains RetinaNet with a TransCNN-Small backbone on it from scratch,
   through tools/train.py and mmengine's Runner
   (configs/tiny/retinanet_transcnn_small_shapes.py);
3. evaluates on the val split with the COCO metric (the last epoch's
   validation) and prints bbox mAP and mAP@0.5;
4. draws ground truth (left) and predictions (right) of a few val images
   into PNG files with mmdet's inferencer and visualizer.

Training runs in bfloat16 mixed precision (``tools/train.py --amp``) where
that is measured faster on this CPU (native bf16, as on AVX512-BF16 or AMX
CPUs), in float32 elsewhere (``--precision`` overrides the choice). About
9-15 minutes on 2 CPU cores (500 training iterations). Options change the
work directory, the number of drawn images, or pass ``--cfg-options`` on to
tools/train.py.
"""
import argparse
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs', 'tiny',
                  'retinanet_transcnn_small_shapes.py')
DATA_ROOT = osp.join(ROOT, 'data', 'shapes')
# The config reads data/shapes/ relative to the working directory.
DATA_SETTINGS = dict(num_train=400, num_val=80, img_size=(160, 160), seed=0)
# bf16 autocast is chosen when a conv training step runs at least this many
# times faster in it than in fp32 (measured: ~2x with native bf16, ~0.05x
# where oneDNN emulates it), so that its rounding buys a real saving.
BF16_MIN_SPEEDUP = 1.25
PRECISIONS = ('auto', 'fp32', 'bf16')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir',
                        default=osp.join(ROOT, 'work_dirs', 'main_job'),
                        help='where logs, checkpoint and pictures go')
    parser.add_argument('--num-vis', type=int, default=6,
                        help='val images to draw (default: 6)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='lowest score drawn (default: 0.3)')
    parser.add_argument('--precision', choices=PRECISIONS, default='auto',
                        help='training precision; auto (default): bf16 '
                        'autocast where measured faster here, else fp32')
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='passed on to tools/train.py')
    return parser.parse_args(argv)


def make_data() -> None:
    sys.path.insert(0, osp.join(ROOT, 'tools', 'data'))
    from make_shapes_coco import make_shapes_coco
    start = time.time()
    info = make_shapes_coco(DATA_ROOT, **DATA_SETTINGS)
    state = (f'generated in {time.time() - start:.0f} s'
             if info['generated'] else 'already present')
    print(f'[main job] data/shapes: {info["train"]["images"]} train / '
          f'{info["val"]["images"]} val images, {state}', flush=True)


def choose_precision(precision: str = 'auto') -> str:
    """'fp32' or 'bf16'; for 'auto', bf16 where the CPU runs it faster.

    Args:
        precision: one of ``PRECISIONS``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, not '
                         f'{precision!r}')
    if precision != 'auto':
        print(f'[main job] precision: {precision} (asked for)', flush=True)
        return precision
    import torch
    if torch.cuda.is_available():
        # The runner trains on the GPU then; the probe measures the CPU.
        print('[main job] precision: fp32 (a GPU is present)', flush=True)
        return 'fp32'
    from mmtranscnn.engine.amp import bf16_training_speedup
    speedup = bf16_training_speedup()
    chosen = 'bf16' if speedup >= BF16_MIN_SPEEDUP else 'fp32'
    print(f'[main job] precision: {chosen} (a conv training step ran '
          f'{speedup:.2f}x as fast in bf16 autocast as in fp32 here; bf16 '
          f'from {BF16_MIN_SPEEDUP}x)', flush=True)
    return chosen


def train(work_dir: str, cfg_options, precision: str = 'fp32') -> None:
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), CONFIG,
           '--work-dir', work_dir]
    if precision == 'bf16':
        cmd.append('--amp')  # on a CPU: CPUBF16AmpOptimWrapper
    if cfg_options:
        cmd += ['--cfg-options', *cfg_options]
    print('[main job] ' + ' '.join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def last_metrics(work_dir: str) -> dict:
    """The last logged COCO metrics of the newest run in ``work_dir``."""
    logs = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data',
                                     'scalars.json')), key=osp.getmtime)
    if not logs:
        raise FileNotFoundError(f'no scalars.json under {work_dir}/*/vis_data'
                                ' (did training finish?)')
    metrics = {}
    with open(logs[-1]) as f:
        for line in f:
            record = json.loads(line)
            if 'coco/bbox_mAP' in record:
                metrics = record
    if not metrics:
        raise RuntimeError(f'{logs[-1]} holds no coco/bbox_mAP (validation '
                           'did not run)')
    return metrics


def newest_checkpoint(work_dir: str) -> str:
    last = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(last):
        with open(last) as f:
            path = f.read().strip()
        if osp.isfile(path):
            return path
    ckpts = sorted(glob.glob(osp.join(work_dir, '*.pth')), key=osp.getmtime)
    if not ckpts:
        raise FileNotFoundError(f'no checkpoint in {work_dir}')
    return ckpts[-1]


def draw_predictions(checkpoint: str, out_dir: str, num: int,
                     score_thr: float, scale: int = 3, config: str = CONFIG,
                     data_root: str = DATA_ROOT) -> list:
    """Ground truth | prediction pictures of the first ``num`` val images.

    The images are enlarged ``scale`` times before drawing so that labels
    and scores stay readable on 160-pixel scenes.

    Args:
        checkpoint: the trained model (a file mmengine's runner wrote).
        out_dir: where the PNG files go.
        num: how many val images to draw.
        score_thr: the lowest prediction score drawn.
        scale: enlargement of the drawn images.
        config: the model's config.
        data_root: the shapes data (its val split is drawn).
    """
    import mmcv
    import numpy as np
    import torch
    from mmdet.apis import DetInferencer
    from mmengine.structures import InstanceData

    import mmtranscnn  # noqa: F401
    # The runner's checkpoint holds its message hub (mmengine objects), which
    # torch >= 2.6 refuses by default; this loads it with the allow-list.
    import mmtranscnn.safe_checkpoints  # noqa: F401

    with open(osp.join(data_root, 'annotations', 'instances_val.json')) as f:
        coco = json.load(f)
    images = coco['images'][:num]
    paths = [osp.join(data_root, 'val', im['file_name']) for im in images]
    inferencer = DetInferencer(model=config, weights=checkpoint,
                               device='cpu', show_progress=False)
    samples = inferencer(paths, return_datasamples=True, no_save_vis=True,
                         no_save_pred=True)['predictions']
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for im, path, sample in zip(images, paths, samples):
        anns = [a for a in coco['annotations'] if a['image_id'] == im['id']]
        gt = InstanceData()
        gt.bboxes = torch.tensor(
            [[x, y, x + w, y + h] for x, y, w, h in
             (a['bbox'] for a in anns)], dtype=torch.float32).reshape(-1, 4)
        gt.labels = torch.tensor([a['category_id'] - 1 for a in anns])
        gt.bboxes *= scale
        sample.gt_instances = gt
        sample.pred_instances.bboxes *= scale
        image = mmcv.imread(path, channel_order='rgb')
        image = mmcv.imrescale(image, scale, interpolation='nearest')
        out_file = osp.join(out_dir, osp.splitext(im['file_name'])[0] +
                            '_gt_vs_pred.png')
        inferencer.visualizer.add_datasample(
            osp.basename(path), np.ascontiguousarray(image), sample,
            draw_gt=True, draw_pred=True, pred_score_thr=score_thr,
            out_file=out_file)
        written.append(out_file)
    return written


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    os.chdir(ROOT)
    make_data()
    precision = choose_precision(args.precision)
    train(args.work_dir, args.cfg_options, precision)
    metrics = last_metrics(args.work_dir)
    train_done = time.time()
    pictures = draw_predictions(newest_checkpoint(args.work_dir),
                                osp.join(args.work_dir, 'predictions'),
                                args.num_vis, args.score_thr)
    total = time.time() - start
    print('\n[main job] RetinaNet + TransCNN-Small, trained from scratch on '
          f'the CPU on data/shapes ({precision})')
    print(f'[main job] val bbox mAP      = {metrics["coco/bbox_mAP"]:.3f}')
    print(f'[main job] val bbox mAP@0.5  = {metrics["coco/bbox_mAP_50"]:.3f}')
    print(f'[main job] val bbox mAP@0.75 = {metrics["coco/bbox_mAP_75"]:.3f}')
    print(f'[main job] pictures (ground truth | prediction, score >= '
          f'{args.score_thr}):')
    for path in pictures:
        print(f'             {path}')
    print(f'[main job] wall time: {total / 60:.1f} min (training and '
          f'evaluation {(train_done - start) / 60:.1f} min)')


if __name__ == '__main__':
    main()
