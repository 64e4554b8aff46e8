"""Write a tiny ImageNet-layout data set of synthetic, distinct classes.

For CI and for trying the pretraining configs on a laptop: no download, a few
hundred kilobytes, and classes that a network separates within a few epochs
(each class is a coloured shape or texture; position, size, colour and the
background noise vary per image).

Layouts (both are read by mmpretrain's ``ImageNet`` data set)::

    folders (default)          annfile (the layout of the real ImageNet)
    OUT/train/<class>/*.JPEG   OUT/train/<class>/*.JPEG
    OUT/val/<class>/*.JPEG     OUT/val/*.JPEG
                               OUT/meta/train.txt  ("<class>/<file> <label>")
                               OUT/meta/val.txt    ("<file> <label>")

Labels are the positions of the class names in sorted order, which is what
mmpretrain assigns to class folders. ``configs/tiny/`` lists the names of the
default six classes.

Example::

    python tools/data/make_tiny_imagenet.py data/tiny_imagenet
"""
import argparse
import os
import os.path as osp
from typing import Dict, List

import numpy as np
from PIL import Image

LAYOUTS = ('folders', 'annfile')


def _disc(yy, xx, cy, cx, r):
    return (yy - cy)**2 + (xx - cx)**2 <= r**2


def _ring(yy, xx, cy, cx, r):
    d2 = (yy - cy)**2 + (xx - cx)**2
    return (d2 <= r**2) & (d2 >= (0.6 * r)**2)


def _square(yy, xx, cy, cx, r):
    return (abs(yy - cy) <= r) & (abs(xx - cx) <= r)


def _triangle(yy, xx, cy, cx, r):
    # Apex up: inside when below the apex and within the widening sides.
    return (yy >= cy - r) & (yy <= cy + r) & (
        abs(xx - cx) <= (yy - (cy - r)) / 2)


def _cross(yy, xx, cy, cx, r):
    arm = max(r / 3, 1)
    return _square(yy, xx, cy, cx, r) & (
        (abs(yy - cy) <= arm) | (abs(xx - cx) <= arm))


def _hstripes(yy, xx, cy, cx, r):
    return (yy // max(int(r / 2), 2)) % 2 == 0


def _vstripes(yy, xx, cy, cx, r):
    return (xx // max(int(r / 2), 2)) % 2 == 0


def _checker(yy, xx, cy, cx, r):
    cell = max(int(r / 2), 2)
    return ((yy // cell) + (xx // cell)) % 2 == 0


# name -> (mask function, RGB colour). Names sort in this order, so the
# label of a class is its index here.
CLASSES: Dict[str, tuple] = {
    'blue_hstripes': (_hstripes, (40, 60, 230)),
    'cyan_ring': (_ring, (30, 220, 220)),
    'green_square': (_square, (40, 200, 60)),
    'magenta_triangle': (_triangle, (220, 40, 200)),
    'orange_cross': (_cross, (250, 140, 20)),
    'red_disc': (_disc, (230, 40, 40)),
    'white_vstripes': (_vstripes, (235, 235, 235)),
    'yellow_checker': (_checker, (235, 220, 30)),
}
assert list(CLASSES) == sorted(CLASSES)


def class_names(num_classes: int) -> List[str]:
    """The first ``num_classes`` class names (sorted, label order)."""
    if not isinstance(num_classes, int) or not \
            2 <= num_classes <= len(CLASSES):
        raise ValueError(f'num_classes must be an int in [2, {len(CLASSES)}]'
                         f', got {num_classes!r}')
    return list(CLASSES)[:num_classes]


def draw(name: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of class ``name``, about ``size`` pixels a side.

    Args:
        name: a key of :data:`CLASSES`.
        size: nominal side; width and height vary by +-20% so that resizing
            and cropping transforms see non-square images, as in ImageNet.
        rng: the random generator.
    """
    mask_fn, colour = CLASSES[name]
    h, w = (int(size * rng.uniform(0.8, 1.2)) for _ in range(2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = min(h, w) * rng.uniform(0.25, 0.4)
    cy = rng.uniform(r, h - r) if h > 2 * r else h / 2
    cx = rng.uniform(r, w - r) if w > 2 * r else w / 2
    # Dark noisy background, jittered foreground colour.
    img = rng.normal(60, 25, size=(h, w, 3))
    fg = np.clip(np.array(colour) + rng.normal(0, 15, size=3), 0, 255)
    mask = mask_fn(yy, xx, cy, cx, r)
    img[mask] = fg + rng.normal(0, 10, size=(int(mask.sum()), 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), 'RGB')


def make_tiny_imagenet(out_dir: str,
                       num_classes: int = 6,
                       train_per_class: int = 16,
                       val_per_class: int = 4,
                       size: int = 64,
                       layout: str = 'folders',
                       seed: int = 0) -> Dict[str, int]:
    """Write the data set and return the number of images per split.

    Args:
        out_dir: the data root (created; existing files are overwritten).
        num_classes: how many classes, 2-8. Default: 6 (enough for top-5).
        train_per_class: training images per class. Default: 16.
        val_per_class: validation images per class. Default: 4.
        size: nominal image side in pixels. Default: 64.
        layout: 'folders' or 'annfile' (see the module docstring).
            Default: 'folders'.
        seed: random seed; the same arguments give the same files.
    """
    if layout not in LAYOUTS:
        raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}')
    for field, value in (('train_per_class', train_per_class),
                         ('val_per_class', val_per_class)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f'{field} must be a positive int, got {value!r}')
    if not isinstance(size, int) or size < 32:
        raise ValueError(f'size must be an int >= 32, got {size!r}')
    names = class_names(num_classes)
    rng = np.random.default_rng(seed)
    counts = {}
    for split, per_class in (('train', train_per_class),
                             ('val', val_per_class)):
        ann_lines = []
        for label, name in enumerate(names):
            flat_val = layout == 'annfile' and split == 'val'
            folder = osp.join(out_dir, split) if flat_val else osp.join(
                out_dir, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                fname = f'{split}_{name}_{i:04d}.JPEG'
                draw(name, size, rng).save(
                    osp.join(folder, fname), 'JPEG', quality=90)
                rel = fname if flat_val else f'{name}/{fname}'
                ann_lines.append(f'{rel} {label}\n')
        if layout == 'annfile':
            os.makedirs(osp.join(out_dir, 'meta'), exist_ok=True)
            with open(osp.join(out_dir, 'meta', f'{split}.txt'), 'w') as f:
                f.writelines(ann_lines)
        counts[split] = len(ann_lines)
    return counts


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('out_dir', nargs='?', default='data/tiny_imagenet',
                        help='data root to write (default: %(default)s)')
    parser.add_argument('--num-classes', type=int, default=6,
                        help=f'2-{len(CLASSES)} (default: %(default)s)')
    parser.add_argument('--train-per-class', type=int, default=16)
    parser.add_argument('--val-per-class', type=int, default=4)
    parser.add_argument('--size', type=int, default=64,
                        help='nominal image side (default: %(default)s)')
    parser.add_argument('--layout', choices=LAYOUTS, default='folders')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    counts = make_tiny_imagenet(args.out_dir, args.num_classes,
                                args.train_per_class, args.val_per_class,
                                args.size, args.layout, args.seed)
    print(f'wrote {counts["train"]} train and {counts["val"]} val images '
          f'of {args.num_classes} classes to {args.out_dir} '
          f'({args.layout} layout)')


if __name__ == '__main__':
    main()
