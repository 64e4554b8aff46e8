"""Draw the H-MHSA attention of one query pixel at every level of a block.

Usage::

    python tools/analysis_tools/vis_attention.py CONFIG CHECKPOINT IMAGE \\
        --point X Y [--stage S] [--block B] [--head H] [--log] \\
        --out FILE.png

The image goes through the config's test pipeline (the one of
``test_dataloader.dataset``, or ``test_pipeline``; steps that load
annotations are left out, as mmdet's inferencer does) and the model's
``data_preprocessor``, so the picture is the image as the model sees it:
resized, cropped or padded. ``X Y`` is a pixel of that resized image (the
picture's axes are in the same pixels); the query is the position of the
stage's feature map that holds it (strides 4, 8, 16, 32 for stages 0-3).
CHECKPOINT is read into the
backbone with :func:`mmtranscnn.models.load_backbone_checkpoint`, strictly
and with ``weights_only`` kept: a checkpoint of the whole model (mmdet,
mmseg, mmpretrain, as mmengine's runner writes it), a backbone-only file or
the authors' released file all work. The model may be any
OpenMMLab model whose ``backbone`` is a TransCNN (the paper's presets or the
released ones, either query form, any grid setting).

The model is not changed. A forward hook on the chosen block's H-MHSA
module records the block's input while the backbone runs; the weights are
then recomputed from that input with the module's own projections and step
methods (``norm``, ``qkv``, ``level0``, ``level0_map``, ``merge_ratio``,
``merge``, ``key_tokens``, ``q``, ``kv``, ``attend``) and
:func:`mmtranscnn.models.hmhsa.grid_partition`, so the released variant
(average pooling by ``pool_ratios``, ``ds_norm`` on the keys, ``grid_norm``
for A0) is covered by the same code. ``tests/test_vis_attention.py`` checks
that the weighted sums of values with these weights, combined as Eq. 12
combines the levels, give the block's output.

What the PNG shows, one panel per level and one for the sum (heads
averaged, or the head ``--head``):

* level 0: the softmax weights of the query's token over the tokens of its
  G0 x G0 grid (the whole map for a stage without grids). All level-0 grids
  are outlined, the query's grid thicker.
* level i > 0: the weights over the merged tokens of the query's grid on
  level i's token map (all merged tokens at the last level), each drawn over
  the region of the stage map it was pooled from; the merged-token cells of
  that grid are outlined. With ``query_from='merged'`` the query is the
  merged token that holds the query pixel, as in Eq. 9-12 (outlined,
  dashed).
* sum: how much each position of the stage's feature map weighs in the
  query's output, Eq. 12 read on the attention weights: every level's
  weight of a token is split evenly over the real positions of the region
  it pools, and the levels are added (each level's weights sum to 1, so
  the panel sums to the number of levels). It follows the direct path
  only: what a merged token already carries from outside its region (the
  level-0 attention inside A0, the lower levels' attention in the
  ``'merged'`` form) and the residual of A0 that the released variant adds
  to the sum are not traced.

Padded keys of a grid that overhangs the map get no weight (the module
masks them); positions outside the image but inside the model input (the
data preprocessor's padding, drawn grey) are real keys for the model and
are shown as such.
"""
import argparse
import math
import os
import os.path as osp
import sys
from typing import List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import Tensor


class UsageError(ValueError):
    """A command-line value outside its allowed range (the message names
    the argument and the range)."""


class Level(NamedTuple):
    """The attention of one query at one H-MHSA level.

    Attributes:
        index: the level (0 for the grids of Eq. 5-7).
        weights: (heads, hk, wk) weights over the level's whole key map,
            zero outside the query's grid.
        region: positions of the stage map per key token along each side
            (1 at level 0; the product of the merge ratios above).
        grid: grid side on the key map, None for attention over all of it.
        cell: ``(top, left, bottom, right)`` of the query's grid on the key
            map, in key tokens, cut to the map.
        output: (C,) the weighted sum of the values, heads side by side:
            this level's attention output for the query.
    """
    index: int
    weights: Tensor
    region: int
    grid: Optional[int]
    cell: Tuple[int, int, int, int]
    output: Tensor


