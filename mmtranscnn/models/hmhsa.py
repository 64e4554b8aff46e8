"""Hierarchical Multi-Head Self-Attention (H-MHSA), §3.2 of the paper.

``X`` is the (normalised) input map, H0 x W0 tokens of C channels.

* Level 0 (Eq. 5-7): attention inside G0 x G0 grids of ``X``, then the
  residual ``A0 = X + attn_0``.
* Level i > 0 (Eq. 8-11): every G(i-1) x G(i-1) region of the previous
  level's map becomes one token, ``MaxPool + AvgPool`` (Eq. 8); attention
  inside Gi x Gi grids of the merged map. The last level attends over all
  of its tokens.
* Output (Eq. 12): ``(attn_0 + ... + Upsample(attn_M)) Wp + X``; the
  residuals of Eq. 7 and 11 form only the maps that are merged. With no
  grid this is plain MHSA (Eq. 1-2).

The levels above 0 come in the two forms of the paper (``query_from``):

* ``'full'`` (default; the form of every experiment in §4.1): the queries
  are ``A0 Wq`` at full resolution; keys and values come from the merged
  tokens of the grid that holds the query. Each ``attn_i`` is then at full
  resolution already, and level i+1 merges level i's merged map.
* ``'merged'`` (Eq. 9-12 as written): queries, keys and values come from
  the merged map, ``A_i = A'_(i-1) + attn_i`` (Eq. 11) is what the next
  level merges, and ``attn_i`` is copied back over the region each merged
  token came from (nearest upsampling) before the sum.

Level 0 owns the ``qkv`` projection and every level above shares one ``q``
and one ``kv`` projection; pooling has no weights. Grid sizes are therefore
settings, not weights: a state dict loads into a module built with other
grid sizes or more levels.

Maps that are not multiples of a grid are padded at the bottom and right,
padded keys are masked out of the attention and padded queries are cropped,
so real outputs do not depend on the padding; pooling (``ceil_mode``) takes
an overhanging region's real positions only. While a model is traced or
exported the padding and masks are always built, from the map's size as
tensor arithmetic, so the graph holds at every input size.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmtranscnn.ops import attention
from mmtranscnn.registry import MODELS
from mmtranscnn.utils.tracing import is_traced

QUERY_FORMS = ('full', 'merged')


def parse_grid_sizes(value: Union[int, Sequence[int], None],
                     field: str = 'grid_sizes') -> Tuple[int, ...]:
    """Normalise one stage's grid setting to a tuple of per-level sizes
    (positive ints; empty means plain attention).

    Args:
        value: ``G0`` (one grid level, then plain attention over the merged
            tokens), ``(G0, G1, ...)``, or 0 / None / ``()`` (plain).
        field: the name used in error messages.
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


def merge_tokens(t: Tensor, g: int) -> Tensor:
    """Eq. 8: MaxPool_g + AvgPool_g (kernel and stride ``g``) of a (B, H, W,
    C) map -> (B, ceil(H/g), ceil(W/g), C); a region that overhangs the map
    pools its real positions only."""
    nchw = t.permute(0, 3, 1, 2)
    merged = F.max_pool2d(nchw, g, g, ceil_mode=True) + F.avg_pool2d(
        nchw, g, g, ceil_mode=True, count_include_pad=False)
    return merged.permute(0, 2, 3, 1)


def _cells(size, g: int):
    """How many grids of side ``g`` cover ``size`` positions."""
    return (size + g - 1) // g


def _pad(t: Tensor, height, width) -> Tensor:
    """Zero-pad a (B, H, W, C) map at the bottom/right to height x width."""
    if not is_traced() and tuple(t.shape[1:3]) == (height, width):
        return t
    return F.pad(t, (0, 0, 0, width - t.shape[2], 0, height - t.shape[1]))


