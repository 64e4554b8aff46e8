"""Generate a tiny dataset in the ADE20K (ADEChallengeData2016) layout.

Outdoor scenes drawn from a seed: a sky with soft clouds above a textured
grass field, buildings with window grids on the horizon, trees (trunk and
blotchy canopy), cars with wheels, and an occasional sign labelled 0
("other", which ``reduce_zero_label`` turns into the ignore index).
Shapes occlude each other back to front, so the label maps have the thin
parts, holes and touching regions of real annotations.

The output is what mmseg's ``ADE20KDataset`` reads::

    OUT/images/training/ADE_train_00000001.jpg
    OUT/images/validation/ADE_val_00000001.jpg
    OUT/annotations/training/ADE_train_00000001.png   (uint8, 0 = other)
    OUT/annotations/validation/ADE_val_00000001.png

Label values are ADE20K's (1-based, before ``reduce_zero_label``): see
:data:`CLASSES`. The same seed and arguments give the same files, and every
image depends only on (seed, split, index), not on how many are made.

Example::

    python tools/data/make_tiny_ade.py data/tiny_ade --num-train 16 \
        --num-val 4 --size 128 --seed 0
"""
import argparse
import os
import os.path as osp
import sys
from typing import Callable, Dict, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# ADE20K label values (index in ADE20KDataset.METAINFO['classes'] + 1).
CLASSES: Dict[str, int] = {
    'other': 0,
    'building': 2,
    'sky': 3,
    'tree': 5,
    'grass': 10,
    'car': 21,
}
SPLITS = {'training': 'train', 'validation': 'val'}
# Aspect ratios (width / height) images are drawn with: ADE20K images are
# mostly landscape, and non-square images exercise whole-image testing.
ASPECTS = (1.0, 1.25, 1.5)