# -- the weights ---------------------------------------------------------
def _attend_one(q: Tensor, k: Tensor, v: Tensor,
                real: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Softmax weights of one query over one grid's keys, and the output.

    Args:
        q: (1, heads, 1, head_dim) the query.
        k, v: (1, heads, L, head_dim) the grid's keys and values.
        real: (1, 1, 1, L) bool mask of real keys, or None.

    Returns:
        ``(weights, output)``: (heads, L) and (C,), heads side by side.
    """
    # SDPA's default scale, 1/sqrt(head_dim), as the module calls it.
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1]**-0.5
    if real is not None:
        scores = scores.masked_fill(~real, float('-inf'))
    weights = scores.softmax(-1)  # (1, heads, 1, L)
    out = (weights @ v).transpose(1, 2).flatten(1)  # (1, C)
    return weights[0, :, 0], out[0]


def _grid_of(t: Tensor, g: Optional[int], ky: int, kx: int):
    """The grid of map ``t`` that holds position (ky, kx), cut as the
    module cuts it.

    Args:
        t: (1, h, w, D) map.
        g: grid side, or None for one grid over the whole map.
        ky, kx: a position on the map.

    Returns:
        ``(tokens, real, cell, index)``: the (1, L, D) tokens of the grid,
        its (1, 1, 1, L) mask of real positions or None, its ``(top,
        left, bottom, right)`` on the map (cut to the map), and the
        query's index among the L tokens.
    """
    from mmtranscnn.models.hmhsa import grid_partition
    h, w = t.shape[1:3]
    if g is None:
        return t.reshape(1, h * w, -1), None, (0, 0, h, w), ky * w + kx
    grids, real = grid_partition(t, g)
    gy, gx = ky // g, kx // g
    n = gy * math.ceil(w / g) + gx
    cell = (gy * g, gx * g, min((gy + 1) * g, h), min((gx + 1) * g, w))
    index = (ky % g) * g + kx % g
    return (grids[n:n + 1], None if real is None else real[n:n + 1], cell,
            index)


def _weights_map(weights: Tensor, hk: int, wk: int, g: Optional[int],
                 cell: Tuple[int, int, int, int]) -> Tensor:
    """(heads, L) weights of one grid -> (heads, hk, wk) over the map."""
    heads = weights.shape[0]
    if g is None:
        return weights.reshape(heads, hk, wk)
    top, left, bottom, right = cell
    out = weights.new_zeros(heads, hk, wk)
    # A grid that overhangs the map is padded at its bottom/right only.
    out[:, top:bottom, left:right] = weights.reshape(
        heads, g, g)[:, :bottom - top, :right - left]
    return out


def attention_levels(attn, x: Tensor, y: int, x_pos: int) -> List[Level]:
    """Recompute the attention of the query at (y, x_pos) at every level.

    Follows ``HMHSA.forward`` / ``higher_levels`` step by step with the
    module's own methods, so a variant that overrides a step is followed.

    Args:
        attn: an ``HMHSA`` (or ``ReleasedHMHSA``) module in eval mode.
        x: (1, C, H, W) the block's input, as the forward hook saw it.
        y, x_pos: the query position on the stage map.

    Returns:
        One :class:`Level` per level, level 0 first.
    """
    tokens = attn.norm(x).permute(0, 2, 3, 1)  # X, (1, H, W, C)
    h, w = tokens.shape[1:3]
    grids = attn.grid_sizes
    g0 = grids[0] if grids else None
    # Level 0 (Eq. 5-6): the query's grid, projected as the module does.
    grid, real, cell, index = _grid_of(tokens, g0, y, x_pos)
    q, k, v = attn.split_heads(attn.qkv(grid), 3)
    weights, out = _attend_one(q[:, :, index:index + 1], k, v, real)
    levels = [Level(0, _weights_map(weights, h, w, g0, cell), 1, g0, cell,
                    out)]
    if not attn.hierarchical:
        return levels
    attn0 = attn.level0(tokens)
    a0 = attn.level0_map(x, tokens, attn0)  # Eq. 7
    queries = attn.q(a0) if attn.query_from == 'full' else None
    prev, region = a0, 1
    for level in range(1, len(grids) + 1):
        ratio = attn.merge_ratio(level)
        merged = attn.merge(prev, ratio)  # Eq. 8
        region *= ratio
        g = grids[level] if level < len(grids) else None
        keys = attn.key_tokens(merged)
        kv = attn.kv(keys)
        ky, kx = y // region, x_pos // region
        if queries is not None:  # §4.1: the query at full resolution
            query = queries[:, y, x_pos]
            prev = merged
        else:  # Eq. 9-11: the merged token that holds the query
            q_map = attn.q(keys)
            query = q_map[:, ky, kx]
            prev = merged + attn.attend(q_map, kv, g)
        grid, real, cell, _ = _grid_of(kv, g, ky, kx)
        q, k, v = attn.split_heads(grid, 2, query[:, None])
        weights, out = _attend_one(q, k, v, real)
        hk, wk = kv.shape[1:3]
        levels.append(Level(level, _weights_map(weights, hk, wk, g, cell),
                            region, g, cell, out))
    return levels


def block_output(attn, x: Tensor, levels: List[Level], y: int,
                 x_pos: int) -> Tensor:
    """The block's output at the query, rebuilt from the levels' outputs.

    Eq. 12 with the module's own level-0 term (``attn_0`` in the paper's
    form; ``A0 = norm(X + attn_0)`` in the released one, where the query's
    ``attn_0`` is the recomputed one): ``x + proj(term_0 + sum_i out_i)``.

    Args:
        attn: the H-MHSA module.
        x: (1, C, H, W) the block's input.
        levels: :func:`attention_levels` of the query.
        y, x_pos: the query position.

    Returns:
        (C,) the output at the query.
    """
    total = levels[0].output
    if attn.hierarchical:
        tokens = attn.norm(x).permute(0, 2, 3, 1)
        attn0 = attn.level0(tokens).clone()
        attn0[0, y, x_pos] = levels[0].output
        a0 = attn.level0_map(x, tokens, attn0)
        total = attn.level0_term(attn0, a0)[0, y, x_pos]
        for level in levels[1:]:
            total = total + level.output
    return x[0, :, y, x_pos] + attn.proj(total)


def contributions(levels: List[Level], h: int, w: int) -> Tensor:
    """(heads, h, w): each level's token weights split evenly over the real
    stage-map positions of their regions, summed over the levels."""
    total = None
    for level in levels:
        r = level.region
        per_pos = level.weights.repeat_interleave(r, 1).repeat_interleave(
            r, 2)[:, :h, :w]
        rows = torch.arange(level.weights.shape[1]) * r
        n_rows = (h - rows).clamp(max=r).repeat_interleave(r)[:h]
        cols = torch.arange(level.weights.shape[2]) * r
        n_cols = (w - cols).clamp(max=r).repeat_interleave(r)[:w]
        share = per_pos / (n_rows[:, None] * n_cols[None, :]).to(per_pos)
        total = share if total is None else total + share
    return total


# -- model, image, block -------------------------------------------------
def load_model(config: str, checkpoint: str, device: str = 'cpu',
               cfg_options: Optional[dict] = None):
    """Build the config's model and read CHECKPOINT into its backbone.

    Args:
        config: an mmdet / mmseg / mmpretrain config file.
        checkpoint: a checkpoint file (see the module docstring).
        device: torch device name.
        cfg_options: config overrides, as ``--cfg-options`` gives them.

    Returns:
        ``(model, cfg)``, the model in eval mode on ``device``.
    """
    from mmengine.config import Config
    from mmengine.registry import MODELS

    from mmtranscnn.engine import setup_codebase
    from mmtranscnn.models import TransCNN, load_backbone_checkpoint
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    setup_codebase(cfg)
    model_cfg = cfg.model
    # The weights come from CHECKPOINT only: never read the init_cfg's file.
    if isinstance(model_cfg.get('backbone'), dict):
        model_cfg.backbone.init_cfg = None
    model_cfg.pop('pretrained', None)
    model = MODELS.build(model_cfg)
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, TransCNN) or not hasattr(
            model, 'data_preprocessor'):
        raise UsageError(
            f'config: the model must be an OpenMMLab model with a '
            f'data_preprocessor and a TransCNN backbone, got '
            f'{type(model).__name__} with backbone '
            f'{type(backbone).__name__}')
    load_backbone_checkpoint(backbone, checkpoint, strict=True)
    return model.to(device).eval(), cfg


def _test_pipeline(cfg) -> list:
    """The config's test pipeline without its annotation loaders."""
    dataset = cfg.get('test_dataloader', {}).get('dataset', {})
    while 'pipeline' not in dataset and 'dataset' in dataset:
        dataset = dataset['dataset']  # wrappers such as RepeatDataset
    pipeline = dataset.get('pipeline') or cfg.get('test_pipeline')
    if not pipeline:
        raise UsageError('config: no test pipeline (test_dataloader.dataset.'
                         'pipeline or test_pipeline) to read the image with')
    # No annotations exist for an arbitrary image (mmdet's inferencer drops
    # these steps too).
    return [step for step in pipeline if 'Annotation' not in step['type']]


