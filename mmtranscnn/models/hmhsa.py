"""Hierarchical Multi-Head Self-Attention (H-MHSA), §3.2 of the paper.

Notation follows the paper. ``X`` is the (normalised) input map of size
H0 x W0. Level 0 attends inside G0 x G0 grids of X (Eq. 5-6); its residual
(Eq. 7) ``A0 = X + attn_0`` is what the next level sees. Level i > 0 merges
every G(i-1) x G(i-1) region into one token with MaxPool + AvgPool (Eq. 8)
and attends inside Gi x Gi grids of the merged map (Eq. 9-10); the last level
attends over all remaining tokens. The output is

    H-MHSA(X) = (attn_0 + ... + Upsample(attn_M)) Wp + X          (Eq. 12)

Two forms of the levels above 0 are provided (``query_from``):

* ``'full'`` (default, the form used for every experiment in §4.1): queries
  come from ``A0`` at full resolution (``Q = A0 Wq``); keys and values come
  from the merged tokens of that level, restricted to the Gi x Gi grid that
  holds the query. Every ``attn_i`` is then already at full resolution and
  nothing is upsampled. The merged tokens of level i+1 are Eq. 8 applied to
  the merged tokens of level i (a pyramid over ``A0``).
* ``'merged'`` (Eq. 9-12 literally): queries, keys and values come from the
  merged map; ``A_i = A'_(i-1) + attn_i`` (Eq. 11) feeds the next merge and
  ``attn_i`` is upsampled (nearest, i.e. each merged token is copied back to
  the region it was pooled from) before the sum.

Reading of Eq. 7/11/12 chosen here: the residuals of Eq. 7 and 11 form the
maps that are merged for the next level, while the sum of Eq. 12 adds the
attention outputs ``attn_i``. With a single level this is exactly plain MHSA
(Eq. 1-2: ``attn Wp + X``), as the paper states H-MHSA generalises it.

The authors' released networks (``TransCNN.py`` and ``HAT_Net.py``, whose
ImageNet weights are published) read these equations differently in five
places. Each is an option here, so the same module computes either function
(docs/released_weights.md lists every difference):

* ``level0_shortcut='input'``: Eq. 7 adds the block input X itself, before
  the pre-norm (ours adds the normalised map the attention saw);
* ``grid_norm_cfg``: a norm on ``A0 = X + attn_0``;
* ``pool_mode='avg'`` and ``pool_ratios``: Eq. 8 is an average pool only,
  by a ratio of its own (8/4/2 per stage) instead of the level-0 grid;
* ``ds_norm_cfg``: a norm on the pooled tokens before the key/value
  projection;
* ``output_sum='level0_map'``: Eq. 12 sums ``A0`` (residual and norm
  included) instead of ``attn_0``, i.e. ``(A0 + attn_1) Wp + X``.

Grid sizes hold no weights: level 0 owns the ``qkv`` projection, all levels
above 0 share one ``q`` and one ``kv`` projection, and pooling is
parameter-free. A state dict therefore loads strictly into a module built
with other grid sizes or more levels, as long as it is hierarchical too.

Maps that are not multiples of a grid are padded at the bottom/right; padded
tokens are masked out of every attention (as keys) and every merge (pooling),
so outputs on real positions do not depend on the padding.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmtranscnn.registry import MODELS

from .fastpath import (Linear, add_residual,
                       scaled_dot_product_attention)

QUERY_FORMS = ('full', 'merged')
POOL_MODES = ('max+avg', 'avg')
LEVEL0_SHORTCUTS = ('normed', 'input')
OUTPUT_SUMS = ('attention', 'level0_map')


def parse_grid_sizes(value: Union[int, Sequence[int], None],
                     field: str = 'grid_sizes') -> Tuple[int, ...]:
    """Normalise one stage's grid setting to a tuple of per-level sizes.

    Args:
        value: an int ``G0`` (one grid level, then plain attention over the
            merged tokens), a sequence ``(G0, G1, ...)`` of per-level grid
            sizes, or ``0`` / ``None`` / an empty sequence for plain
            attention.
        field: the name used in error messages.

    Returns:
        A tuple of positive ints; empty means plain attention.
    """
    if value is None:
        return ()
    if isinstance(value, bool):
        raise ValueError(f'{field} must be an int >= 0 or a sequence of ints '
                         f'>= 1, got {value!r}')
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f'{field} must be >= 0 (0 means plain attention)'
                             f', got {value}')
        return (value, ) if value > 0 else ()
    if isinstance(value, (list, tuple)):
        sizes = tuple(value)
        for i, g in enumerate(sizes):
            if isinstance(g, bool) or not isinstance(g, int) or g < 1:
                raise ValueError(
                    f'{field}[{i}] must be an int >= 1 (a grid side length), '
                    f'got {g!r}; use 0 or [] for plain attention')
        return sizes
    raise ValueError(f'{field} must be an int >= 0 or a sequence of ints >= 1,'
                     f' got {type(value).__name__} {value!r}')


def _pad_bottom_right(t: Tensor, ph: int, pw: int, value: float = 0.) -> Tensor:
    """Pad a (B, H, W, C) tensor by ``ph`` rows and ``pw`` columns."""
    if ph == 0 and pw == 0:
        return t
    b, h, w = t.shape[:3]
    # Like F.pad, without first filling the whole output: only the new rows
    # and columns are written besides the copy.
    out = t.new_empty((b, h + ph, w + pw) + tuple(t.shape[3:]))
    out[:, :h, :w] = t
    out[:, h:] = value
    out[:, :h, w:] = value
    return out


def _partition(t: Tensor, gh: int, gw: int) -> Tensor:
    """(B, H, W, ...) -> (B * H/gh * W/gw, gh * gw, ...), row-major grids."""
    b, h, w = t.shape[:3]
    rest = t.shape[3:]
    t = t.reshape(b, h // gh, gh, w // gw, gw, *rest)
    t = t.transpose(2, 3)
    return t.reshape(b * (h // gh) * (w // gw), gh * gw, *rest)


def _windows(t: Tensor, g: Optional[int], parts: int,
             heads: int) -> Tensor:
    """Packed projections to SDPA's layout, one grid per batch entry.

    Args:
        t: (B, H, W, parts * C) map holding ``parts`` projections side by
            side (q|k|v or k|v), H and W multiples of ``g``.
        g: grid side, or None for one grid over the whole map.
        parts: how many projections ``t`` packs.
        heads: attention heads (C = heads * head_dim).

    Returns:
        (parts, N, heads, L, head_dim) with N = B * H/g * W/g, L = g * g
        (N = B, L = H * W for ``g=None``), a view of one copy (none for
        ``g=None``) whose memory order is (N, L, parts, heads, head_dim):
        the copy moves whole rows of a grid (g * parts * C contiguous
        values) and SDPA reads the parts and heads through strides.
    """
    b, h, w, packed = t.shape
    d = packed // (parts * heads)
    if g is not None:
        t = t.reshape(b, h // g, g, w // g, g, packed).transpose(2, 3)
        h, w, b = g, g, b * (h // g) * (w // g)
    return t.reshape(b, h * w, parts, heads, d).permute(2, 0, 3, 1, 4)


def _unwindows(t: Tensor, b: int, h: int, w: int,
               g: Optional[int]) -> Tensor:
    """Inverse of :func:`_windows` for one part: (N, heads, L, d) ->
    (B, H, W, C), in one copy (none for ``g=None`` when SDPA returned its
    output in (N, L, heads, d) memory, as the CPU and CUDA kernels do)."""
    t = t.transpose(1, 2)  # (N, L, heads, d)
    c = t.shape[-2] * t.shape[-1]
    if g is None:
        return t.reshape(b, h, w, c)
    t = t.reshape(b, h // g, w // g, g, g, c).transpose(2, 3)
    return t.reshape(b, h, w, c)


def merge_tokens(t: Tensor, valid: Optional[Tensor], g: int,
                 mode: str = 'max+avg') -> Tuple[Tensor, Optional[Tensor]]:
    """Eq. 8: MaxPool_g + AvgPool_g over g x g regions, ignoring padding.

    Args:
        t: (B, H, W, C) map.
        valid: (B, H, W) bool mask of real positions, or None if all are.
        g: region side length (kernel = stride = g).
        mode: ``'max+avg'`` (Eq. 8) or ``'avg'`` (the released code's
            ``AvgPool2d`` alone).

    Returns:
        The merged (B, ceil(H/g), ceil(W/g), C) map and its validity mask
        (a merged token is real when its region holds a real position).
    """
    b, h, w, c = t.shape
    if valid is None:
        # Every position is real, so the only padding is the bottom/right
        # overhang. Pooling with ceil_mode covers it exactly: a window that
        # overhangs takes the max over, and divides the sum by, its real
        # positions only. On a contiguous (B, H, W, C) map the NCHW view is
        # channels-last, which the pooling kernels read without a copy.
        view = t.permute(0, 3, 1, 2)
        merged = F.avg_pool2d(view, g, g, ceil_mode=True)
        if mode == 'max+avg':
            merged = merged + F.max_pool2d(view, g, g, ceil_mode=True)
        return merged.permute(0, 2, 3, 1), None
    ph, pw = (-h) % g, (-w) % g
    t = _pad_bottom_right(t, ph, pw)
    valid = F.pad(valid, (0, pw, 0, ph), value=False)
    hh, ww = (h + ph) // g, (w + pw) // g
    mask = valid.reshape(b, hh, g, ww, g, 1)
    regions = t.reshape(b, hh, g, ww, g, c)
    count = mask.sum(dim=(2, 4))
    mean = regions.masked_fill(~mask, 0.).sum(dim=(2, 4)) / count.clamp(min=1)
    if mode == 'max+avg':
        mean = mean + regions.masked_fill(~mask, float('-inf')).amax(
            dim=(2, 4))
    merged_valid = (count > 0).squeeze(-1)
    merged = mean.masked_fill(~merged_valid.unsqueeze(-1), 0.)
    # The mask is returned as it is, even where every merged token is real:
    # asking the tensor would be a host-device sync on accelerators.
    return merged, merged_valid


@MODELS.register_module()
class HMHSA(BaseModule):
    """Hierarchical multi-head self-attention on (B, C, H, W) maps.

    Args:
        embed_dims (int): channels C of the input and output.
        grid_sizes (int | Sequence[int]): per-level grid sizes
            ``(G0, G1, ...)``; an int means ``(G0,)``. The level after the
            last listed grid (or the first level whose merged map fits in
            one grid) attends over all remaining tokens. 0 or ``()`` means
            plain MHSA. Default: 8.
        head_dim (int): channels per head; C must be a multiple. Default: 64.
        query_from (str): ``'full'`` (queries of levels > 0 from ``A0`` at
            full resolution, as in §4.1) or ``'merged'`` (Eq. 9-12).
            Default: 'full'.
        qkv_bias (bool): bias in the q/k/v projections. Default: True.
        norm_cfg (dict, optional): a norm applied to the input before the
            projections (pre-norm); the residual adds the raw input.
            Default: None (the equations as written).
        attn_drop (float): dropout on attention weights. Default: 0.
        drop_path_rate (float): stochastic depth on the attention branch.
            Default: 0.
        pool_ratios (int | Sequence[int], optional): per-level merge ratios
            ``(R1, R2, ...)``, one per entry of ``grid_sizes``: level i > 0
            pools the previous level's map by ``R_i``. None merges each
            level's grid, ``R_i = G_(i-1)`` (Eq. 8). The released networks
            pool by their own ratio, e.g. window 8 but ratio 4 in stage 3.
            Default: None.
        pool_mode (str): ``'max+avg'`` (Eq. 8) or ``'avg'`` (released).
            Default: 'max+avg'.
        level0_shortcut (str): what Eq. 7 adds to ``attn_0``: ``'normed'``
            (the normalised map the attention saw) or ``'input'`` (the block
            input before ``norm_cfg``, as released). Default: 'normed'.
        grid_norm_cfg (dict, optional): a norm on ``A0`` (released:
            ``grid_norm``). Default: None.
        ds_norm_cfg (dict, optional): a norm on the pooled tokens before
            the key/value projection (released: ``ds_norm``). Default: None.
        output_sum (str): what Eq. 12 adds to the higher levels:
            ``'attention'`` (``attn_0``) or ``'level0_map'`` (``A0`` with
            its shortcut and norm, as released). Default: 'attention'.
        unused_proj_norm_cfg (dict, optional): build a norm named
            ``proj_norm`` that is never applied, with frozen parameters
            (HAT_Net.py builds one in every attention block and never calls
            it; keeping it lets the released files load strictly and the
            parameter count match). Default: None.
        init_cfg (dict, optional): mmengine initialisation config.
    """

    def __init__(self,
                 embed_dims: int,
                 grid_sizes: Union[int, Sequence[int]] = 8,
                 head_dim: int = 64,
                 query_from: str = 'full',
                 qkv_bias: bool = True,
                 norm_cfg: Optional[dict] = None,
                 attn_drop: float = 0.,
                 drop_path_rate: float = 0.,
                 pool_ratios: Union[int, Sequence[int], None] = None,
                 pool_mode: str = 'max+avg',
                 level0_shortcut: str = 'normed',
                 grid_norm_cfg: Optional[dict] = None,
                 ds_norm_cfg: Optional[dict] = None,
                 output_sum: str = 'attention',
                 unused_proj_norm_cfg: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if not isinstance(embed_dims, int) or embed_dims < 1:
            raise ValueError(f'embed_dims must be a positive int, got '
                             f'{embed_dims!r}')
        if not isinstance(head_dim, int) or head_dim < 1 \
                or embed_dims % head_dim:
            raise ValueError(f'head_dim must be a positive divisor of '
                             f'embed_dims={embed_dims}, got {head_dim!r}')
        if query_from not in QUERY_FORMS:
            raise ValueError(f'query_from must be one of {QUERY_FORMS}, got '
                             f'{query_from!r}')
        for field, value, allowed in (
                ('pool_mode', pool_mode, POOL_MODES),
                ('level0_shortcut', level0_shortcut, LEVEL0_SHORTCUTS),
                ('output_sum', output_sum, OUTPUT_SUMS)):
            if value not in allowed:
                raise ValueError(f'{field} must be one of {allowed}, got '
                                 f'{value!r}')
        self.embed_dims = embed_dims
        self.num_heads = embed_dims // head_dim
        self.head_dim = head_dim
        self.grid_sizes = parse_grid_sizes(grid_sizes)
        self.pool_ratios = self._parse_pool_ratios(pool_ratios)
        self.query_from = query_from
        self.attn_drop = attn_drop
        self.pool_mode = pool_mode
        self.level0_shortcut = level0_shortcut
        self.output_sum = output_sum

        self.norm = (build_norm_layer(norm_cfg, embed_dims)[1]
                     if norm_cfg is not None else nn.Identity())
        self.qkv = Linear(embed_dims, 3 * embed_dims, bias=qkv_bias)
        if self.hierarchical:
            # One projection pair for every level above 0: adding levels for
            # larger inputs adds no weights.
            self.q = Linear(embed_dims, embed_dims, bias=qkv_bias)
            self.kv = Linear(embed_dims, 2 * embed_dims, bias=qkv_bias)
        self.proj = Linear(embed_dims, embed_dims)
        self.drop_path = (DropPath(drop_path_rate)
                          if drop_path_rate > 0 else nn.Identity())
        # The released code builds these two only in hierarchical blocks.
        self.grid_norm = self.ds_norm = None
        if self.hierarchical and grid_norm_cfg is not None:
            self.grid_norm = build_norm_layer(grid_norm_cfg, embed_dims)[1]
        if self.hierarchical and ds_norm_cfg is not None:
            self.ds_norm = build_norm_layer(ds_norm_cfg, embed_dims)[1]
        if unused_proj_norm_cfg is not None:
            # HAT-Net's dead layer, kept for its weights only: never called;
            # frozen, so no optimizer or DDP reducer waits for its gradient.
            self.proj_norm = build_norm_layer(unused_proj_norm_cfg,
                                              embed_dims)[1]
            self.proj_norm.requires_grad_(False)

    def _parse_pool_ratios(self, value) -> Tuple[int, ...]:
        """One merge ratio per grid level; defaults to the grids (Eq. 8)."""
        if value is None or (not self.hierarchical and value in (0, ())):
            return self.grid_sizes
        ratios = parse_grid_sizes(value, 'pool_ratios')
        if len(ratios) != len(self.grid_sizes):
            raise ValueError(
                f'pool_ratios needs one ratio per entry of grid_sizes '
                f'{self.grid_sizes} (level i > 0 pools by the i-th), got '
                f'{value!r}')
        return ratios

    @staticmethod
    def _norm_tokens(norm: Optional[nn.Module], t: Tensor) -> Tensor:
        """A (B, C, H, W) norm layer applied to a (B, H, W, C) map."""
        if norm is None:
            return t
        return norm(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    @property
    def hierarchical(self) -> bool:
        """Whether the module has levels above 0 (and their weights)."""
        return len(self.grid_sizes) > 0

    def extra_repr(self) -> str:
        text = (f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, '
                f'grid_sizes={self.grid_sizes}, '
                f'query_from={self.query_from!r}')
        if self.pool_ratios != self.grid_sizes:
            text += f', pool_ratios={self.pool_ratios}'
        for name, default in (('pool_mode', 'max+avg'),
                              ('level0_shortcut', 'normed'),
                              ('output_sum', 'attention')):
            if getattr(self, name) != default:
                text += f', {name}={getattr(self, name)!r}'
        return text

    # -- attention primitives ---------------------------------------------
    def _attend(self, q: Tensor, k: Tensor, v: Tensor,
                key_valid: Optional[Tensor]) -> Tensor:
        """SDPA over (N, heads, Lq, d) queries and (N, heads, Lk, d)
        keys/values; ``key_valid`` is (N, Lk) or None."""
        mask = None
        if key_valid is not None:
            # A grid made only of padding would give an all-masked row (NaN
            # in SDPA); such grids feed only padded queries, which are
            # cropped, so let them see their own padding instead.
            empty = ~key_valid.any(dim=-1, keepdim=True)
            mask = (key_valid | empty)[:, None, None, :]
        return scaled_dot_product_attention(
            q, k, v, attn_mask=mask,
            dropout_p=self.attn_drop if self.training else 0.)

    def _grid_attention(self, q: Tensor, kv: Tensor,
                        valid: Optional[Tensor], g: Optional[int],
                        q_scale: int = 1) -> Tensor:
        """Attention of each query with the keys of its grid.

        Args:
            q: (B, h*q_scale.., w*q_scale.., C) query map; a query at
                (y, x) belongs to the key grid holding (y//q_scale,
                x//q_scale).
            kv: (B, h, w, 2C) keys|values side by side.
            valid: (B, h, w) bool mask of real keys, or None.
            g: grid side on the key map; None for one grid over the whole
                map (plain attention).
            q_scale: how many query positions one key position spans.

        Returns:
            (B, Hq, Wq, C) attention output, same size as the queries.
        """
        b, h, w = kv.shape[:3]
        hq, wq = q.shape[1:3]
        heads = self.num_heads
        if g is not None and h <= g and w <= g:
            g = None
        if g is None:
            hp, wp = h, w
        else:
            ph, pw = (-h) % g, (-w) % g
            if ph or pw:
                valid = (kv.new_ones((b, h, w), dtype=torch.bool)
                         if valid is None else valid)
                valid = F.pad(valid, (0, pw, 0, ph), value=False)
                kv = _pad_bottom_right(kv, ph, pw)
            hp, wp = h + ph, w + pw
            q = _pad_bottom_right(q, hp * q_scale - hq, wp * q_scale - wq)
        k_w, v_w = _windows(kv, g, 2, heads).unbind(0)
        q_w = _windows(q, None if g is None else g * q_scale, 1, heads)[0]
        key_valid = None
        if valid is not None:
            key_valid = (valid.reshape(b, h * w) if g is None else
                         _partition(valid, g, g))
        out = self._attend(q_w, k_w, v_w, key_valid)
        if g is None:
            return _unwindows(out, b, hq, wq, None)
        out = _unwindows(out, b, hp * q_scale, wp * q_scale, g * q_scale)
        return out[:, :hq, :wq]

    # -- forward ----------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Args: x (Tensor): (B, C, H, W). Returns: (B, C, H, W)."""
        if x.dim() != 4 or x.shape[1] != self.embed_dims:
            raise ValueError(f'HMHSA expects a (B, {self.embed_dims}, H, W) '
                             f'tensor, got shape {tuple(x.shape)}')
        b, c, h, w = x.shape
        # (B, H, W, C): a free view when x is channels-last (as in TransCNN,
        # whose stem switches to that memory format), a copy otherwise.
        tokens = self.norm(x).permute(0, 2, 3, 1)

        # Level 0 (Eq. 5-7).
        grids = self.grid_sizes
        attn = self._level0(tokens, grids[0] if grids else None)
        total = attn
        if grids:
            # Eq. 7: A0 = X + attn_0. Ours adds the normalised map the
            # attention saw; the released code adds the raw block input.
            shortcut = (tokens if self.level0_shortcut == 'normed' else
                        x.permute(0, 2, 3, 1))
            # Released only: a norm on A0 (its grid_norm); None: identity.
            a0 = self._norm_tokens(self.grid_norm, shortcut + attn)
            # Eq. 12: ours sums attn_0 (one level is then plain MHSA); the
            # released code sums A0 itself, residual and norm included.
            if self.output_sum == 'level0_map':
                total = a0
            total = total + self._higher_levels(a0, h, w)

        # Back to (B, C, H, W); channels-last memory, no copy.
        out = self.drop_path(self.proj(total).permute(0, 3, 1, 2))
        return add_residual(x, out)

    def _level0(self, tokens: Tensor, g0: Optional[int]) -> Tensor:
        """attn_0 of Eq. 5-6: attention inside G0 x G0 grids.

        The tokens are cut into grids (padded at the bottom/right to a
        multiple of G0) *before* the q/k/v projection: the one copy then
        moves C channels instead of 3C, and the projection writes q, k and
        v straight in SDPA's grid layout. Padded keys are masked; padded
        queries are cropped.

        Args:
            tokens: (B, H, W, C) normalised input map.
            g0: grid side G0, or None for plain attention.

        Returns:
            (B, H, W, C) attention output.
        """
        b, h, w, _ = tokens.shape
        heads = self.num_heads
        if g0 is None or (h <= g0 and w <= g0):
            q, k, v = _windows(self.qkv(tokens), None, 3,
                               heads).unbind(0)
            return _unwindows(self._attend(q, k, v, None), b, h, w, None)
        ph, pw = (-h) % g0, (-w) % g0
        key_valid = None
        if ph or pw:
            tokens = _pad_bottom_right(tokens, ph, pw)
            key_valid = _partition(
                F.pad(tokens.new_ones((b, h, w), dtype=torch.bool),
                      (0, pw, 0, ph), value=False), g0, g0)
        qkv = self.qkv(_partition(tokens, g0, g0))  # (N, L, 3C)
        n, length = qkv.shape[:2]
        q, k, v = qkv.reshape(n, length, 3, heads, self.head_dim).permute(
            2, 0, 3, 1, 4).unbind(0)
        out = _unwindows(self._attend(q, k, v, key_valid), b, h + ph,
                         w + pw, g0)
        return out[:, :h, :w]

    def _higher_levels(self, a0: Tensor, h: int, w: int) -> Tensor:
        """Sum of attn_1 .. attn_M at full resolution (Eq. 8-12)."""
        grids = self.grid_sizes
        full_res_queries = self.query_from == 'full'
        query = self.q(a0) if full_res_queries else None
        prev, valid = a0, None
        region = 1  # input positions spanned by one merged token
        total = None
        level = 1
        while True:
            # Eq. 8 by the level's ratio (the previous grid unless set;
            # released: its own ratio, average pooling only).
            ratio = self.pool_ratios[level - 1]
            merged, valid = merge_tokens(prev, valid, ratio, self.pool_mode)
            region *= ratio
            mh, mw = merged.shape[1:3]
            last = level == len(grids) or (mh <= grids[level]
                                           and mw <= grids[level])
            g = None if last else grids[level]
            # Merged maps hold real tokens only (pooling with ceil_mode
            # averages the real positions of a region), so a norm sees no
            # padding. Released only: a norm on them (its ds_norm).
            keys = self._norm_tokens(self.ds_norm, merged)
            kv = self.kv(keys)  # keys|values, packed
            if full_res_queries:
                attn = self._grid_attention(query, kv, valid, g, region)
                prev = merged  # next level pools this level's tokens
            else:
                attn = self._grid_attention(self.q(keys), kv, valid, g)
                prev = merged + attn  # Eq. 11
                # Nearest upsampling: each merged token back over its
                # region, in one copy.
                bm, _, _, cm = attn.shape
                attn = attn[:, :, None, :, None, :].expand(
                    bm, mh, region, mw, region, cm).reshape(
                        bm, mh * region, mw * region, cm)[:, :h, :w]
            total = attn if total is None else total + attn
            if last:
                return total
            level += 1


__all__ = ['HMHSA', 'merge_tokens', 'parse_grid_sizes', 'QUERY_FORMS',
           'POOL_MODES', 'LEVEL0_SHORTCUTS', 'OUTPUT_SUMS']