# -- textures ---------------------------------------------------------------
def smooth_noise(rng: np.random.Generator, h: int, w: int,
                 cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled."""
    grid = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray((grid * 255).astype(np.uint8))
    return np.asarray(img.resize((w, h), Image.BICUBIC),
                      dtype=np.float32) / 255.


def texture(rng: np.random.Generator, h: int, w: int, colour,
            fine: float = 12., coarse: float = 25.,
            cells: int = 6) -> np.ndarray:
    """A colour with coarse blotches and fine grain, (h, w, 3) float32."""
    base = np.asarray(colour, np.float32)[None, None, :]
    blotch = (smooth_noise(rng, h, w, cells) - .5)[..., None] * 2 * coarse
    grain = rng.normal(0., fine, (h, w, 1)).astype(np.float32)
    return base + blotch + grain


def sky_texture(rng, h, w):
    """Blue vertical gradient with white clouds."""
    t = np.linspace(0., 1., h, dtype=np.float32)[:, None, None]
    top = np.array([60, 110, 200], np.float32)
    bottom = np.array([170, 200, 235], np.float32)
    sky = top * (1 - t) + bottom * t + np.zeros((h, w, 3), np.float32)
    clouds = np.clip(smooth_noise(rng, h, w, 5) * 2.2 - 1.3, 0, 1)[..., None]
    return sky * (1 - clouds) + 245. * clouds


def grass_texture(rng, h, w):
    """Green with fine grain and faint mowing stripes."""
    g = texture(rng, h, w, (70, 140, 50), fine=18., coarse=20.)
    period = rng.uniform(6, 14)
    stripes = np.sin(np.arange(w, dtype=np.float32) * 2 * np.pi / period)
    return g + 8. * stripes[None, :, None]


def building_texture(rng, h, w):
    """Grey-brown facade."""
    shade = rng.uniform(90, 170)
    tint = rng.uniform(-20, 20)
    return texture(rng, h, w, (shade + tint, shade, shade - tint), fine=6.,
                   coarse=10.)


def canopy_texture(rng, h, w):
    """Dark green foliage with strong blotches."""
    return texture(rng, h, w, (35, 95, 35), fine=20., coarse=30., cells=10)


def bark_texture(rng, h, w):
    """Brown bark."""
    return texture(rng, h, w, (95, 65, 40), fine=10., coarse=8.)


def car_texture(rng, h, w):
    """A saturated paint colour with a soft highlight."""
    paint = rng.choice([(190, 30, 30), (30, 60, 170), (220, 200, 40),
                        (230, 230, 230), (40, 40, 45)])
    return texture(rng, h, w, paint, fine=5., coarse=15., cells=3)


def sign_texture(rng, h, w):
    """Orange sign board (the ignored 'other' class)."""
    return texture(rng, h, w, (230, 130, 20), fine=6., coarse=6.)


# -- scene ------------------------------------------------------------------
class Canvas:
    """An RGB image and its label map, painted back to front."""

    def __init__(self, rng: np.random.Generator, h: int, w: int):
        self.rng = rng
        self.h, self.w = h, w
        self.image = np.zeros((h, w, 3), np.float32)
        self.label = np.zeros((h, w), np.uint8)

    def paint(self, draw_fn: Callable[[ImageDraw.ImageDraw], None],
              label: int, tex_fn: Callable) -> np.ndarray:
        """Paint the region ``draw_fn`` fills with a texture and a label.

        Returns:
            np.ndarray: the (h, w) bool mask painted.
        """
        mask_img = Image.new('L', (self.w, self.h), 0)
        draw_fn(ImageDraw.Draw(mask_img))
        mask = np.asarray(mask_img) > 127
        if mask.any():
            tex = tex_fn(self.rng, self.h, self.w)
            self.image[mask] = tex[mask]
            self.label[mask] = label
        return mask


def draw_building(c: Canvas, horizon: int) -> None:
    w = int(c.rng.uniform(.15, .35) * c.w)
    h = int(c.rng.uniform(.3, .8) * horizon)
    x0 = int(c.rng.uniform(-.1, .9) * c.w)
    box = (x0, horizon - h, x0 + w, horizon + 2)
    mask = c.paint(lambda d: d.rectangle(box, fill=255), CLASSES['building'],
                   building_texture)
    # Windows darken the facade but stay 'building', as in ADE's coarse
    # labels for distant buildings.
    step = max(4, w // 5)
    win = np.zeros_like(mask)
    for y in range(box[1] + step // 2, box[3] - step, step):
        for x in range(box[0] + step // 3, box[2] - step // 2, step):
            win[max(y, 0):max(y + step // 2, 0),
                max(x, 0):max(x + step // 2, 0)] = True
    win &= mask
    c.image[win] *= 0.45


def draw_tree(c: Canvas, horizon: int) -> None:
    cx = c.rng.uniform(0, c.w)
    base = horizon + c.rng.uniform(0, .25) * (c.h - horizon)
    height = c.rng.uniform(.3, .6) * c.h
    trunk_w = max(2., height * .08)
    top = base - height
    c.paint(lambda d: d.rectangle((cx - trunk_w / 2, base - height * .55,
                                   cx + trunk_w / 2, base), fill=255),
            CLASSES['tree'], bark_texture)
    r = height * c.rng.uniform(.25, .35)
    # A canopy of a few overlapping ellipses reads as foliage, not a disc.
    blobs = [(cx + c.rng.uniform(-.6, .6) * r, top + r + c.rng.uniform(
        -.3, .5) * r, r * c.rng.uniform(.6, 1.)) for _ in range(4)]
    c.paint(lambda d: [d.ellipse((x - s, y - s * .9, x + s, y + s * .9),
                                 fill=255) for x, y, s in blobs],
            CLASSES['tree'], canopy_texture)


def draw_car(c: Canvas, horizon: int) -> None:
    length = c.rng.uniform(.2, .35) * c.w
    height = length * .4
    x0 = c.rng.uniform(-.1, .9) * c.w
    ground = horizon + c.rng.uniform(.35, .95) * (c.h - horizon)
    body = (x0, ground - height * .75, x0 + length, ground - height * .2)
    cabin = (x0 + length * .22, ground - height * 1.15, x0 + length * .72,
             ground - height * .7)
    wheel_r = height * .22

    def shape(d):
        d.rounded_rectangle(body, radius=height * .15, fill=255)
        d.rounded_rectangle(cabin, radius=height * .12, fill=255)
        for wx in (x0 + length * .2, x0 + length * .8):
            d.ellipse((wx - wheel_r, ground - 2 * wheel_r - height * .05,
                       wx + wheel_r, ground - height * .05), fill=255)

    mask = c.paint(shape, CLASSES['car'], car_texture)
    # Dark tyres and glass belong to the car.
    dark = Image.new('L', (c.w, c.h), 0)
    d = ImageDraw.Draw(dark)
    for wx in (x0 + length * .2, x0 + length * .8):
        d.ellipse((wx - wheel_r, ground - 2 * wheel_r - height * .05,
                   wx + wheel_r, ground - height * .05), fill=255)
    inset = height * .08
    d.rectangle((cabin[0] + inset, cabin[1] + inset, cabin[2] - inset,
                 cabin[3]), fill=255)
    dark_mask = (np.asarray(dark) > 127) & mask
    c.image[dark_mask] = c.image[dark_mask] * .25 + 10.


def draw_sign(c: Canvas, horizon: int) -> None:
    x = c.rng.uniform(.05, .95) * c.w
    y = horizon + c.rng.uniform(-.2, .3) * c.h
    s = c.rng.uniform(.04, .08) * c.h
    c.paint(lambda d: d.regular_polygon((x, y, s), 3 + int(c.rng.integers(
        0, 4)), fill=255), CLASSES['other'], sign_texture)


def make_sample(seed: int, split: str, index: int,
                size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one image and its label map.

    Args:
        seed (int): dataset seed.
        split (str): 'training' or 'validation'.
        index (int): image index within the split.
        size (int): image height in pixels; the width is ``size`` times an
            aspect ratio from :data:`ASPECTS`.

    Returns:
        tuple: (H, W, 3) uint8 RGB image and (H, W) uint8 label map.
    """
    rng = np.random.default_rng([seed, list(SPLITS).index(split), index])
    h = size
    w = int(round(size * ASPECTS[int(rng.integers(len(ASPECTS)))]))
    c = Canvas(rng, h, w)
    horizon = int(rng.uniform(.35, .6) * h)
    c.paint(lambda d: d.rectangle((0, 0, w, horizon), fill=255),
            CLASSES['sky'], sky_texture)
    c.paint(lambda d: d.rectangle((0, horizon, w, h), fill=255),
            CLASSES['grass'], grass_texture)
    for _ in range(int(rng.integers(1, 4))):
        draw_building(c, horizon)
    for _ in range(int(rng.integers(1, 3))):
        draw_tree(c, horizon)
    for _ in range(int(rng.integers(0, 3))):
        draw_car(c, horizon)
    if rng.random() < .5:
        draw_sign(c, horizon)
    image = Image.fromarray(np.clip(c.image, 0, 255).astype(np.uint8))
    # A slight blur, as a camera would give; labels stay crisp.
    image = image.filter(ImageFilter.GaussianBlur(radius=.6))
    return np.asarray(image), c.label


def make_tiny_ade(out_dir: str,
                  num_train: int = 16,
                  num_val: int = 4,
                  size: int = 128,
                  seed: int = 0) -> Dict[str, int]:
    """Write the dataset into ``out_dir`` (created if needed).

    Args:
        out_dir (str): dataset root (the config's ``data_root``).
        num_train (int): training images. Defaults to 16.
        num_val (int): validation images. Defaults to 4.
        size (int): image height in pixels, >= 32. Defaults to 128.
        seed (int): random seed. Defaults to 0.

    Returns:
        dict: number of images written per split.
    """
    for name, value, low in (('num_train', num_train, 1),
                             ('num_val', num_val, 1), ('size', size, 32)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f'{name} must be an int >= {low}, got {value!r}')
    counts = {'training': num_train, 'validation': num_val}
    for split, prefix in SPLITS.items():
        img_dir = osp.join(out_dir, 'images', split)
        ann_dir = osp.join(out_dir, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(counts[split]):
            image, label = make_sample(seed, split, i, size)
            stem = f'ADE_{prefix}_{i + 1:08d}'
            Image.fromarray(image).save(
                osp.join(img_dir, stem + '.jpg'), quality=95)
            Image.fromarray(label).save(
                osp.join(ann_dir, stem + '.png'))
    return counts


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Generate a tiny ADE20K-layout segmentation dataset.')
    parser.add_argument('out_dir', help='dataset root to write')
    parser.add_argument('--num-train', type=int, default=16,
                        help='training images (default 16)')
    parser.add_argument('--num-val', type=int, default=4,
                        help='validation images (default 4)')
    parser.add_argument('--size', type=int, default=128,
                        help='image height in pixels (default 128)')
    parser.add_argument('--seed', type=int, default=0,
                        help='random seed (default 0)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        counts = make_tiny_ade(args.out_dir, args.num_train, args.num_val,
                               args.size, args.seed)
    except ValueError as exc:
        sys.exit(f'make_tiny_ade: {exc}')
    print(f'wrote {counts["training"]} training and {counts["validation"]} '
          f'validation images to {args.out_dir}')


if __name__ == '__main__':
    main()
