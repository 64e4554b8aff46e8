"""A slow, plain reference of the authors' released networks, for tests.

Written from the equations of the released definitions (``TransCNN.py``,
the first version, and ``HAT_Net.py``, the journal version; see
docs/released_weights.md), not from our modules: it reads a state dict with
the *released* key names and computes everything with explicit masks, so it
shares no code path with ``mmtranscnn`` (no grid partitioning, no padding,
no SDPA, no ConvModule).

Attention is computed over the whole token map with a mask saying which keys
each query may see:

* level 0: the keys of the query's window, i.e. the positions ``p`` with
  ``(p_y // G, p_x // G)`` equal to the query's. Where the window does not
  divide the map, the last windows are simply smaller (the definition our
  padding + masking must reproduce);
* level 1: every pooled token. A pooled token averages the positions of its
  ``R x R`` region (the last regions may be smaller; only real positions
  count).

Normalisation never sees anything but real positions: BatchNorm (first
version) in inference form with running statistics, GroupNorm(1, C) with
eps 1e-6 (HAT-Net) over all real positions of a sample.

Per block (``X`` its input, ``Norm`` the version's norm layer)::

    T   = Norm_attn(X);  q, k, v = 1x1 projections of T
    Y0  = attention of q with the k, v of its window             (level 0)
    A0  = Norm_grid(X + Y0)                                      (raw X!)
    P   = Norm_ds(AvgPool_R(A0)); k1, v1 = projection of P
    Y1  = attention of Wq A0 with all of k1, v1                  (level 1)
    X   = X + Wp (Y1 + A0)          (a stage without windows: X + Wp Y0)
    X   = X + IRB(X)

with IRB ``conv1x1-BN-SiLU, dw-BN-SiLU, conv1x1-BN`` in the first version and
``GN-conv1x1-SiLU, dw-SiLU, conv1x1-GN`` in HAT-Net. Downsampling:
``SiLU(BN(conv3x3/2 X) + BN(conv1x1 MaxPool2 X))`` (first version),
``GN(conv3x3/2 X)`` (HAT-Net). Stem: ``conv3x3/2, Norm, SiLU, conv3x3/2``.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

GN_EPS = 1e-6
BN_EPS = 1e-5


class Reference:
    """The released forward on a state dict with the released key names.

    Args:
        state_dict: tensors under the released names (float64 advised).
        version: 'transcnn-v1' or 'hatnet'.
        head_dim: channels per attention head.
        windows: level-0 window G per stage (0 or 1: plain attention).
        pool_ratios: level-1 pooling ratio R per stage.
        measure_bn: if True, BatchNorms normalise with the statistics of
            the batch and store them as running statistics in
            ``state_dict`` (as one train-mode pass with momentum None
            would); run once to measure, then with False to evaluate.
    """

    def __init__(self, state_dict: Dict[str, Tensor], version: str,
                 head_dim: int, windows: Sequence[int],
                 pool_ratios: Sequence[int], measure_bn: bool = False):
        assert version in ('transcnn-v1', 'hatnet'), version
        self.sd = state_dict
        self.version = version
        self.head_dim = head_dim
        self.windows = list(windows)
        self.pool_ratios = list(pool_ratios)
        self.measure_bn = measure_bn

    # -- primitives ---------------------------------------------------------
    def norm(self, x: Tensor, name: str) -> Tensor:
        """The version's norm layer ``name`` applied to (B, C, H, W)."""
        w, b = self.sd[name + '.weight'], self.sd[name + '.bias']
        if self.version == 'hatnet':
            # GroupNorm with one group: statistics over (C, H, W) per sample.
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            var = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
            y = (x - mean) / torch.sqrt(var + GN_EPS)
        else:
            if self.measure_bn:
                mean = x.mean(dim=(0, 2, 3))
                var = x.var(dim=(0, 2, 3), unbiased=False)
                n = x.numel() / x.shape[1]
                self.sd[name + '.running_mean'] = mean.detach().clone()
                self.sd[name + '.running_var'] = (var * n / (n - 1)).detach()
            else:
                mean = self.sd[name + '.running_mean']
                var = self.sd[name + '.running_var']
            y = (x - mean[None, :, None, None]) / torch.sqrt(
                var[None, :, None, None] + BN_EPS)
        return y * w[None, :, None, None] + b[None, :, None, None]

    def conv(self, x: Tensor, name: str, stride: int = 1,
             groups: int = 1) -> Tensor:
        w = self.sd[name + '.weight']
        return F.conv2d(x, w, self.sd.get(name + '.bias'), stride=stride,
                        padding=w.shape[-1] // 2, groups=groups)

    def attention(self, q: Tensor, k: Tensor, v: Tensor,
                  allowed: Optional[Tensor]) -> Tensor:
        """softmax(q k^T / sqrt(d)) v per head on (B, C, Nq) / (B, C, Nk)
        maps; ``allowed`` (Nq, Nk) bool, or None for all keys."""
        b, c, nq = q.shape
        heads = c // self.head_dim
        q = q.reshape(b, heads, self.head_dim, nq).transpose(2, 3)
        k = k.reshape(b, heads, self.head_dim, -1).transpose(2, 3)
        v = v.reshape(b, heads, self.head_dim, -1).transpose(2, 3)
        scores = q @ k.transpose(2, 3) / self.head_dim ** 0.5
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float('-inf'))
        out = scores.softmax(dim=-1) @ v  # (B, heads, Nq, d)
        return out.transpose(2, 3).reshape(b, c, nq)

    @staticmethod
    def cell_ids(h: int, w: int, size: int) -> Tensor:
        """Index of the size x size cell holding each of the h*w positions
        (row-major positions; cells counted with ceil division)."""
        ys = torch.arange(h).repeat_interleave(w) // size
        xs = torch.arange(w).repeat(h) // size
        return ys * (-(-w // size)) + xs

    def avg_pool(self, x: Tensor, r: int) -> Tensor:
        """Mean of each r x r region's real positions (ceil-sized map)."""
        b, c, h, w = x.shape
        ids = self.cell_ids(h, w, r)
        hr, wr = -(-h // r), -(-w // r)
        sums = x.new_zeros(b, c, hr * wr).index_add_(2, ids, x.flatten(2))
        count = torch.bincount(ids, minlength=hr * wr).to(x.dtype)
        return (sums / count).reshape(b, c, hr, wr)

    @staticmethod
    def max_pool2(x: Tensor) -> Tensor:
        """2x2 max over real positions (an odd last row/column alone)."""
        h, w = x.shape[2:]
        x = F.pad(x, (0, w % 2, 0, h % 2), value=float('-inf'))
        return F.max_pool2d(x, 2, 2)

    # -- blocks -------------------------------------------------------------
    def hmhsa(self, x: Tensor, p: str, window: int, ratio: int) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.conv(self.norm(x, p + 'norm'), p + 'qkv').flatten(2)
        q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
        if window <= 1:
            y = self.attention(q, k, v, None).reshape(b, c, h, w)
            return self.conv(y, p + 'proj')
        ids = self.cell_ids(h, w, window)
        y0 = self.attention(q, k, v, ids[:, None] == ids[None, :])
        a0 = self.norm(x + y0.reshape(b, c, h, w), p + 'grid_norm')
        q1 = self.conv(a0, p + 'q').flatten(2)
        pooled = self.norm(self.avg_pool(a0, ratio), p + 'ds_norm')
        kv = self.conv(pooled, p + 'kv').flatten(2)
        y1 = self.attention(q1, kv[:, :c], kv[:, c:], None)
        return self.conv(y1.reshape(b, c, h, w) + a0, p + 'proj')

    def irb(self, x: Tensor, p: str) -> Tensor:
        hidden = self.sd[p + 'conv2.0.weight'].shape[0]
        if self.version == 'transcnn-v1':
            y = F.silu(self.norm(self.conv(x, p + 'conv1.0'), p + 'conv1.1'))
            y = F.silu(self.norm(self.conv(y, p + 'conv2.0', groups=hidden),
                                 p + 'conv2.1'))
            return self.norm(self.conv(y, p + 'conv3.0'), p + 'conv3.1')
        y = F.silu(self.conv(self.norm(x, p + 'conv1.0'), p + 'conv1.1'))
        y = F.silu(self.conv(y, p + 'conv2.0', groups=hidden))
        return self.norm(self.conv(y, p + 'conv3.0'), p + 'conv3.1')

    def downsample(self, x: Tensor, p: str) -> Tensor:
        if self.version == 'transcnn-v1':
            main = self.norm(self.conv(x, p + 'conv', stride=2), p + 'norm1')
            side = self.norm(self.conv(self.max_pool2(x), p + 'residual'),
                             p + 'norm2')
            return F.silu(main + side)
        return self.norm(self.conv(x, p + 'conv', stride=2), p + 'norm')

    def stem(self, x: Tensor) -> Tensor:
        x = F.silu(self.norm(self.conv(x, 'patch_embed.0', stride=2),
                             'patch_embed.1'))
        return self.conv(x, 'patch_embed.3', stride=2)

    def depths(self) -> List[int]:
        out = []
        for s in range(4):
            n = 0
            while f'blocks.{s}.{n}.attn.qkv.weight' in self.sd:
                n += 1
            out.append(n)
        return out

    def __call__(self, x: Tensor) -> Tuple[List[Tensor], Tensor]:
        """Returns the four stage outputs and the logits."""
        x = self.stem(x)
        outs = []
        for s, depth in enumerate(self.depths()):
            if s > 0:
                x = self.downsample(x, f'ds{s + 1}.')
            for i in range(depth):
                p = f'blocks.{s}.{i}.'
                x = x + self.hmhsa(x, p + 'attn.', self.windows[s],
                                   self.pool_ratios[s])
                x = x + self.irb(x, p + 'conv.')
            outs.append(x)
        logits = F.linear(x.mean(dim=(2, 3)), self.sd['classifier.1.weight'],
                          self.sd['classifier.1.bias'])
        return outs, logits


def released_layout(version: str, channels: Sequence[int],
                    depths: Sequence[int], kernel_sizes: Sequence[int],
                    expand_ratios: Sequence[int], windows: Sequence[int],
                    num_classes: int = 1000) -> Dict[str, Tuple[int, ...]]:
    """Key names and shapes of a released network's state dict.

    Written from the released structure, for networks of any size (tests
    build small ones); for the eight published networks it must equal the
    fixture tests/data/released_layouts.json, which was read off the
    released models themselves.
    """
    layout: Dict[str, Tuple[int, ...]] = {}

    def norm(name, c):
        layout[name + '.weight'] = (c, )
        layout[name + '.bias'] = (c, )
        if version == 'transcnn-v1':
            layout[name + '.running_mean'] = (c, )
            layout[name + '.running_var'] = (c, )
            layout[name + '.num_batches_tracked'] = ()

    def conv(name, cout, cin, k, bias=True):
        layout[name + '.weight'] = (cout, cin, k, k)
        if bias:
            layout[name + '.bias'] = (cout, )

    conv('patch_embed.0', 16, 3, 3)
    norm('patch_embed.1', 16)
    conv('patch_embed.3', channels[0], 16, 3)
    for s, (c, depth) in enumerate(zip(channels, depths)):
        e = c * expand_ratios[s]
        for i in range(depth):
            a = f'blocks.{s}.{i}.attn.'
            norm(a + 'norm', c)
            conv(a + 'qkv', 3 * c, c, 1)
            conv(a + 'proj', c, c, 1)
            if version == 'hatnet':
                norm(a + 'proj_norm', c)
            if windows[s] > 1:
                norm(a + 'grid_norm', c)
                norm(a + 'ds_norm', c)
                conv(a + 'q', c, c, 1)
                conv(a + 'kv', 2 * c, c, 1)
            m = f'blocks.{s}.{i}.conv.'
            if version == 'transcnn-v1':
                conv(m + 'conv1.0', e, c, 1, bias=False)
                norm(m + 'conv1.1', e)
                conv(m + 'conv2.0', e, 1, kernel_sizes[s], bias=False)
                norm(m + 'conv2.1', e)
            else:
                norm(m + 'conv1.0', c)
                conv(m + 'conv1.1', e, c, 1, bias=False)
                conv(m + 'conv2.0', e, 1, kernel_sizes[s], bias=False)
            conv(m + 'conv3.0', c, e, 1, bias=False)
            norm(m + 'conv3.1', c)
    for k in (2, 3, 4):
        cin, cout = channels[k - 2], channels[k - 1]
        conv(f'ds{k}.conv', cout, cin, 3)
        if version == 'transcnn-v1':
            conv(f'ds{k}.residual', cout, cin, 1)
            norm(f'ds{k}.norm1', cout)
            norm(f'ds{k}.norm2', cout)
        else:
            norm(f'ds{k}.norm', cout)
    layout['classifier.1.weight'] = (num_classes, channels[-1])
    layout['classifier.1.bias'] = (num_classes, )
    return layout


def random_state_dict(layout: Dict[str, Sequence[int]], seed: int = 0,
                      dtype: torch.dtype = torch.float32) -> Dict[str, Tensor]:
    """Random tensors for a released layout: weights scaled by their fan-in,
    norm scales near 1 (0.2 at the end of each residual branch), small
    biases, positive running variances."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in layout.items():
        shape = tuple(shape)
        if name.endswith('num_batches_tracked'):
            out[name] = torch.tensor(0)
            continue
        x = torch.randn(shape, generator=gen, dtype=dtype)
        if name.endswith('running_var'):
            x = 0.5 + torch.rand(shape, generator=gen, dtype=dtype)
        elif name.endswith('running_mean') or name.endswith('bias'):
            x = 0.1 * x
        elif len(shape) == 1:  # a norm's scale
            x = 1 + 0.1 * x
        else:
            fan_in = 1
            for n in shape[1:]:
                fan_in *= n
            x = x / fan_in ** 0.5
        if name.endswith(('attn.proj.weight', 'conv.conv3.1.weight')):
            # Residual branches end small, as in trained networks: a random
            # deep network is otherwise chaotic, and float64 rounding alone
            # makes two implementations disagree.
            x = 0.2 * x
        out[name] = x
    return out


def compact_state_dict(layout: Dict[str, Sequence[int]],
                       seed: int = 0) -> Dict[str, Tensor]:
    """Random tensors for a released layout that are small on disk.

    Every tensor is a window of one shared random buffer at its own offset,
    so no two tensors are equal (a swapped key shows) while ``torch.save``
    writes the buffer once: the file is about as large as the largest
    tensor (6 MB for TransCNN-Small, not 106 MB). For tests of loading and
    key mapping only; the values are no well-conditioned network.
    """
    numels = [math.prod(shape) for shape in layout.values()]
    gen = torch.Generator().manual_seed(seed)
    buffer = torch.randn(max(numels) + len(layout), generator=gen)
    out = {}
    for offset, (name, shape) in enumerate(layout.items()):
        if name.endswith('num_batches_tracked'):
            out[name] = torch.tensor(offset)
        else:
            numel = math.prod(shape)
            out[name] = buffer[offset:offset + numel].view(tuple(shape))
    return out
