"""Detect objects in one image with a trained TransCNN detector and draw them.

    python demo/image_demo.py CONFIG CHECKPOINT IMAGE --out-file OUT.png

Any image size works: the config's test pipeline resizes the image (shorter
side 800 for the COCO configs) and the boxes are drawn on the original.
Inference and drawing are mmdet's (``DetInferencer`` and its visualizer); the
class names come from the checkpoint's dataset meta, else from the config.
"""
import argparse
import os
import os.path as osp

import mmcv

import mmtranscnn  # noqa: F401  (registers TransCNN for mmdet)
import mmtranscnn.safe_checkpoints  # noqa: F401  (mmengine files on torch 2.6+)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='detector config file')
    parser.add_argument('checkpoint', help='checkpoint of that detector')
    parser.add_argument('image', help='image file (any size)')
    parser.add_argument('--out-file', required=True,
                        help='where the drawn image is written (.png/.jpg)')
    parser.add_argument('--device', default=None,
                        help='cpu, cuda or cuda:N (default: cuda if '
                        'available, else cpu)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='draw detections scoring at least this '
                        '(default: 0.3)')
    parser.add_argument('--palette', default='none',
                        choices=['coco', 'voc', 'citys', 'random', 'none'],
                        help='box colours; none: the dataset\'s own palette')
    args = parser.parse_args(argv)
    if not 0 <= args.score_thr <= 1:
        parser.error(f'--score-thr must be in [0, 1], got {args.score_thr}')
    for name in ('config', 'checkpoint', 'image'):
        if not osp.isfile(getattr(args, name)):
            parser.error(f'{name} file not found: {getattr(args, name)}')
    return args


def detect_and_draw(config: str, checkpoint: str, image: str, out_file: str,
                    device=None, score_thr: float = 0.3,
                    palette: str = 'none') -> dict:
    """Run the detector on ``image`` and write the drawing to ``out_file``.

    Args:
        config: detector config file.
        checkpoint: its trained weights.
        image: the image file.
        out_file: the drawn image's file name.
        device: torch device name; None picks cuda when available.
        score_thr: lowest score drawn.
        palette: box colours (see ``--palette``).

    Returns:
        dict: the predictions (``labels``, ``scores``, ``bboxes``, and
        ``masks`` for instance segmentation models).
    """
    from mmdet.apis import DetInferencer
    if device is None:
        import torch
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    inferencer = DetInferencer(model=config, weights=checkpoint,
                               device=device, palette=palette,
                               show_progress=False)
    result = inferencer(image, return_vis=True, no_save_vis=True,
                        no_save_pred=True, pred_score_thr=score_thr)
    drawn = result['visualization'][0]  # RGB
    if drawn is None:
        raise RuntimeError(f'mmdet could not draw the result of {image!r}')
    out_dir = osp.dirname(osp.abspath(out_file))
    os.makedirs(out_dir, exist_ok=True)
    if not mmcv.imwrite(drawn[..., ::-1], out_file):
        raise OSError(f'could not write {out_file!r}')
    prediction = dict(result['predictions'][0])
    classes = (inferencer.model.dataset_meta or {}).get('classes')
    prediction['names'] = [
        classes[i] if classes and i < len(classes) else str(i)
        for i in prediction['labels']
    ]
    return prediction


def main(argv=None):
    args = parse_args(argv)
    pred = detect_and_draw(args.config, args.checkpoint, args.image,
                           args.out_file, args.device, args.score_thr,
                           args.palette)
    kept = [(name, score) for name, score in zip(pred['names'],
                                                  pred['scores'])
            if score >= args.score_thr]
    print(f'{len(kept)} detections with score >= {args.score_thr} drawn '
          f'into {args.out_file}')
    for name, score in kept[:20]:
        print(f'  {name}: {score:.2f}')


if __name__ == '__main__':
    main()