def preprocess(model, cfg, image: str) -> Tuple[Tensor, np.ndarray]:
    """The image as the model sees it.

    Args:
        model: the model (its ``data_preprocessor`` is applied).
        cfg: its config (the test pipeline is read from it).
        image: an image file.

    Returns:
        ``(inputs, picture)``: the (1, C, Hp, Wp) batch the backbone gets
        and the (h, w, 3) uint8 RGB image after the pipeline (h <= Hp,
        w <= Wp; the rest of the input is the preprocessor's padding).
    """
    from mmengine.dataset import Compose, pseudo_collate
    if not osp.isfile(image):
        raise UsageError(f'image: file not found: {image}')
    packed = Compose(_test_pipeline(cfg))(dict(img_path=image, img_id=0))
    picture = packed['inputs'].permute(1, 2, 0).cpu().numpy()
    if picture.shape[2] == 3:
        picture = picture[..., ::-1]  # mmcv loads BGR
    batch = model.data_preprocessor(pseudo_collate([packed]), False)
    return batch['inputs'], np.ascontiguousarray(picture)


def find_block(backbone, stage: int, block: int):
    """The H-MHSA module of block ``block`` of stage ``stage``.

    Raises:
        UsageError: no such stage or block, or the stage does not run.
    """
    from mmtranscnn.models import HMHSA
    run = max(backbone.out_indices) + 1  # later stages are never run
    if not 0 <= stage < run:
        extra = ('' if run == len(backbone.stages) else
                 f' (the backbone has {len(backbone.stages)} but its '
                 f'out_indices={backbone.out_indices} stop the forward '
                 f'after stage {run - 1})')
        raise UsageError(f'--stage {stage} does not exist: allowed stages '
                         f'are 0..{run - 1}{extra}')
    blocks = [m.attn for m in backbone.stages[stage]
              if isinstance(getattr(m, 'attn', None), HMHSA)]
    if not 0 <= block < len(blocks):
        raise UsageError(f'--block {block} does not exist in stage {stage}: '
                         f'allowed blocks are 0..{len(blocks) - 1}')
    return blocks[block]


