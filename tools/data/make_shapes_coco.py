"""Generate "shapes": a small COCO-format detection / instance dataset.

Scenes of filled circles, rectangles, triangles and rings on textured
backgrounds (gradients, clouds, checkers, stripes, clutter lines), with
random colours, shading, surface texture, drop shadows, sensor noise and
occlusion between objects. Every object has a box and a mask; fully visible
convex objects carry a polygon, rings (they have a hole) and partly hidden
objects carry a compressed RLE of their visible pixels, so both mask formats
of COCO are exercised. Boxes are those of the visible pixels, as in COCO.

The output is deterministic for a given set of arguments::

    OUT/
      train/000001.png ...      val/000001.png ...
      annotations/instances_train.json
      annotations/instances_val.json
      shapes_meta.json          # the arguments, to skip regeneration

Usage::

    python tools/data/make_shapes_coco.py --out data/shapes
    python tools/data/make_shapes_coco.py --out /tmp/s --num-train 8 \\
        --num-val 4 --img-size 96

mmdet reads it with ``CocoDataset`` and
``metainfo=dict(classes=CLASSES)`` (see configs/tiny/).
"""
import argparse
import json
import os
import os.path as osp
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils

CLASSES = ('circle', 'rectangle', 'triangle', 'ring')
# Drawing colours of the classes (RGB), used by the visualizer.
PALETTE = [(220, 20, 60), (0, 110, 255), (255, 170, 0), (0, 170, 85)]
# Bump when the drawing changes, so old data on disk is regenerated.
GENERATOR_VERSION = 2
META_FILE = 'shapes_meta.json'

# An object stays in the scene only if at least this share of it is seen.
MIN_VISIBLE = 0.7
# Least RGB distance between an object's colour and the background under it.
MIN_CONTRAST = 70.


# --------------------------------------------------------------------------
# geometry: polygons in pixel coordinates, masks rasterised by pycocotools
# (the same rasteriser mmdet uses to turn polygons back into masks).
# --------------------------------------------------------------------------
def _circle(cx, cy, r, n=None) -> np.ndarray:
    n = n or max(24, int(2 * np.pi * r / 3))
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _shape_polygons(rng: np.random.Generator, label: int, cx: float,
                    cy: float, size: float) -> Tuple[np.ndarray, ...]:
    """Polygons of one object: (outer,) or (outer, hole) for a ring."""
    name = CLASSES[label]
    if name == 'circle':
        return (_circle(cx, cy, size / 2), )
    if name == 'ring':
        r = size / 2
        return (_circle(cx, cy, r), _circle(cx, cy, r * rng.uniform(.45, .62)))
    if name == 'rectangle':
        w, h = size, size * rng.uniform(.5, 1.)
        theta = rng.uniform(0, np.pi)
        corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
        rot = np.array([[np.cos(theta), -np.sin(theta)],
                        [np.sin(theta), np.cos(theta)]])
        return (corners @ rot.T + [cx, cy], )
    if name == 'triangle':
        # Near-equilateral, so a triangle never degenerates into a sliver.
        angles = rng.uniform(0, 2 * np.pi) + np.arange(3) * 2 * np.pi / 3 \
            + rng.uniform(-.25, .25, 3)
        radii = size / 2 * rng.uniform(.9, 1.1, 3)
        return (np.stack([cx + radii * np.cos(angles),
                          cy + radii * np.sin(angles)], 1), )
    raise ValueError(f'unknown class {name!r}; classes are {CLASSES}')