def _to_grids(t: Tensor, g: int) -> Tensor:
    """(B, nh*g, nw*g, C) -> (B*nh*nw, g*g, C), grids in row-major order."""
    b, h, w, c = t.shape
    t = t.reshape(b, h // g, g, w // g, g, c).transpose(2, 3)
    return t.reshape(-1, g * g, c)


def _from_grids(t: Tensor, b: int, nh, nw, g: int) -> Tensor:
    """Inverse of :func:`_to_grids`."""
    c = t.shape[-1]
    t = t.reshape(b, nh, nw, g, g, c).transpose(2, 3)
    return t.reshape(b, nh * g, nw * g, c)


def grid_partition(t: Tensor, g: int) -> Tuple[Tensor, Optional[Tensor]]:
    """Eq. 5/9: cut a (B, H, W, C) map, zero-padded at the bottom/right,
    into g x g grids.

    Returns:
        ``(grids, real)``: the (B*nh*nw, g*g, C) grids, nh = ceil(H/g) and
        nw = ceil(W/g), and the (B*nh*nw, 1, 1, g*g) mask of real positions
        (broadcasting over heads and queries), or None where none is padded.
    """
    b, h, w = t.shape[:3]
    nh, nw = _cells(h, g), _cells(w, g)
    if not (is_traced() or h % g or w % g):
        return _to_grids(t, g), None
    # Built in grid order, (nh, nw, g, g), so that no reshape needs a copy
    # (an exported graph would otherwise guard on the map's size).
    rows = (torch.arange(nh * g, device=t.device) < h).reshape(nh, 1, g, 1)
    cols = (torch.arange(nw * g, device=t.device) < w).reshape(1, nw, 1, g)
    real = (rows & cols).reshape(1, nh * nw, g * g)
    real = real.expand(b, -1, -1).reshape(-1, 1, 1, g * g)
    return _to_grids(_pad(t, nh * g, nw * g), g), real


@MODELS.register_module()
class HMHSA(BaseModule):
    """Hierarchical multi-head self-attention on (B, C, H, W) maps.

    Args:
        embed_dims (int): channels C of the input and output.
        grid_sizes (int | Sequence[int]): per-level grid sizes
            ``(G0, G1, ...)``; an int means ``(G0,)``. The level after the
            last listed grid attends over all of its tokens, so there are
            ``len(grid_sizes)`` levels above 0. 0 or ``()`` means plain
            MHSA. Default: 8.
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
        self.embed_dims = embed_dims
        self.num_heads = embed_dims // head_dim
        self.head_dim = head_dim
        self.grid_sizes = parse_grid_sizes(grid_sizes)
        self.query_from = query_from
        self.attn_drop = attn_drop

        self.norm = (build_norm_layer(norm_cfg, embed_dims)[1]
                     if norm_cfg is not None else nn.Identity())
        self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=qkv_bias)
        if self.hierarchical:  # one q/kv pair for every level above 0
            self.q = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
            self.kv = nn.Linear(embed_dims, 2 * embed_dims, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.drop_path = (DropPath(drop_path_rate)
                          if drop_path_rate > 0 else nn.Identity())

    @property
    def hierarchical(self) -> bool:
        """Whether the module has levels above 0 (and their weights)."""
        return len(self.grid_sizes) > 0

    def extra_repr(self) -> str:
        return (f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, '
                f'grid_sizes={self.grid_sizes}, '
                f'query_from={self.query_from!r}')

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (Tensor): (B, C, H, W). Returns: (B, C, H, W)."""
        if x.dim() != 4 or x.shape[1] != self.embed_dims:
            raise ValueError(f'HMHSA expects a (B, {self.embed_dims}, H, W) '
                             f'tensor, got shape {tuple(x.shape)}')
        tokens = self.norm(x).permute(0, 2, 3, 1)  # X, (B, H, W, C)
        attn0 = self.level0(tokens)
        total = attn0
        if self.hierarchical:
            a0 = self.level0_map(x, tokens, attn0)  # Eq. 7
            total = self.level0_term(attn0, a0) + self.higher_levels(a0)
        out = self.proj(total).permute(0, 3, 1, 2)  # Eq. 12
        return x + self.drop_path(out)

    def level0(self, tokens: Tensor) -> Tensor:
        """attn_0 of Eq. 5-6: attention inside G0 x G0 grids (over the
        whole map without grids) of the (B, H, W, C) normalised input X.
        Grids are cut before the q/k/v projection: the copy moves C
        channels, not 3C."""
        b, h, w, c = tokens.shape
        if not self.hierarchical:
            q, k, v = self.split_heads(self.qkv(tokens.reshape(b, h * w, c)), 3)
            return self._sdpa(q, k, v, None).reshape(b, h, w, c)
        g = self.grid_sizes[0]
        grids, real = grid_partition(tokens, g)
        q, k, v = self.split_heads(self.qkv(grids), 3)
        out = self._sdpa(q, k, v, real)
        return _from_grids(out, b, _cells(h, g), _cells(w, g), g)[:, :h, :w]

    def higher_levels(self, a0: Tensor) -> Tensor:
        """attn_1 + ... + Upsample(attn_M) at full resolution (Eq. 8-12)
        from the (B, H, W, C) ``A0`` of Eq. 7."""
        h, w = a0.shape[1:3]
        grids = self.grid_sizes
        queries = self.q(a0) if self.query_from == 'full' else None
        prev, region, total = a0, 1, None
        for level in range(1, len(grids) + 1):
            ratio = self.merge_ratio(level)
            merged = self.merge(prev, ratio)  # Eq. 8
            region *= ratio
            g = grids[level] if level < len(grids) else None
            keys = self.key_tokens(merged)
            kv = self.kv(keys)
            if queries is not None:
                attn = self.attend(queries, kv, g, region)
                prev = merged
            else:  # Eq. 9-11 on the merged map, then upsampled
                attn = self.attend(self.q(keys), kv, g)
                prev = merged + attn
                attn = attn.repeat_interleave(region, dim=1)[:, :h]
                attn = attn.repeat_interleave(region, dim=2)[:, :, :w]
            total = attn if total is None else total + attn
        return total

    # -- the steps a variant may change ------------------------------------
    def level0_map(self, x: Tensor, tokens: Tensor, attn0: Tensor) -> Tensor:
        """Eq. 7: ``A0 = X + attn_0``, X (``tokens``) the map the attention
        saw; ``x`` is the (B, C, H, W) block input before the pre-norm."""
        return tokens + attn0

    def level0_term(self, attn0: Tensor, a0: Tensor) -> Tensor:
        """What Eq. 12 sums for level 0: ``attn_0``."""
        return attn0

    def merge_ratio(self, level: int) -> int:
        """How many positions per side level ``level`` merges: G(level-1)."""
        return self.grid_sizes[level - 1]

    def merge(self, t: Tensor, ratio: int) -> Tensor:
        """Eq. 8: one token per ``ratio`` x ``ratio`` region of ``t``."""
        return merge_tokens(t, ratio)

    def key_tokens(self, merged: Tensor) -> Tensor:
        """The merged tokens the keys and values are projected from."""
        return merged

    # -- attention --------------------------------------------------------
    def attend(self, q: Tensor, kv: Tensor, g: Optional[int],
               q_scale: int = 1) -> Tensor:
        """Attention of each query with the keys of its grid (Eq. 9-10);
        returns the (B, Hq, Wq, C) output.

        Args:
            q: (B, Hq, Wq, C) queries; query (y, x) belongs to the grid
                that holds key (y // q_scale, x // q_scale).
            kv: (B, h, w, 2C) keys and values side by side.
            g: grid side on the key map, or None for one grid over all.
            q_scale: query positions per key position along each side.
        """
        b, h, w = kv.shape[:3]
        hq, wq, c = q.shape[1:]
        if g is None:
            q, k, v = self.split_heads(kv.reshape(b, h * w, 2 * c), 2,
                                  q.reshape(b, hq * wq, c))
            return self._sdpa(q, k, v, None).reshape(b, hq, wq, c)
        kv_grids, real = grid_partition(kv, g)
        nh, nw, sq = _cells(h, g), _cells(w, g), g * q_scale
        q_grids = _to_grids(_pad(q, nh * sq, nw * sq), sq)
        q, k, v = self.split_heads(kv_grids, 2, q_grids)
        out = _from_grids(self._sdpa(q, k, v, real), b, nh, nw, sq)
        return out[:, :hq, :wq]

    def split_heads(self, packed: Tensor, parts: int,
                    q: Optional[Tensor] = None
                    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Split projections into heads (also for tools that look inside).

        Args:
            packed: (N, L, parts*C) projections side by side, q|k|v for
                ``parts=3``, k|v for 2 (the queries then in ``q``).
            parts: 3 or 2.
            q: (N, Lq, C) queries when ``parts=2``.

        Returns:
            q, k, v, each (N, heads, L, head_dim).
        """
        n, length = packed.shape[:2]
        # unbind, not indexing: in backward the parts' gradients are
        # stacked into the projection's layout at once, where indexing
        # fills a zero tensor of all parts for each part and adds them.
        split = [t.transpose(1, 2) for t in packed.reshape(
            n, length, parts, self.num_heads, self.head_dim).unbind(2)]
        if parts == 3:
            return split[0], split[1], split[2]
        q = q.reshape(n, q.shape[1], self.num_heads, self.head_dim)
        return q.transpose(1, 2), split[0], split[1]

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor,
              mask: Optional[Tensor]) -> Tensor:
        """Eq. 1 per head (SDPA; on the CPU, plain matmuls for small grids:
        :func:`mmtranscnn.ops.attention`); returns (N, L, C), the heads
        concatenated."""
        out = attention(q, k, v, attn_mask=mask,
                        dropout_p=self.attn_drop if self.training else 0.)
        return out.transpose(1, 2).flatten(2)


__all__ = ['HMHSA', 'grid_partition', 'merge_tokens', 'parse_grid_sizes',
           'QUERY_FORMS']