def capture_block_input(backbone, attn, inputs: Tensor) -> Tuple[Tensor,
                                                                Tensor]:
    """Run the backbone and return the input and output of ``attn``,
    recorded by a forward hook (removed afterwards)."""
    seen = {}

    def hook(module, args, output):
        seen['x'], seen['out'] = args[0], output

    handle = attn.register_forward_hook(hook)
    try:
        with torch.no_grad():
            backbone(inputs)
    finally:
        handle.remove()
    return seen['x'], seen['out']


# -- drawing -------------------------------------------------------------
def _head_view(t: Tensor, head: Optional[int]) -> np.ndarray:
    t = t.mean(0) if head is None else t[head]
    return t.double().cpu().numpy()


def _lines(ax, start: int, stop: int, step: int, other: Tuple[int, int],
           vertical: bool, **style) -> None:
    """Grid lines every ``step`` pixels from ``start`` to ``stop``."""
    if step < 3:  # denser than this only paints the picture over
        return
    for pos in range(start, stop + 1, step):
        if vertical:
            ax.plot([pos, pos], other, **style)
        else:
            ax.plot(other, [pos, pos], **style)


def _outline(ax, box: Tuple[int, int, int, int], **style) -> None:
    top, left, bottom, right = box
    ax.plot([left, right, right, left, left], [top, top, bottom, bottom, top],
            **style)