def _poly_mask(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    rle = mask_utils.frPyObjects([poly.reshape(-1).tolist()], h, w)
    return mask_utils.decode(mask_utils.merge(rle)).astype(bool)


# --------------------------------------------------------------------------
# appearance
# --------------------------------------------------------------------------
def _random_colour(rng: np.random.Generator) -> np.ndarray:
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(90, 256),
                      rng.integers(80, 256)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _smooth_noise(rng, h, w, cells, channels=1) -> np.ndarray:
    """Low-frequency noise in [-1, 1] (bicubic upsampling of a coarse grid)."""
    coarse = rng.uniform(-1, 1, (cells, cells, channels)).astype(np.float32)
    out = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(h, w, channels)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = _random_colour(rng) * rng.uniform(.5, 1.)
    kind = rng.integers(4)
    if kind == 0:  # linear gradient between two colours
        other = _random_colour(rng) * rng.uniform(.5, 1.)
        theta = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(theta) + yy * np.sin(theta)
        t = ((t - t.min()) / (np.ptp(t) + 1e-6))[..., None]
        img = base * (1 - t) + other * t
    elif kind == 1:  # clouds
        img = base + 45 * _smooth_noise(rng, h, w, rng.integers(3, 8), 3)
    elif kind == 2:  # checker / tiles, low contrast
        period = rng.integers(8, 33)
        cells = ((xx // period + yy // period) % 2)[..., None]
        img = base * (1 - .18 * cells)
    else:  # stripes at some angle
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(6, 24)
        t = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) /
                   period)[..., None]
        img = base * (1 + .12 * t)
    # Uneven lighting over the whole scene.
    img = img * (1 + .25 * _smooth_noise(rng, h, w, 2))
    # Unlabelled clutter: thin lines and arcs that are not objects.
    for _ in range(rng.integers(0, 3)):
        colour = tuple(float(c) for c in _random_colour(rng) * .8)
        p1 = tuple(int(v) for v in rng.integers(0, [w, h]))
        p2 = tuple(int(v) for v in rng.integers(0, [w, h]))
        if rng.random() < .5:
            cv2.line(img, p1, p2, colour, 1, cv2.LINE_AA)
        else:
            axes = tuple(int(v) for v in rng.integers(5, max(6, w // 3), 2))
            cv2.ellipse(img, p1, axes, float(rng.uniform(0, 180)), 0,
                        float(rng.uniform(40, 160)), colour, 1, cv2.LINE_AA)
    return np.clip(img, 0, 255).astype(np.float32)


def _surface(rng: np.random.Generator, colour: np.ndarray, h: int,
             w: int) -> np.ndarray:
    """The object's paint: solid, shaded or textured, over the whole image."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:
        paint = np.broadcast_to(colour, (h, w, 3)).copy()
    elif kind == 1:  # lit from one side
        theta = rng.uniform(0, 2 * np.pi)
        t = (xx * np.cos(theta) + yy * np.sin(theta)) / max(h, w)
        paint = colour * (1.1 - .35 * (t - t.min()))[..., None]
    else:  # stripes or dots in a darker tone
        period = rng.uniform(3, 8)
        if rng.random() < .5:
            theta = rng.uniform(0, np.pi)
            pattern = np.sin(2 * np.pi * (xx * np.cos(theta) +
                                          yy * np.sin(theta)) / period) > 0
        else:
            pattern = (np.hypot(xx % (2 * period) - period,
                                yy % (2 * period) - period) < period * .5)
        paint = colour * (1 - .3 * pattern[..., None])
    return paint


def _composite(img: np.ndarray, paint: np.ndarray, mask: np.ndarray,
               rng: np.random.Generator) -> None:
    """Paint ``mask`` onto ``img`` in place, with a shadow and soft edges."""
    if rng.random() < .5:
        dx, dy = rng.integers(2, 5, 2) * rng.choice([-1, 1], 2)
        shadow = np.roll(mask.astype(np.float32), (dy, dx), (0, 1))
        shadow = cv2.GaussianBlur(shadow, (0, 0), 2.)
        img *= (1 - .45 * shadow)[..., None]
    # Anti-aliased edges: a slightly blurred alpha, but every masked pixel
    # stays mostly object so the annotation matches what is seen.
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), .6)
    alpha = np.maximum(alpha, mask * .8)[..., None]
    img[:] = img * (1 - alpha) + paint * alpha


# --------------------------------------------------------------------------
# scenes
# --------------------------------------------------------------------------
def render_scene(rng: np.random.Generator,
                 img_size: Tuple[int, int],
                 num_objects: int,
                 size_range: Tuple[float, float] = (.18, .45)):
    """Draw one scene.

    Args:
        rng: the random generator (the scene depends on nothing else).
        img_size: (width, height) in pixels.
        num_objects: how many objects to try to place (fewer may fit).
        size_range: object size as a fraction of the shorter image side.

    Returns:
        tuple: the RGB image (uint8, HxWx3) and a list of objects, each a
        dict with ``label``, ``polygons`` and ``visible`` (bool mask).
    """
    w, h = img_size
    img = _background(rng, h, w)
    objects: List[dict] = []
    short = min(w, h)
    for _ in range(num_objects):
        for _attempt in range(30):
            label = int(rng.integers(len(CLASSES)))
            size = rng.uniform(*size_range) * short
            half = size * .72  # rotated rectangles reach 0.71
            cx = rng.uniform(half, w - half)
            cy = rng.uniform(half, h - half)
            polys = _shape_polygons(rng, label, cx, cy, size)
            mask = _poly_mask(polys[0], h, w)
            for hole in polys[1:]:
                mask &= ~_poly_mask(hole, h, w)
            if mask.sum() < 16:
                continue
            # Keep every earlier object mostly visible.
            if all((o['visible'] & ~mask).sum() >= MIN_VISIBLE * o['area']
                   for o in objects):
                break
        else:
            continue  # the scene is full
        for colour_try in range(10):
            colour = _random_colour(rng)
            under = img[mask].mean(0)
            if np.linalg.norm(colour - under) >= MIN_CONTRAST:
                break
        _composite(img, _surface(rng, colour, h, w), mask, rng)
        for o in objects:
            o['visible'] &= ~mask
        objects.append(dict(label=label, polygons=polys, visible=mask,
                            area=int(mask.sum())))
    # Camera: exposure, blur, sensor noise.
    img = img * rng.uniform(.85, 1.15) + rng.uniform(-15, 15)
    if rng.random() < .3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(.4, .9))
    img = img + rng.normal(0, rng.uniform(2, 7), img.shape)
    return np.clip(img, 0, 255).round().astype(np.uint8), objects


def _annotation(obj: dict, ann_id: int, image_id: int) -> dict:
    visible = obj['visible']
    rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
    fully_visible = int(visible.sum()) == obj['area']
    if fully_visible and len(obj['polygons']) == 1:
        segmentation = [
            [round(float(v), 2) for v in obj['polygons'][0].reshape(-1)]
        ]
    else:
        segmentation = dict(size=[int(s) for s in rle['size']],
                            counts=rle['counts'].decode('ascii'))
    return dict(
        id=ann_id,
        image_id=image_id,
        category_id=obj['label'] + 1,
        bbox=[round(float(v), 2) for v in mask_utils.toBbox(rle)],
        area=float(mask_utils.area(rle)),
        segmentation=segmentation,
        iscrowd=0)


def _write_split(out_dir: str, split: str, num_images: int,
                 img_size: Tuple[int, int], objects_range: Tuple[int, int],
                 size_range: Tuple[float, float],
                 seed_seq: np.random.SeedSequence) -> dict:
    img_dir = osp.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    images, annotations = [], []
    # One child seed per image: image k is the same whatever num_images is.
    for image_id, child in enumerate(seed_seq.spawn(num_images), 1):
        rng = np.random.default_rng(child)
        num_objects = int(rng.integers(objects_range[0], objects_range[1] + 1))
        img, objects = render_scene(rng, img_size, num_objects, size_range)
        name = f'{image_id:06d}.png'
        cv2.imwrite(osp.join(img_dir, name), img[..., ::-1])
        images.append(dict(id=image_id, file_name=name, width=img_size[0],
                           height=img_size[1]))
        for obj in objects:
            annotations.append(
                _annotation(obj, len(annotations) + 1, image_id))
    coco = dict(
        info=dict(description='mmtranscnn synthetic shapes', version='1'),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=[dict(id=i + 1, name=n, supercategory='shape')
                    for i, n in enumerate(CLASSES)])
    ann_file = osp.join(out_dir, 'annotations', f'instances_{split}.json')
    os.makedirs(osp.dirname(ann_file), exist_ok=True)
    with open(ann_file, 'w') as f:
        json.dump(coco, f)
    return dict(images=len(images), objects=len(annotations),
                ann_file=osp.relpath(ann_file, out_dir))


def make_shapes_coco(out_dir: str,
                     num_train: int = 400,
                     num_val: int = 80,
                     img_size: Sequence[int] = (160, 160),
                     objects: Sequence[int] = (1, 4),
                     size_range: Sequence[float] = (.18, .45),
                     seed: int = 0,
                     overwrite: bool = False) -> Dict[str, dict]:
    """Write the dataset to ``out_dir`` unless the same one is already there.

    Args:
        out_dir: where to write (created).
        num_train: training images. Default: 400.
        num_val: validation images. Default: 80.
        img_size: (width, height) of every image. Default: (160, 160).
        objects: (least, most) objects tried per image. Default: (1, 4).
        size_range: object size as a fraction of the shorter side.
            Default: (0.18, 0.45).
        seed: the random seed; the data depend on the arguments only.
        overwrite: regenerate even if ``out_dir`` holds this very dataset.

    Returns:
        dict: per split, the number of images and objects and the
        annotation file; ``generated`` tells whether anything was written.
    """
    img_size = tuple(int(v) for v in (
        (img_size, img_size) if np.isscalar(img_size) else img_size))
    if len(img_size) != 2 or min(img_size) < 32:
        raise ValueError(f'img_size must be (width, height), each >= 32, got '
                         f'{img_size!r}')
    lo, hi = (int(v) for v in objects)
    if not 1 <= lo <= hi:
        raise ValueError(f'objects must be (least, most) with '
                         f'1 <= least <= most, got {objects!r}')
    size_range = tuple(float(v) for v in size_range)
    if not 0 < size_range[0] <= size_range[1] <= .8:
        raise ValueError(f'size_range must satisfy 0 < low <= high <= 0.8, '
                         f'got {size_range!r}')
    if num_train < 1 or num_val < 1:
        raise ValueError(f'num_train and num_val must be >= 1, got '
                         f'{num_train} and {num_val}')
    params = dict(version=GENERATOR_VERSION, num_train=int(num_train),
                  num_val=int(num_val), img_size=list(img_size),
                  objects=[lo, hi], size_range=list(size_range),
                  seed=int(seed), classes=list(CLASSES))
    meta_file = osp.join(out_dir, META_FILE)
    if not overwrite and osp.isfile(meta_file):
        with open(meta_file) as f:
            meta = json.load(f)
        if meta.get('params') == params:
            return _absolute(out_dir, meta['splits'], generated=False)
    for split in ('train', 'val'):
        shutil.rmtree(osp.join(out_dir, split), ignore_errors=True)
    # Independent streams per split: val does not change with num_train.
    train_seq, val_seq = np.random.SeedSequence(seed).spawn(2)
    splits = {
        'train': _write_split(out_dir, 'train', num_train, img_size,
                              (lo, hi), size_range, train_seq),
        'val': _write_split(out_dir, 'val', num_val, img_size, (lo, hi),
                            size_range, val_seq),
    }
    with open(meta_file, 'w') as f:
        json.dump(dict(params=params, splits=splits), f, indent=1)
    return _absolute(out_dir, splits, generated=True)


def _absolute(out_dir: str, splits: dict, generated: bool) -> dict:
    """The splits' info with annotation files as paths, not relative."""
    result = {k: dict(v, ann_file=osp.join(out_dir, v['ann_file']))
              for k, v in splits.items()}
    return dict(result, generated=generated)


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/shapes',
                        help='output directory (default: data/shapes)')
    parser.add_argument('--num-train', type=int, default=400)
    parser.add_argument('--num-val', type=int, default=80)
    parser.add_argument('--img-size', type=int, nargs='+', default=[160],
                        help='W [H] of the images (default: 160)')
    parser.add_argument('--objects', type=int, nargs=2, default=[1, 4],
                        metavar=('LEAST', 'MOST'),
                        help='objects tried per image (default: 1 4)')
    parser.add_argument('--size-range', type=float, nargs=2,
                        default=[.18, .45], metavar=('LOW', 'HIGH'),
                        help='object size as a fraction of the shorter '
                        'side (default: 0.18 0.45)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--overwrite', action='store_true',
                        help='regenerate even if the same data exist')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    size = args.img_size * 2 if len(args.img_size) == 1 else args.img_size
    result = make_shapes_coco(args.out, args.num_train, args.num_val, size,
                              args.objects, args.size_range, seed=args.seed,
                              overwrite=args.overwrite)
    state = 'generated' if result['generated'] else 'already present'
    for split in ('train', 'val'):
        info = result[split]
        print(f'{split}: {info["images"]} images, {info["objects"]} objects '
              f'-> {info["ann_file"]} ({state})')


if __name__ == '__main__':
    main()
