"""Segment one image with a trained segmentor and save the coloured mask.

Examples::

    python demo/seg_demo.py CONFIG CHECKPOINT IMAGE --out-file mask.png
    # the mask blended over the image, with class names:
    python demo/seg_demo.py CONFIG CHECKPOINT IMAGE --out-file overlay.png \
        --opacity 0.5 --with-labels

CONFIG is an mmseg config (e.g. configs/segmentation/*.py or
configs/tiny/*.py); the colours are the dataset palette saved in the
checkpoint (ADE20K's for our configs). Inference and drawing are mmseg's own
(``init_model``, ``inference_model``, ``SegLocalVisualizer``).
"""
import argparse
import os
import os.path as osp
import sys

import torch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Segment an image and save a coloured mask PNG.')
    parser.add_argument('config', help='mmseg config file')
    parser.add_argument('checkpoint', help='trained checkpoint file')
    parser.add_argument('image', help='input image file')
    parser.add_argument(
        '--out-file', required=True, help='where to write the PNG')
    parser.add_argument(
        '--device',
        default='cuda:0' if torch.cuda.is_available() else 'cpu',
        help='device, e.g. cuda:0 or cpu (default: cuda:0 when available)')
    parser.add_argument(
        '--opacity',
        type=float,
        default=1.0,
        help='opacity of the mask over the image, in (0, 1]; 1 (default) '
        'writes the plain coloured mask')
    parser.add_argument(
        '--with-labels',
        action='store_true',
        help='write the class names on the mask')
    args = parser.parse_args(argv)
    if not 0 < args.opacity <= 1:
        parser.error(f'--opacity must be in (0, 1], got {args.opacity}')
    for name in ('config', 'checkpoint', 'image'):
        if not osp.isfile(getattr(args, name)):
            parser.error(f'{name} file not found: {getattr(args, name)}')
    return args


def main(argv=None):
    args = parse_args(argv)
    # Registers TransCNN in mmseg; mmengine's checkpoint loading then works
    # on torch >= 2.6 without unpickling arbitrary code.
    import mmtranscnn  # noqa: F401
    import mmtranscnn.safe_checkpoints  # noqa: F401
    from mmseg.apis import inference_model, init_model, show_result_pyplot

    # init_model drops the backbone's init_cfg: the checkpoint holds all
    # weights, no ImageNet file is needed.
    model = init_model(args.config, args.checkpoint, device=args.device)
    result = inference_model(model, args.image)
    out_dir = osp.dirname(osp.abspath(args.out_file))
    os.makedirs(out_dir, exist_ok=True)
    show_result_pyplot(
        model,
        args.image,
        result,
        opacity=args.opacity,
        draw_gt=False,
        show=False,
        with_labels=args.with_labels,
        out_file=args.out_file)
    classes = model.dataset_meta['classes']
    found = sorted(set(result.pred_sem_seg.data.unique().tolist()))
    print(f'wrote {args.out_file}; classes: '
          f'{", ".join(classes[i] for i in found)}')


if __name__ == '__main__':
    sys.exit(main())