def draw(out: str, picture: np.ndarray, input_hw: Tuple[int, int],
         stride: int, levels: List[Level], stage_hw: Tuple[int, int],
         point: Tuple[int, int], head: Optional[int], title: str,
         merged_queries: bool = False, log: bool = False) -> None:
    """Write the panels (one per level, then the sum) as a PNG.

    Args:
        out: the PNG file.
        picture: (h, w, 3) uint8 RGB image after the test pipeline.
        input_hw: (Hp, Wp) size of the model input (padding included).
        stride: pixels per stage-map position.
        levels: the query's :class:`Level` list.
        stage_hw: (H, W) of the stage map.
        point: the query (X, Y) in pixels.
        head: the head shown, None for the mean over heads.
        title: the figure's title.
        merged_queries: the levels above 0 query from the merged token
            that holds the pixel (``query_from='merged'``); it is outlined.
        log: a logarithmic colour scale (down to 1e-3 of each panel's
            largest value) instead of a linear one from 0.
    """
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure
    hp, wp = input_hw
    canvas = np.full((hp, wp, 3), 127, np.uint8)  # grey: padding
    canvas[:picture.shape[0], :picture.shape[1]] = picture
    extent_img = (0, wp, hp, 0)
    panels = len(levels) + 1
    cols = min(panels, 4)
    rows = math.ceil(panels / cols)
    side = 4.0
    fig = Figure(figsize=(side * cols * 1.25,
                          side * rows * max(hp / wp, 0.4) + 0.8))
    thin = dict(color='white', lw=0.6, alpha=0.7)
    thick = dict(color='cyan', lw=2.0)
    sy, sx = stage_hw
    for i in range(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(canvas, extent=extent_img, interpolation='nearest')
        if i < len(levels):
            level = levels[i]
            cell_px = level.region * stride
            values = _head_view(level.weights, head)
            top, left, bottom, right = level.cell
            shown = np.ma.masked_all(values.shape)
            shown[top:bottom, left:right] = values[top:bottom, left:right]
            extent = (0, values.shape[1] * cell_px,
                      values.shape[0] * cell_px, 0)
            box = tuple(v * cell_px for v in level.cell)
            if i == 0:
                g_px = (level.grid or max(sy, sx)) * stride
                _lines(ax, 0, sy * stride, g_px, (0, sx * stride), False,
                       **thin)
                _lines(ax, 0, sx * stride, g_px, (0, sy * stride), True,
                       **thin)
                what = (f'{level.grid}x{level.grid} grid' if level.grid
                        else 'whole map')
                name = f'level 0 ({what})'
            else:
                _lines(ax, box[0], box[2], cell_px, (box[1], box[3]), False,
                       **thin)
                _lines(ax, box[1], box[3], cell_px, (box[0], box[2]), True,
                       **thin)
                what = (f'{level.grid}x{level.grid} grid' if level.grid
                        else 'all tokens')
                name = (f'level {level.index} ({level.region}x'
                        f'{level.region}-merged tokens, {what})')
            _outline(ax, box, **thick)
            if merged_queries and i > 0:
                qy, qx = (p // stride // level.region for p in point[::-1])
                _outline(ax, (qy * cell_px, qx * cell_px,
                              (qy + 1) * cell_px, (qx + 1) * cell_px),
                         color='lime', lw=1.2, ls='--')
            label = 'attention weight'
        else:
            shown = _head_view(contributions(levels, sy, sx), head)
            shown = np.ma.masked_equal(shown, 0)
            extent = (0, sx * stride, sy * stride, 0)
            name = 'sum over levels (Eq. 12)'
            label = 'weight per stage position'
        top_value = float(shown.max()) or 1.
        norm = (LogNorm(top_value * 1e-3, top_value, clip=True) if log else
                Normalize(0, top_value))
        im = ax.imshow(shown, extent=extent, cmap='inferno', alpha=0.65,
                       interpolation='nearest', norm=norm)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label=label)
        ax.plot(point[0] + 0.5, point[1] + 0.5, marker='+', color='lime',
                ms=12, mew=2)
        ax.set_xlim(0, wp)
        ax.set_ylim(hp, 0)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out_dir = osp.dirname(osp.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(out, dpi=100)


# -- command line --------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description='Draw the H-MHSA attention weights of one query pixel '
        'at every level of one TransCNN block, and their sum, over the '
        'image as the model sees it.')
    parser.add_argument('config', help='mmdet / mmseg / mmpretrain config')
    parser.add_argument('checkpoint', help='checkpoint (whole model or '
                        'backbone)')
    parser.add_argument('image', help='image file')
    parser.add_argument('--point', type=int, nargs=2, required=True,
                        metavar=('X', 'Y'),
                        help='query pixel, in the image as the test '
                        'pipeline resizes it')
    parser.add_argument('--stage', type=int, default=0,
                        help='backbone stage, 0..3 for strides 4..32 '
                        '(default: 0)')
    parser.add_argument('--block', type=int, default=0,
                        help='block within the stage (default: 0)')
    parser.add_argument('--head', type=int, default=None,
                        help='one attention head (default: the mean over '
                        'heads)')
    parser.add_argument('--log', action='store_true',
                        help='logarithmic colour scale (down to 1e-3 of '
                        'each panel\'s largest value)')
    parser.add_argument('--out', required=True, help='PNG file to write')
    parser.add_argument('--device', default='cpu',
                        help='torch device (default: cpu)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def visualise(args) -> dict:
    """Everything ``main`` does, for parsed ``args``.

    Returns:
        dict: ``levels`` (:class:`Level` list), ``token`` (the query on
        the stage map) and ``stride``.

    Raises:
        UsageError: a value outside its allowed range.
    """
    for name in ('config', 'image') + (() if '://' in args.checkpoint else
                                       ('checkpoint', )):
        if not osp.isfile(getattr(args, name)):
            raise UsageError(f'{name}: file not found: '
                             f'{getattr(args, name)}')
    model, cfg = load_model(args.config, args.checkpoint, args.device,
                            args.cfg_options)
    backbone = model.backbone
    attn = find_block(backbone, args.stage, args.block)
    if args.head is not None and not 0 <= args.head < attn.num_heads:
        raise UsageError(f'--head {args.head} is out of range: stage '
                         f'{args.stage} has {attn.num_heads} heads, allowed '
                         f'0..{attn.num_heads - 1}')
    inputs, picture = preprocess(model, cfg, args.image)
    h_img, w_img = picture.shape[:2]
    px, py = args.point
    if not (0 <= px < w_img and 0 <= py < h_img):
        raise UsageError(
            f'--point {px} {py} is outside the image as the test pipeline '
            f'resizes it ({w_img}x{h_img}): X must be in 0..{w_img - 1} and '
            f'Y in 0..{h_img - 1}')
    x_in, _ = capture_block_input(backbone, attn, inputs)
    stride = 2**(args.stage + 2)  # stem: 4; every later stage halves
    sy, sx = x_in.shape[2:]
    hp, wp = inputs.shape[2:]
    if (sy, sx) != (math.ceil(hp / stride), math.ceil(wp / stride)):
        raise RuntimeError(f'stage {args.stage} map is {sy}x{sx} for a '
                           f'{hp}x{wp} input: not stride {stride}')
    ty, tx = py // stride, px // stride
    with torch.no_grad():
        levels = attention_levels(attn, x_in, ty, tx)
    heads = (f'head {args.head} of {attn.num_heads}' if args.head is not None
             else f'mean of {attn.num_heads} heads' if attn.num_heads > 1
             else 'one head')
    where = (f'{osp.basename(args.config)}: stage {args.stage} block '
             f'{args.block} ({type(attn).__name__}, '
             f"query_from='{attn.query_from}')\n"
             f'{heads}, query ({px}, {py}) '
             f'= token ({tx}, {ty}) at stride {stride}')
    draw(args.out, picture, (hp, wp), stride, levels, (sy, sx), (px, py),
         args.head, where, attn.query_from == 'merged', args.log)
    return dict(levels=levels, token=(ty, tx), stride=stride)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = visualise(args)
    except UsageError as error:
        parser.error(str(error))
    print(f'levels: {len(result["levels"])} (and their sum) drawn into '
          f'{args.out}')


if __name__ == '__main__':
    sys.exit(main())
